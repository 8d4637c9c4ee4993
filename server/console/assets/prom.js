// Prometheus text format (0.0.4) → the few figures the console charts. Rates and quantiles come
// from the difference of two scrapes, as PromQL's rate() and histogram_quantile() would give.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parse(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = SAMPLE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      for (const l of m[2].matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: m[1], labels, value: number(m[3]) });
  }
  return samples;
}

function number(text) {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

// One scrape: per-route request counts and latency buckets, batch histogram sums, gauges.
export function snapshot(samples, t) {
  const s = { t, requests: new Map(), latency: new Map(), batchSum: 0, batchCount: 0, queue: null, conns: null, build: null };
  for (const x of samples) {
    switch (x.name) {
      case 'seqrec_http_requests_total': {
        const e = s.requests.get(x.labels.route) || { total: 0, errors: 0 };
        e.total += x.value;
        if (Number(x.labels.status) >= 400) e.errors += x.value;
        s.requests.set(x.labels.route, e);
        break;
      }
      case 'seqrec_http_request_duration_seconds_bucket': {
        let h = s.latency.get(x.labels.route);
        if (!h) s.latency.set(x.labels.route, (h = new Map()));
        h.set(number(x.labels.le), x.value);
        break;
      }
      case 'seqrec_batch_size_sum': s.batchSum = x.value; break;
      case 'seqrec_batch_size_count': s.batchCount = x.value; break;
      case 'seqrec_queue_depth': s.queue = x.value; break;
      case 'seqrec_open_connections': s.conns = x.value; break;
      case 'seqrec_build_info': s.build = x.labels; break;
      default: break;
    }
  }
  return s;
}

// A counter's increase; a counter that went down was reset (a restart): its new value counts.
function increase(now, before) {
  return now >= before ? now - before : now;
}

// Requests per second per route between two scrapes.
export function routeRates(prev, cur) {
  const dt = cur.t - prev.t;
  const out = new Map();
  for (const [route, e] of cur.requests) {
    const p = prev.requests.get(route) || { total: 0, errors: 0 };
    out.set(route, { total: e.total, errors: e.errors, rate: dt > 0 ? increase(e.total, p.total) / dt : 0 });
  }
  return out;
}

// The bucket increases of the routes `keep` accepts, summed: [[le, cumulative count], ...] by le.
export function latencyDelta(prev, cur, keep) {
  const sum = new Map();
  for (const [route, h] of cur.latency) {
    if (!keep(route)) continue;
    const before = prev.latency.get(route);
    for (const [le, count] of h) sum.set(le, (sum.get(le) || 0) + increase(count, before ? before.get(le) || 0 : 0));
  }
  return [...sum.entries()].sort((a, b) => a[0] - b[0]);
}

// histogram_quantile: linear inside the bucket that holds the rank; null without observations.
export function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < buckets.length; ++i) {
    const [le, cum] = buckets[i];
    if (cum < rank) continue;
    if (le === Infinity) return i > 0 ? buckets[i - 1][0] : null;
    const lower = i > 0 ? buckets[i - 1][0] : 0;
    const below = i > 0 ? buckets[i - 1][1] : 0;
    return cum > below ? lower + ((le - lower) * (rank - below)) / (cum - below) : le;
  }
  return null;
}

// Mean requests per forward pass between two scrapes (null: no batch ran).
export function meanBatch(prev, cur) {
  const n = increase(cur.batchCount, prev.batchCount);
  return n > 0 ? increase(cur.batchSum, prev.batchSum) / n : null;
}
