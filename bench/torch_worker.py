#!/usr/bin/python3
"""The PyTorch eager peer of bench/compare.py: one process per workload, commands on stdin.

  torch_worker.py WORKLOAD FOLDER THREADS

THREADS is fixed for the process's life (torch.set_num_threads once, at start): PyTorch 1.13
switched between 1 and 2 threads within one process degrades by two orders of magnitude
(0.8 -> 170 ms per batch-1 forward on ml1m, libgomp's pool being resized), which no user
with a fixed setting would see. bench/compare.py runs one worker per thread count.

Loads the source model (the module bench/workloads.py builds, with the saved weights), in
eval() under torch.no_grad(), and the request sets' input tensors. Commands (one JSON line
answers each), the same as seqrec_timing's:
  run SET B T [S [M]]  T must be THREADS; an untimed warm-up over min(N, 2·B·T) requests,
                then every request in batches of B (no batch started after S seconds when S > 0;
                the whole set again until M seconds have passed when M > 0):
                {"seconds", "n" (requests answered), "batch_ms"}. Only the forward
                pass (sequence batch -> logits over the catalog) is timed; the batches' input
                tensors are made before the clock starts.
  top SET B     {"top": [[row, ...]], "scores": [[score, ...]]}: each request's 20 best rows
                (row 0, the padding row, excluded) and their logits.
  quit
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

TOP = 20


def batches(inputs, n, b):
    names = list(inputs)
    return [tuple(torch.from_numpy(inputs[k][i:min(n, i + b)]) for k in names) for i in range(0, n, b)]


def main():
    w = workloads.WORKLOADS[sys.argv[1]]
    folder = sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(threads)
    model = workloads.scoring_module_from_folder(w, folder)
    sets = {name: workloads.load_set_inputs(os.path.join(folder, "sets"), name)[0]
            for name in workloads.set_names(folder)}
    print(json.dumps({"ready": True, "torch": torch.__version__}), flush=True)

    with torch.no_grad():
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            cmd, name, b = words[0], words[1], int(words[2])
            inputs = sets[name]
            n = len(next(iter(inputs.values())))
            if cmd == "top":
                rows, scores = [], []
                for batch in batches(inputs, n, b):
                    logits = model(*batch)
                    logits[:, 0] = -float("inf")
                    values, indices = torch.topk(logits, TOP, dim=1)
                    rows += indices.tolist()
                    scores += values.tolist()
                print(json.dumps({"top": rows, "scores": scores}), flush=True)
                continue
            t = int(words[3])
            budget = float(words[4]) if len(words) > 4 else 0.0
            min_seconds = float(words[5]) if len(words) > 5 else 0.0
            if t != threads:
                print(json.dumps({"error": f"this worker runs {threads} thread(s), asked for {t}"}), flush=True)
                continue
            for batch in batches(inputs, min(n, 2 * b * t), b):  # warm-up
                model(*batch)
            todo = batches(inputs, n, b)
            batch_ms = []
            start = time.perf_counter()
            n = 0
            def out_of_budget():
                return budget > 0 and time.perf_counter() - start > budget
            # Whole sets, repeated until min_seconds have passed (see compare.py --min-pass).
            while True:
                for batch in todo:
                    if out_of_budget():
                        break
                    n += len(batch[0])
                    t0 = time.perf_counter()
                    model(*batch)
                    batch_ms.append((time.perf_counter() - t0) * 1e3)
                if time.perf_counter() - start >= min_seconds or out_of_budget():
                    break
            seconds = time.perf_counter() - start
            print(json.dumps({"seconds": seconds, "n": n, "batch_ms": batch_ms}), flush=True)


if __name__ == "__main__":
    main()
