#!/usr/bin/env node
// The ONNX Runtime peer of bench/compare.py (onnxruntime-node, CPU execution provider):
// one process per workload, commands on stdin, one JSON line answers each.
//
//   node bench/ort_worker.js FOLDER
//
// Loads FOLDER/model.onnx (torch.onnx.export of the source model's scoring forward) and the
// request sets' input tensors (FOLDER/sets/NAME.json + .bin). One InferenceSession per thread
// count: intraOpNumThreads = T, interOpNumThreads = 1, graphOptimizationLevel 'all',
// sequential execution. Commands:
//   run SET B T [S [M]]  an untimed warm-up over min(N, 2·B·T) requests, then every request in
//                 batches of B (no batch started after S seconds when S > 0; the whole set
//                 again until M seconds have passed when M > 0), each one
//                 `await session.run(feeds)`, the feeds made before the clock starts:
//                 {"seconds", "n" (requests answered), "batch_ms"}.
//   top SET B     {"top": [[row, ...]], "scores": [[score, ...]]}: each request's 20 best rows
//                 (row 0, the padding row, excluded) and their logits.
//   quit
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const ort = require('onnxruntime-node');

const TOP = 20;
const folder = process.argv[2];
const sessions = new Map();

async function session(threads) {
  if (!sessions.has(threads)) {
    sessions.set(threads, await ort.InferenceSession.create(path.join(folder, 'model.onnx'), {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      executionProviders: ['cpu'],
    }));
  }
  return sessions.get(threads);
}

function loadSet(name) {
  const meta = JSON.parse(fs.readFileSync(path.join(folder, 'sets', name + '.json'), 'utf8'));
  const inputs = meta.inputs.map((input) => {
    const bytes = fs.readFileSync(path.join(folder, 'sets', input.file));
    const data = new BigInt64Array(bytes.length / 8);
    new Uint8Array(data.buffer).set(bytes);
    return { name: input.name, shape: input.shape, data };
  });
  return { n: meta.n, inputs };
}

// Feeds for requests [0, n) in batches of b.
function feeds(set, n, b) {
  const out = [];
  for (let i = 0; i < n; i += b) {
    const end = Math.min(n, i + b);
    const feed = {};
    for (const input of set.inputs) {
      const row = input.shape.slice(1).reduce((x, y) => x * y, 1);
      feed[input.name] = new ort.Tensor('int64', input.data.slice(i * row, end * row), [end - i, ...input.shape.slice(1)]);
    }
    out.push(feed);
  }
  return out;
}

// The TOP best rows of one request's logits (row 0 excluded), best first, ties by row.
function best(logits, offset, items) {
  const rows = [];
  const scores = [];
  for (let r = 1; r < items; ++r) {
    const s = logits[offset + r];
    if (rows.length === TOP && !(s > scores[TOP - 1])) continue;
    let at = rows.length === TOP ? TOP - 1 : rows.length;
    while (at > 0 && s > scores[at - 1]) {
      if (at < TOP) { rows[at] = rows[at - 1]; scores[at] = scores[at - 1]; }
      --at;
    }
    rows[at] = r;
    scores[at] = s;
    if (rows.length > TOP) { rows.length = TOP; scores.length = TOP; }
  }
  return [rows, scores];
}

async function main() {
  const sets = new Map();
  for (const f of fs.readdirSync(path.join(folder, 'sets'))) {
    if (f.endsWith('.json')) sets.set(f.slice(0, -5), loadSet(f.slice(0, -5)));
  }
  await session(1);
  console.log(JSON.stringify({ ready: true, onnxruntime: require('onnxruntime-node/package.json').version }));

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    const words = line.trim().split(/\s+/);
    if (!words[0] || words[0] === 'quit') break;
    const [cmd, name] = words;
    const b = parseInt(words[2], 10);
    const set = sets.get(name);
    if (cmd === 'top') {
      const s = await session(1);
      const top = [];
      const scores = [];
      for (const feed of feeds(set, set.n, b)) {
        const out = (await s.run(feed)).logits;
        const [rows, items] = out.dims;
        for (let i = 0; i < rows; ++i) {
          const [r, sc] = best(out.data, i * items, items);
          top.push(r);
          scores.push(sc);
        }
      }
      console.log(JSON.stringify({ top, scores }));
      continue;
    }
    const t = parseInt(words[3], 10);
    const budget = words.length > 4 ? parseFloat(words[4]) : 0;
    const minSeconds = words.length > 5 ? parseFloat(words[5]) : 0;
    const s = await session(t);
    for (const feed of feeds(set, Math.min(set.n, 2 * b * t), b)) await s.run(feed);  // warm-up
    const todo = feeds(set, set.n, b);
    const batchMs = [];
    const start = process.hrtime.bigint();
    let n = 0;
    const elapsed = () => Number(process.hrtime.bigint() - start) / 1e9;
    // Whole sets, repeated until minSeconds have passed (see compare.py --min-pass).
    do {
      for (const feed of todo) {
        if (budget > 0 && elapsed() > budget) break;
        n += feed[set.inputs[0].name].dims[0];
        const t0 = process.hrtime.bigint();
        await s.run(feed);
        batchMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    } while (elapsed() < minSeconds && !(budget > 0 && elapsed() > budget));
    const seconds = elapsed();
    console.log(JSON.stringify({ seconds, n, batch_ms: batchMs }));
  }
}

main().catch((e) => {
  console.error('ort_worker: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
