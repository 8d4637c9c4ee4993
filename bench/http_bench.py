#!/usr/bin/python3
"""seqrec serve under wrk, against the engine alone (docs/performance.md; README "Performance").

  /usr/bin/python3 bench/http_bench.py [--duration S] [--threads T] [--max-batch B]
                                       [--connections C] [--build DIR] [--workdir DIR] [--quick]
                                       [--workload ml1m|recbole|bert4rec|catalog1m]

1. Prepares the `ml1m` workload (or --workload's) as bench/compare.py does (same model,
   same fixed request set; reused when already made) and turns the request set into
   POST /recommend bodies (user_interactions with timestamps, k = 10, recommend_seen = true).
2. Starts `seqrec serve --model M --history memory --port 0 --threads T --max-batch B` on
   127.0.0.1 and waits for /readyz; checks one request answers 200 with 10 items.
3. Runs wrk on loopback: keep-alive, C connections (default 64), one wrk thread (the server
   needs the cores), bench/http_post.lua posting the bodies in rotation; a warm-up run, then
   --runs timed runs of --duration seconds.
4. Times the engine alone on the same model, request set and thread count
   (bench/seqrec_timing: T threads, batch B, passes of >= 4,096 requests), interleaved with
   the HTTP runs. Prints throughput, p50/p99 latency, errors (non-2xx + socket errors), the
   ratio of the medians HTTP / engine-only throughput and p99/p50 against the issue's
   targets, and the server's resident memory at idle against the spec's 1.5 x model file
   + 64 MiB.

Every request goes to 127.0.0.1 only; wrk stops by itself after --duration seconds.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import workloads  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def write_bodies(folder):
    """The main set's requests as /recommend bodies. Lines are seqrec_timing's: item ids, or
    ID@TIMESTAMP for the models that read time, and maybe a final now=T."""
    path = os.path.join(folder, "sets", "main.bodies")
    with open(os.path.join(folder, "sets", "main.txt")) as src, open(path, "w") as out:
        for line in src:
            interactions, body = [], {"k": 10, "recommend_seen": True}
            for i, word in enumerate(line.split()):
                if word.startswith("now="):
                    body["now"] = int(word[4:])
                    continue
                item, _, stamp = word.partition("@")
                interactions.append({"item_id": item, "timestamp": int(stamp) if stamp else 1_700_000_000 + i})
            body["user_interactions"] = interactions
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
    return path


def fixed_requests(folder, lengths=(10, 200)):
    """One fixed request per length (the longest main-set history cut to it), as a seqrec_timing
    set (the line repeated) and as a one-line bodies file: what one client sends over and over."""
    lines = open(os.path.join(folder, "sets", "main.txt")).read().split("\n")
    longest = max((line.split() for line in lines if line.strip()), key=len)
    words = [w for w in longest if not w.startswith("now=")]
    out = {}
    for n in lengths:
        kept = words[-n:]
        if len(kept) < n:
            continue
        line = " ".join(kept)
        timing_set = os.path.join(folder, "sets", f"fixed{n}.txt")
        with open(timing_set, "w") as f:
            f.write((line + "\n") * 512)
        interactions = []
        for i, word in enumerate(kept):
            item, _, stamp = word.partition("@")
            interactions.append({"item_id": item, "timestamp": int(stamp) if stamp else 1_700_000_000 + i})
        bodies = os.path.join(folder, "sets", f"fixed{n}.bodies")
        with open(bodies, "w") as f:
            f.write(json.dumps({"k": 10, "recommend_seen": True, "user_interactions": interactions},
                               separators=(",", ":")) + "\n")
        out[n] = (timing_set, bodies)
    return out


def write_latency_chart(rows, path):
    """p50 / p99 by connections for each fixed request, with the engine's batch-1 time: a PNG
    (python3-matplotlib), or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no chart: python3-matplotlib is not installed")
        return None
    lengths = sorted({r["items"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.4), squeeze=False)
    for ax, n in zip(axes[0], lengths):
        cells = sorted((r for r in rows if r["items"] == n), key=lambda r: r["connections"])
        xs = [r["connections"] for r in cells]
        ax.plot(xs, [r["p50_us"] for r in cells], "o-", label="HTTP p50")
        ax.plot(xs, [r["p99_us"] for r in cells], "s--", label="HTTP p99")
        ax.axhline(cells[0]["engine_us"], color="gray", linestyle=":", label="engine alone, batch 1")
        ax.axhline(cells[0]["engine_us"] + 60, color="red", linestyle="-.", linewidth=0.8, label="target: engine + 60 us")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("connections")
        ax.set_ylabel("microseconds")
        ax.set_title(f"{n}-item history, one fixed request", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, seqrec, model, threads, max_batch, extra=()):
        self.log_path = model + ".serve.log"
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen([seqrec, "serve", "--model", model, "--history", "memory", "--bind", "127.0.0.1",
                                      "--port", "0", "--threads", str(threads), "--max-batch", str(max_batch), *extra],
                                     stdout=subprocess.DEVNULL, stderr=self.log_file)
        self.port = None
        deadline = time.time() + 120
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"seqrec serve exited {self.proc.returncode}: {open(self.log_path).read().strip()}")
            match = re.search(r"listening on http://[^:]+:(\d+)", open(self.log_path).read())
            if match:
                self.port = int(match.group(1))
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("seqrec serve did not start listening within 120 s")
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("seqrec serve never became ready")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def post(self, path, body):
        request = urllib.request.Request(self.url(path), data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as r:
            return r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def run_wrk(server, bodies, connections, seconds):
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s",
               os.path.join(HERE, "http_post.lua"), server.url("/recommend"), "--", bodies]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    line = [l for l in result.stdout.splitlines() if l.startswith("{")][-1]
    out = json.loads(line)
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    out["errors"] = (out["connect_errors"] + out["read_errors"] + out["write_errors"] + out["status_errors"]
                     + out["timeouts"])
    return out


def batch_sizes(metrics_text):
    """Mean requests per forward pass from seqrec_batch_size's _sum / _count."""
    total = count = None
    for line in metrics_text.splitlines():
        if line.startswith("seqrec_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("seqrec_batch_size_count"):
            count = float(line.split()[-1])
    return (total / count) if total and count else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of each timed wrk run (default 20)")
    parser.add_argument("--runs", type=int, default=2, help="timed wrk runs, interleaved with engine runs (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="inference workers = engine threads (default 2)")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch and the engine's batch")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="one more argument for seqrec serve (repeat it), e.g. --serve-arg=--inline-max-us=0")
    parser.add_argument("--quick", action="store_true", help="10 s runs, one of each, the --quick request set")
    parser.add_argument("--workload", default="ml1m", choices=sorted(workloads.WORKLOADS),
                        help="the model and request set (default ml1m, the issue's)")
    parser.add_argument("--build", default=os.path.join(REPO, "build-bench"))
    parser.add_argument("--workdir", default=None, help="default BUILD/compare (shared with compare.py)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.runs = 10, 1
    workdir = args.workdir or os.path.join(args.build, "compare")
    seqrec = os.path.join(args.build, "seqrec")
    timing = os.path.join(args.build, "bench", "seqrec_timing")
    for path in (seqrec, timing):
        if not os.access(path, os.X_OK):
            sys.exit(f"http_bench.py: no {path}; build it first:\n  cmake -S {REPO} -B {args.build} "
                     f"-DCMAKE_BUILD_TYPE=Release && cmake --build {args.build} -j2 --target seqrec seqrec_timing")
    if subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True).returncode != 0:
        sys.exit("http_bench.py: wrk missing; install it: scripts/install-deps.sh --bench")

    w = workloads.WORKLOADS[args.workload]
    folder = workloads.prepare(w, workdir, seqrec, args.quick, log=log)
    model = os.path.join(folder, "model.seqrec")
    bodies = write_bodies(folder)
    n_bodies = sum(1 for _ in open(bodies))
    model_mib = os.path.getsize(model) / 2**20

    # The engine's pass: the request set repeated to at least 4,096 requests (about a second).
    engine_set = os.path.join(folder, "sets", "main.engine.txt")
    lines = open(os.path.join(folder, "sets", "main.txt")).readlines()
    with open(engine_set, "w") as f:
        f.writelines(lines * -(-4096 // len(lines)))
    fixed = fixed_requests(folder)
    engine = subprocess.Popen([timing, "--model", model, "--requests", f"main={engine_set}"]
                              + [a for n, (timing_set, _) in fixed.items() for a in ("--requests", f"fixed{n}={timing_set}")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def engine_rps():
        engine.stdin.write(f"run main {args.max_batch} {args.threads}\n")
        engine.stdin.flush()
        answer = json.loads(engine.stdout.readline())
        return answer["n"] / answer["seconds"]

    json.loads(engine.stdout.readline())  # ready
    server = Server(seqrec, model, args.threads, args.max_batch, args.serve_arg)
    try:
        idle_rss_mib = rss_kib(server.proc.pid) / 1024
        status, answer = server.post("/recommend", open(bodies).readline())
        if status != 200 or len(answer.get("recommendations", [])) != 10:
            raise RuntimeError(f"sanity request: status {status}, answer {str(answer)[:200]}")
        log(f"[http] seqrec serve on 127.0.0.1:{server.port}: {args.threads} workers, max batch {args.max_batch}; "
            f"idle RSS {idle_rss_mib:.1f} MiB; warm-up")
        run_wrk(server, bodies, args.connections, 3)
        engine_samples, http_runs = [], []
        for r in range(args.runs):
            engine_samples += [engine_rps() for _ in range(3 if r == 0 else 2)]
            log(f"[http] wrk run {r + 1}/{args.runs}: {args.connections} connections, {args.duration} s")
            http_runs.append(run_wrk(server, bodies, args.connections, args.duration))
        engine_samples.append(engine_rps())
        mean_batch = batch_sizes(server.metrics())
        # One request at a time, and a few: a fixed 10- and 200-item history at 1 and 4
        # connections, against the engine's batch-1 time for the same request.
        low_rows = []
        for n, (_, fixed_bodies) in fixed.items():
            engine.stdin.write(f"run fixed{n} 1 1\n")
            engine.stdin.flush()
            answer = json.loads(engine.stdout.readline())
            engine_us = answer["seconds"] / answer["n"] * 1e6
            for connections in (1, 4):
                run_wrk(server, fixed_bodies, connections, 2)  # warm-up
                result = run_wrk(server, fixed_bodies, connections, max(5, args.duration // 2))
                low_rows.append({"items": n, "connections": connections, "engine_us": engine_us,
                                 "p50_us": result["p50_us"], "p99_us": result["p99_us"], "rps": result["rps"],
                                 "errors": result["errors"]})
                log(f"[http] {n}-item request, {connections} connection(s): p50 {result['p50_us']:.0f} us, "
                    f"engine {engine_us:.0f} us")
        stage_text = server.metrics()
        busy_rss_mib = rss_kib(server.proc.pid) / 1024
    finally:
        server.stop()
        engine.stdin.write("quit\n")
        engine.stdin.flush()
        engine.wait(timeout=30)

    http_median = statistics.median(r["rps"] for r in http_runs)
    best = sorted(http_runs, key=lambda x: x["rps"])[(len(http_runs) - 1) // 2]  # its latencies are shown
    engine_median = statistics.median(engine_samples)
    ratio = http_median / engine_median
    p50, p99 = best["p50_us"] / 1e3, best["p99_us"] / 1e3
    errors = sum(r["errors"] for r in http_runs)
    requests = sum(r["requests"] for r in http_runs)
    rss_limit = 1.5 * model_mib + 64

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    lines = [
        f"HTTP: seqrec serve --history memory --threads {args.threads} --max-batch {args.max_batch}"
        f"{''.join(' ' + a for a in args.serve_arg)}, {w.name} "
        f"({w.items:,} items, L={w.max_len}), {n_bodies} request bodies (histories of 1..{2 * w.max_len} items) "
        f"in rotation; wrk 1 thread, {args.connections} keep-alive connections, loopback, "
        f"{args.runs} x {args.duration} s; {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "
        f"{os.getloadavg()[0]:.2f}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| HTTP throughput (median run) | {http_median:.0f} req/s (runs: "
        + ", ".join(f"{r['rps']:.0f}" for r in http_runs) + ") |",
        f"| engine-only throughput (seqrec_timing, batch {args.max_batch}, {args.threads} threads, median) | "
        f"{engine_median:.0f} req/s (samples: " + ", ".join(f"{x:.0f}" for x in engine_samples) + ") |",
        f"| latency p50 / p90 / p99 / max (that run) | {p50:.2f} / {best['p90_us'] / 1e3:.2f} / {p99:.2f} / "
        f"{best['max_us'] / 1e3:.2f} ms |",
        f"| errors (non-2xx + socket errors + timeouts), all runs | {errors} of {requests} "
        f"(status {sum(r['status_errors'] for r in http_runs)}, connect {sum(r['connect_errors'] for r in http_runs)}, "
        f"read {sum(r['read_errors'] for r in http_runs)}, write {sum(r['write_errors'] for r in http_runs)}, "
        f"timeout {sum(r['timeouts'] for r in http_runs)}) |",
        f"| mean requests per forward pass (server metrics) | "
        + (f"{mean_batch:.1f}" if mean_batch else "n/a") + " |",
        f"| server RSS idle / after load | {idle_rss_mib:.1f} / {busy_rss_mib:.1f} MiB (model file {model_mib:.1f} MiB) |",
        "",
        "targets (same-run ratios):",
        f"  [{verdict(ratio >= 0.5)}] HTTP throughput >= 50% of engine-only: {100 * ratio:.1f}%",
        f"  [{verdict(p99 <= 10 * p50)}] p99 <= 10x p50: p99/p50 = {p99 / p50:.2f}",
        f"  [{verdict(errors == 0)}] zero errors: {errors}",
        f"  [{verdict(idle_rss_mib <= rss_limit)}] idle RSS <= 1.5 x model file + 64 MiB = {rss_limit:.1f} MiB: "
        f"{idle_rss_mib:.1f} MiB",
    ]
    lines += ["", "One request at a time (a fixed request, keep-alive; engine: seqrec_timing batch 1, 1 thread, same request):",
              "", "| history | connections | HTTP p50 | HTTP p99 | engine batch 1 | p50 - engine | req/s | errors | target |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in low_rows:
        goal = r["engine_us"] + 60 if r["connections"] == 1 else 2 * (r["engine_us"] + 60)
        lines.append(f"| {r['items']} items | {r['connections']} | {r['p50_us']:.0f} us | {r['p99_us']:.0f} us | "
                     f"{r['engine_us']:.0f} us | {r['p50_us'] - r['engine_us']:.0f} us | {r['rps']:.0f} | {r['errors']} | "
                     f"[{verdict(r['p50_us'] <= goal)}] p50 <= {goal:.0f} us |")
    stages = {}
    for line in stage_text.splitlines():
        m = re.match(r'seqrec_request_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if m:
            stages.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    m_sum = re.search(r"^seqrec_inference_seconds_sum (\S+)", stage_text, re.M)
    m_count = re.search(r"^seqrec_inference_seconds_count (\S+)", stage_text, re.M)
    if stages:
        means = [f"{name} {1e6 * v['sum'] / v['count']:.1f} us" for name, v in stages.items() if v.get("count")]
        if m_sum and m_count and float(m_count.group(1)):
            means.append(f"inference (per batch) {1e6 * float(m_sum.group(1)) / float(m_count.group(1)):.1f} us")
        lines += ["", "mean time per stage over the whole run (server metrics seqrec_request_stage_seconds): " + ", ".join(means)]
    chart = write_latency_chart(low_rows, os.path.join(workdir, "http_latency.png")) if low_rows else None
    if chart:
        lines += ["", f"chart: {chart}"]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(workdir, "http_results.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
