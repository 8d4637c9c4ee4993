#!/usr/bin/python3
"""seqrec side by side with PyTorch eager and ONNX Runtime (docs/performance.md).

  /usr/bin/python3 bench/compare.py [--workloads ml1m,recbole,bert4rec,catalog1m,tisasrec,hstu,hstu-large]
                                    (catalog10m only when named: ~8 GB of files, ~16 GB of memory)
                                    [--rounds N] [--quick] [--settle S] [--min-pass S] [--build DIR]
                                    [--workdir DIR]

For each workload: makes the model (the source framework's own modules, trained-looking
random weights, fixed seed), saves its checkpoint and converts it with `seqrec convert`,
exports the same model's scoring forward to ONNX (torch.onnx.export, opset 14, dynamic
batch), and writes one fixed request set (histories of random length 1..2L, fixed seed;
tisasrec and hstu* with ml-1m-like second timestamps, see bench/newer_models.py). When
torch.onnx.export fails for a model, the reason is printed under the table and the workload
runs without ONNX Runtime. Then three worker processes hold the model, one per system:

  seqrec        build-bench/bench/seqrec_timing: the engine in-process (Recommender::recommend:
                sequence building, forward pass, scoring (int8 pre-scan + exact rescoring,
                or the scoring product), top-10, response), no HTTP.
                T threads, each with its own Workspace, take chunks of B requests;
                kernels::set_gemm_threads(1) (parallelism across requests, as `seqrec serve`).
  PyTorch       bench/torch_worker.py: eval(), torch.no_grad(), torch.set_num_threads(T),
                batches of B through the source model's forward (-> logits over the catalog);
                one process per T (torch 1.13 slows down 100x when its thread count is
                switched back and forth in one process), OPENBLAS_NUM_THREADS=1 so that T
                is PyTorch's only threading (Debian's torch calls OpenBLAS, whose own pool
                would otherwise run inside torch's).
  ONNX Runtime  bench/ort_worker.js: onnxruntime-node, CPU, intraOpNumThreads = T,
                graphOptimizationLevel 'all', session.run on batches of B.

ms/request = wall time of a pass over the whole request set / requests (so with T = 2 it
is throughput: seqrec runs two requests-streams at once, the peers use two threads inside
each batch). seqrec's pass cycles over the set until it has answered at least 8·B·T
requests: with --quick's 128 requests, batch 64 on two threads would otherwise be one batch
per thread, timing thread hand-off more than the engine. Every system's pass then answers
its set again (whole rounds) until --min-pass seconds have passed: seqrec's pass of the
512-request set at batch 64 on two threads took ~20 ms, and such passes timed the scheduler
(the same cell measured 0.019-0.037 ms/request across rounds). Each (batch, threads) cell is timed
once per round per system, the cells interleaved, the systems' order changing between rounds
through all six orders (three rotations made each system always follow the same one); the
table shows medians over rounds. Every two-thread pass (any system) follows --settle seconds
of idle: on this 2-vCPU VM a two-thread pass right after another system's (ONNX Runtime's
above all) ran up to 2.5x slower than back to back, skewing whichever system came next.
A pass starts no new batch after --budget seconds (ms/request is then over the requests it
answered; the output lists such cells).
The peers' clocks cover only the forward pass to logits (no top-k); seqrec's covers
everything recommend() does, so the comparison leans the peers' way.

Before timing, every request's top-10 from seqrec (at batch 1, 8 and 64) and from ONNX
Runtime is checked against PyTorch's; two rows may swap only where PyTorch's logits for them
tie within fp32 noise (|a - b| <= 4e-6 x the request's largest |logit|, about 30 fp32 ulps).

seqrec's useful GFLOP/s = the useful FLOPs of the request set (workloads.useful_flops: real
history length, causal lower triangle, last block only for the read-out slot; the encoder
only, since the catalog scoring mostly goes through the int8 pre-scan, except HSTU's, which
counts it) / seqrec's time, shown as a share of T x the single-core OpenBLAS sgemm rate
(n = 1024) measured in every round of the same run by `seqrec_timing --sgemm-only`: the best
of three processes, OpenBLAS's own kernel choice for this CPU (OPENBLAS_CORETYPE unset), and
OPENBLAS_CORETYPE=SkylakeX (AVX-512) and =Haswell (AVX2) forced, each product checked. Debian's
OpenBLAS 0.3.21 does not know Sapphire Rapids and falls back to its generic Prescott (SSE3)
kernel, a fraction of what the core does; the environment lines say which kernel won.

The catalog workloads (catalog1m, catalog10m) also start `seqrec serve` on their model (memory
history store), after the timing, with the other workers gone: the seconds from the process's
start to /readyz answering 200, the load time its start-up log gives, and its VmRSS after one
answered /recommend, against the model file's size.

Results also go to WORKDIR/results.json, WORKDIR/results.md and a chart, WORKDIR/results.png
(ms/request by batch per system, workload and thread count; needs python3-matplotlib).
"""

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import workloads  # noqa: E402

BATCHES = (1, 8, 64)
THREADS = (1, 2)
SYSTEMS = ("seqrec", "pytorch", "ort")
ORDERS = [list(p) for p in itertools.permutations(SYSTEMS)]
LABEL = {"seqrec": "seqrec", "pytorch": "PyTorch", "ort": "ONNX Runtime"}
TIE_TOLERANCE = 4e-6  # relative to the request's largest |logit|: about 30 fp32 ulps
sgemm_cores = {}  # SGEMM_KERNELS label -> the kernel OpenBLAS reported using


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Worker:
    """A process answering one JSON line per command line."""

    def __init__(self, name, command, env=None):
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, bufsize=1)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"{self.name} worker exited ({code}) before answering")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} worker: {answer['error']}")
        return answer

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class TorchWorkers:
    """One PyTorch process per thread count (see torch_worker.py: switching torch's thread
    count inside one process wrecks its speed); commands go to the one for their T."""

    def __init__(self, by_threads):
        self.by_threads = by_threads
        self.info = next(iter(by_threads.values())).info

    def ask(self, command):
        words = command.split()
        threads = int(words[3]) if words[0] == "run" else min(self.by_threads)
        return self.by_threads[threads].ask(command)

    def close(self):
        for worker in self.by_threads.values():
            worker.close()


# The single-core sgemm limit: OpenBLAS picks its kernel once per process, from the CPU or from
# OPENBLAS_CORETYPE; one `seqrec_timing --sgemm-only` process per kernel tried.
SGEMM_KERNELS = {"own choice": None, "SkylakeX": "SkylakeX", "Haswell": "Haswell"}


def start_limit_workers(build):
    timing = os.path.join(build, "bench", "seqrec_timing")
    plain = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    workers = {}
    try:
        for label, coretype in SGEMM_KERNELS.items():
            env = dict(plain, OPENBLAS_CORETYPE=coretype) if coretype else plain
            workers[label] = Worker(f"sgemm ({label})", [timing, "--sgemm-only"], env=env)
    except Exception:
        for worker in workers.values():
            worker.close()
        raise
    return workers


def start_workers(w, folder, build):
    sets = workloads.set_names(folder)
    timing = os.path.join(build, "bench", "seqrec_timing")
    seqrec_cmd = [timing, "--model", os.path.join(folder, "model.seqrec")]
    for name in sets:
        seqrec_cmd += ["--requests", f"{name}={os.path.join(folder, 'sets', name + '.txt')}"]
    workers = {}
    try:
        workers["seqrec"] = Worker("seqrec", seqrec_cmd)
        # Debian's torch calls OpenBLAS, whose own thread pool would otherwise run inside
        # torch's ("1 thread" using every core). One OpenBLAS thread leaves
        # torch.set_num_threads(T) as PyTorch's only threading.
        torch_env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        workers["pytorch"] = TorchWorkers(
            {t: Worker(f"pytorch ({t} thread(s))",
                       [sys.executable, os.path.join(HERE, "torch_worker.py"), w.name, folder, str(t)], env=torch_env)
             for t in THREADS})
        if not workloads.onnx_failure(folder):
            workers["ort"] = Worker("ort", ["node", os.path.join(HERE, "ort_worker.js"), folder])
    except Exception:
        for worker in workers.values():
            worker.close()
        raise
    return workers


# ---- the top-10 check ------------------------------------------------------------------------------

def check_top10(reference, candidate):
    """(requests that differ beyond ties, max |logit delta| on shared rows). `reference` and
    `candidate`: {"top": [[row...]], "scores": [[...]]}, the reference with its 20 best."""
    bad = 0
    max_delta = 0.0
    for ref_rows, ref_scores, rows, scores in zip(reference["top"], reference["scores"], candidate["top"],
                                                  candidate["scores"]):
        ref_score = dict(zip(ref_rows, ref_scores))
        scale = max(abs(x) for x in ref_scores)
        ok = len(rows) >= 10
        for i in range(min(10, len(rows))):
            got, want = rows[i], ref_rows[i]
            if got in ref_score:
                max_delta = max(max_delta, abs(ref_score[got] - scores[i]))
            if got == want:
                continue
            a, b = ref_score.get(got), ref_score[want]
            if a is None or abs(a - b) > TIE_TOLERANCE * scale:
                ok = False
        bad += 0 if ok else 1
    return bad, max_delta


def run_checks(workers):
    reference = workers["pytorch"].ask("top main 64")
    checks = []
    for system, batch in [("seqrec", 1), ("seqrec", 8), ("seqrec", 64), ("ort", 64)]:
        if system not in workers:
            continue
        got = workers[system].ask(f"top main {batch}")
        bad, delta = check_top10(reference, got)
        checks.append({"system": system, "batch": batch, "requests": len(reference["top"]), "differ": bad,
                       "max_delta": delta})
    return checks


# ---- timing ------------------------------------------------------------------------------------------

def time_workload(w, folder, workers, limits, rounds, sgemm, budget, capped, settle, min_pass):
    sets = workloads.set_names(folder)
    cells = [("main", b, t) for t in THREADS for b in BATCHES]
    cells += [(name, 1, 1) for name in sets if name != "main"]
    systems = [s for s in SYSTEMS if s in workers]
    samples = {(s, cell): [] for s in systems for cell in cells}
    p50s = {(s, cell): [] for s in systems for cell in cells}
    for r in range(rounds):
        started = time.time()
        for label, limit in limits.items():
            answer = limit.ask("sgemm")
            sgemm[label].append(answer["gflops"])
            sgemm_cores[label] = answer.get("core", "?")
        # All six orders in turn, not three rotations: with rotations the cells' sequence made
        # each system always follow the same one (seqrec always came right after ONNX
        # Runtime, whose passes leave this VM's second vCPU slow for a second or so).
        order = [s for s in ORDERS[r % len(ORDERS)] if s in workers]
        for cell in cells:
            name, b, t = cell
            for system in order:
                if t > 1:
                    time.sleep(settle)  # see --settle
                answer = workers[system].ask(f"run {name} {b} {t} {budget} {min_pass}")
                full = len(workloads.set_lengths(folder, name))
                if answer["n"] < full:
                    capped.append((w.name, LABEL[system], name, b, t, answer["n"], full))
                samples[(system, cell)].append(answer["seconds"] / answer["n"] * 1e3)
                if b == 1 and t == 1:
                    p50s[(system, cell)] += answer["batch_ms"]
        log(f"[{w.name}] round {r + 1}/{rounds}: {time.time() - started:.1f} s")
    ms = {key: statistics.median(v) for key, v in samples.items()}
    p50 = {key: statistics.median(v) for key, v in p50s.items() if v}
    return cells, ms, p50


# ---- the server's footprint on a large catalog --------------------------------------------------------

def serve_footprint(seqrec, folder):
    """Starts `seqrec serve` on FOLDER/model.seqrec, asks one /recommend and stops it:
    {"ready_s": process start to /readyz 200, "load_ms": the start-up log's load time,
     "rss_mib": VmRSS after the answer, "file_mib": the model file's size}."""
    import http_bench  # bench/: its Server starts and stops `seqrec serve` on a free port
    model = os.path.join(folder, "model.seqrec")
    started = time.perf_counter()
    server = http_bench.Server(seqrec, model, threads=1, max_batch=1)
    ready_s = time.perf_counter() - started
    try:
        history = open(os.path.join(folder, "sets", "main.txt")).readline().split()
        body = {"k": 10, "user_interactions": [{"item_id": item} for item in history]}
        status, answer = server.post("/recommend", json.dumps(body))
        if status != 200 or len(answer.get("recommendations", [])) != 10:
            raise RuntimeError(f"seqrec serve answered {status} with {answer}")
        rss_mib = http_bench.rss_kib(server.proc.pid) / 1024
    finally:
        server.stop()
    logged = re.search(r"loaded in (\d+) ms", open(server.log_path).read())
    return {"ready_s": ready_s, "load_ms": int(logged.group(1)) if logged else None, "rss_mib": rss_mib,
            "file_mib": os.path.getsize(model) / 2**20}


# ---- the report ----------------------------------------------------------------------------------------

def fmt_ms(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(x):
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def build_results(all_results, sgemm_gflops):
    rows = []
    for wr in all_results:
        w = wr["workload"]
        gflop_main = workloads.gflop_per_set(w, wr["folder"], "main")
        n_main = len(workloads.set_lengths(wr["folder"], "main"))
        for name, b, t in wr["cells"]:
            if name != "main":
                continue
            cell = (name, b, t)
            s, p = wr["ms"][("seqrec", cell)], wr["ms"][("pytorch", cell)]
            o = wr["ms"].get(("ort", cell))  # None: no ONNX export (wr["onnx_failed"] says why)
            gflops = gflop_main / (s * n_main / 1e3)
            rows.append({"workload": w.name, "batch": b, "threads": t, "seqrec_ms": s, "pytorch_ms": p, "ort_ms": o,
                         "vs_pytorch": p / s, "vs_ort": o / s if o is not None else None, "gflops": gflops,
                         "of_limit": gflops / (t * sgemm_gflops)})
    return rows


def write_chart(rows, path):
    """ms/request by batch for each system, one panel per workload and thread count (log scale):
    WORKDIR/results.png. Needs Debian's python3-matplotlib; without it, says so and goes on."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no chart: python3-matplotlib is not installed")
        return None
    panels = sorted({(r["workload"], r["threads"]) for r in rows}, key=lambda p: ([r["workload"] for r in rows].index(p[0]), p[1]))
    cols = 2
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(10, 3.2 * ((len(panels) + cols - 1) // cols)),
                             squeeze=False)
    for ax, (name, threads) in zip(axes.flat, panels):
        cells = sorted((r for r in rows if r["workload"] == name and r["threads"] == threads), key=lambda r: r["batch"])
        batches = [r["batch"] for r in cells]
        for key, label, style in (("seqrec_ms", "seqrec", "o-"), ("ort_ms", "ONNX Runtime", "s--"), ("pytorch_ms", "PyTorch", "^:")):
            values = [r[key] for r in cells]
            if all(v is not None for v in values):
                ax.plot(batches, values, style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_title(f"{name}, {threads} thread{'s' if threads > 1 else ''}", fontsize=10)
        ax.set_xlabel("batch")
        ax.set_ylabel("ms / request")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def table_markdown(rows):
    head = ("| workload | batch | threads | seqrec ms/req | PyTorch ms/req | ONNX Runtime ms/req "
            "| seqrec vs PyTorch | seqrec vs ORT | seqrec useful GFLOP/s | of T-core sgemm |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ort_ms = fmt_ms(r["ort_ms"]) if r["ort_ms"] is not None else "n/a (no export)"
        vs_ort = fmt_ratio(r["vs_ort"]) if r["vs_ort"] is not None else "n/a"
        lines.append(f"| {r['workload']} | {r['batch']} | {r['threads']} | {fmt_ms(r['seqrec_ms'])} "
                     f"| {fmt_ms(r['pytorch_ms'])} | {ort_ms} | {fmt_ratio(r['vs_pytorch'])} "
                     f"| {vs_ort} | {r['gflops']:.1f} | {100 * r['of_limit']:.1f}% |")
    return "\n".join(lines)


def targets(all_results, rows, sgemm_gflops):
    """[(target, measured text, pass/fail/n/a)] — the issue's targets, each a same-run ratio."""
    by = {(r["workload"], r["batch"], r["threads"]): r for r in rows}
    res = {wr["workload"].name: wr for wr in all_results}
    out = []

    def add(text, value, goal_ok, shown):
        out.append((text, shown if value is not None else "not run", "n/a" if value is None else
                    ("PASS" if goal_ok else "FAIL")))

    def add_vs_ort(name, batch, threads, goal, what):
        r = by.get((name, batch, threads))
        text = f"{name} batch {batch}, {threads} thread{'s' if threads > 1 else ''}: >= {goal}x {what}"
        if r and r["vs_ort"] is None:  # ran, but without an ONNX export
            out.append((text, f"no ONNX Runtime column: {res[name]['onnx_failed']}", "n/a"))
            return
        add(text, r and r["vs_ort"], r and r["vs_ort"] >= goal, r and fmt_ratio(r["vs_ort"]))

    def add_flop_limit(name):
        wr = res.get(name)
        text = (f"{name} full-length (200-item) history, batch 1, 1 thread: within 2x of the FLOP limit "
                "(useful GFLOP/s >= 50% of 1-core sgemm)")
        if not wr or ("len200", 1, 1) not in wr["cells"]:
            add(text, None, False, None)
            return
        w = wr["workload"]
        ms200 = wr["ms"][("seqrec", ("len200", 1, 1))]
        flops = workloads.useful_flops(w, 200)
        gflops = flops / 1e9 / (ms200 / 1e3)
        frac = gflops / sgemm_gflops
        add(text, frac, frac >= 0.5, f"{gflops:.1f} GFLOP/s = {100 * frac:.1f}% of {sgemm_gflops:.1f} "
            f"({fmt_ms(ms200)} ms for {flops / 1e6:.1f} MFLOP)")

    add_vs_ort("ml1m", 1, 1, 5, "faster than ONNX Runtime")
    r = by.get(("ml1m", 1, 1))
    add("ml1m batch 1, 1 thread: >= 10x faster than PyTorch", r and r["vs_pytorch"],
        r and r["vs_pytorch"] >= 10, r and fmt_ratio(r["vs_pytorch"]))
    add_flop_limit("ml1m")
    wr = res.get("ml1m")
    if wr and ("len200", 1, 1) in wr["cells"]:
        ms200 = wr["ms"][("seqrec", ("len200", 1, 1))]
        ms10 = wr["ms"][("seqrec", ("len10", 1, 1))]
        ratio = ms10 / ms200

        def peer(system):
            if (system, ("len10", 1, 1)) not in wr["ms"]:
                return "n/a"
            return f"{wr['ms'][(system, ('len10', 1, 1))] / wr['ms'][(system, ('len200', 1, 1))]:.2f}"
        add("ml1m 10-item history costs <= 1/5 of a 200-item one (batch 1, 1 thread)", ratio, ratio <= 0.2,
            f"{fmt_ms(ms10)} / {fmt_ms(ms200)} ms = {ratio:.3f} (PyTorch {peer('pytorch')}, "
            f"ONNX Runtime {peer('ort')})")
    else:
        add("ml1m 10-item history costs <= 1/5 of a 200-item one", None, False, None)
    for name in ("ml1m", "recbole"):
        add_vs_ort(name, 64, 2, 3, "ONNX Runtime's throughput")
    def add_batch1_p50(name, goal_ms):
        """The workload's batch-1 p50 on one thread against goal_ms (None: not run)."""
        wr = res.get(name)
        text = f"{name} batch-1 p50 <= {goal_ms} ms, 1 thread"
        if not wr:
            add(text, None, False, None)
            return None
        p50 = wr["p50"][("seqrec", ("main", 1, 1))]
        ort_p50 = wr["p50"].get(("ort", ("main", 1, 1)))
        add(text, p50, p50 <= goal_ms,
            f"{fmt_ms(p50)} ms (PyTorch {fmt_ms(wr['p50'][('pytorch', ('main', 1, 1))])}, "
            f"ONNX Runtime {fmt_ms(ort_p50) if ort_p50 is not None else 'n/a'})")
        return wr

    add_batch1_p50("catalog1m", 5)
    if "catalog10m" in res:  # only when named (--workloads catalog10m)
        add_batch1_p50("catalog10m", 20)
        for threads in THREADS:
            r = by.get(("catalog10m", 64, threads))
            add(f"catalog10m batch 64, {threads} thread{'s' if threads > 1 else ''}: <= 3 ms/request",
                r and r["seqrec_ms"], r and r["seqrec_ms"] <= 3, r and f"{fmt_ms(r['seqrec_ms'])} ms/request")
    for name in ("catalog1m", "catalog10m"):
        serve = res[name].get("serve") if name in res else None
        if not serve or "error" in serve:
            if name in res:
                add(f"{name}: seqrec serve footprint", None, False, None)
            continue
        if name == "catalog10m":
            ratio = serve["rss_mib"] / serve["file_mib"]
            add("catalog10m seqrec serve RSS <= 1.2x the model file", ratio, ratio <= 1.2,
                f"{serve['rss_mib']:.0f} MiB / {serve['file_mib']:.0f} MiB = {ratio:.2f}x")
            add("catalog10m seqrec serve loads in <= 3 s", serve["ready_s"], serve["ready_s"] <= 3,
                f"{serve['ready_s']:.2f} s from start to /readyz (start-up log: loaded in {serve['load_ms']} ms)")
        else:
            out.append((f"{name} seqrec serve footprint (no target)",
                        f"ready in {serve['ready_s']:.2f} s (loaded in {serve['load_ms']} ms), RSS "
                        f"{serve['rss_mib']:.0f} MiB = {serve['rss_mib'] / serve['file_mib']:.2f}x the "
                        f"{serve['file_mib']:.0f} MiB file", "info"))
    # The models that read time.
    for name in ("tisasrec", "hstu", "hstu-large"):
        add_vs_ort(name, 1, 1, 5, "faster than ONNX Runtime")
        add_vs_ort(name, 64, 2, 3, "ONNX Runtime's throughput")
    add_flop_limit("hstu-large")
    return out


def sgemm_limit(sgemm):
    """(GFLOP/s, kernel label): the best of the kernels' medians (a wrong product, -1,
    disqualifies its kernel)."""
    medians = {label: statistics.median(v) for label, v in sgemm.items() if v and min(v) > 0}
    best = max(medians, key=medians.get)
    return medians[best], best


def environment_lines(info, sgemm, rounds, quick):
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    coretype = os.environ.get("OPENBLAS_CORETYPE")

    def describe(label):
        values = sgemm[label]
        kernel = sgemm_cores.get(label, "?")
        name = (f"OpenBLAS's own choice ({kernel})" if SGEMM_KERNELS[label] is None
                else f"OPENBLAS_CORETYPE={SGEMM_KERNELS[label]} ({kernel})")
        if min(values) <= 0:
            return f"{name} WRONG PRODUCT (not used)"
        return f"{name} {statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"
    limit, best = sgemm_limit(sgemm)
    winner = (f"OpenBLAS's own kernel choice ({sgemm_cores.get(best, '?')})" if SGEMM_KERNELS[best] is None
              else f"OPENBLAS_CORETYPE={SGEMM_KERNELS[best]} ({sgemm_cores.get(best, '?')} kernel)")
    return [
        f"machine: {cpu}, {os.cpu_count()} cores{', AVX-512' if avx512 else ''}, {platform.platform()}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"peers: PyTorch {info.get('torch', '?')} eager (OPENBLAS_NUM_THREADS=1), onnxruntime-node "
        f"{info.get('onnxruntime', '?')} (CPU); OPENBLAS_CORETYPE={coretype or '(unset)'}",
        f"limit: single-core OpenBLAS sgemm n=1024: {limit:.1f} GFLOP/s, won by {winner} (same-run medians "
        f"of {len(sgemm[best])}, each kernel in its own process: " + "; ".join(describe(k) for k in sgemm) + ")",
        f"method: {rounds}, medians; {'--quick request sets' if quick else 'full request sets'}; "
        f"load average at the end {os.getloadavg()[0]:.2f} (other work on the machine skews the 2-thread rows most)",
    ]


def run_workloads(args, names, rounds_for, seqrec, limits, sgemm, all_results, skipped, info, check_rows, capped):
    """Prepares, checks and times each workload in turn, appending to the lists given."""
    for name in names:
        w = workloads.WORKLOADS[name]
        try:
            folder = workloads.prepare(w, args.workdir, seqrec, args.quick, log=log)
        except workloads.NotAvailable as why:
            log(f"[{name}] SKIPPED: {why}")
            skipped.append((name, str(why)))
            continue
        except Exception as error:  # one workload's failure leaves the others' results
            log(f"[{name}] FAILED while preparing: {error}")
            skipped.append((name, f"failed while preparing: {error}"))
            continue
        try:
            workers = start_workers(w, folder, args.build)
        except Exception as error:
            log(f"[{name}] FAILED: {error}")
            skipped.append((name, f"failed: {error}"))
            continue
        try:
            info.update(workers["pytorch"].info)
            if "ort" in workers:
                info.update(workers["ort"].info)
            else:
                log(f"[{name}] no ONNX Runtime peer: {workloads.onnx_failure(folder)}")
            log(f"[{name}] checking every request's top-10 (seqrec at batch 1/8/64, ONNX Runtime) against PyTorch")
            checks = run_checks(workers)
            for c in checks:
                check_rows.append((name, c))
                log(f"[{name}]   {LABEL[c['system']]} batch {c['batch']}: {c['differ']}/{c['requests']} requests differ; "
                    f"max |logit delta| {c['max_delta']:.2e}")
            cells, ms, p50 = time_workload(w, folder, workers, limits, rounds_for(name), sgemm, args.budget,
                                           capped, args.settle, args.min_pass)
        finally:
            for worker in workers.values():
                worker.close()
        serve = None
        if name.startswith("catalog"):  # after the workers are gone: their memory would skew nothing, but
            try:                        # a 10M catalog's three peers and the server need not share RAM
                serve = serve_footprint(seqrec, folder)
                log(f"[{name}] seqrec serve: ready in {serve['ready_s']:.2f} s (log: loaded in {serve['load_ms']} ms), "
                    f"RSS {serve['rss_mib']:.0f} MiB for a {serve['file_mib']:.0f} MiB model file")
            except Exception as error:
                log(f"[{name}] seqrec serve footprint FAILED: {error}")
                serve = {"error": str(error)}
        all_results.append({"workload": w, "folder": folder, "cells": cells, "ms": ms, "p50": p50,
                            "onnx_failed": workloads.onnx_failure(folder), "serve": serve})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(n for n in workloads.WORKLOADS if n != "catalog10m"),
                        help=f"comma-separated, of {','.join(workloads.WORKLOADS)} (default: all but catalog10m, "
                             "which needs ~8 GB of disk and ~16 GB of memory)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timing rounds (default 6: every order once; catalog1m and hstu-large 3, catalog10m 2; "
                             "2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller request sets and 2 rounds")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds of idle before every two-thread pass (default 1.5): on this 2-vCPU VM "
                             "a two-thread pass right after another system's ran up to 2.5x slower")
    parser.add_argument("--min-pass", type=float, default=0.3,
                        help="seconds a timed pass lasts at least (default 0.3): every system answers its "
                             "whole request set again until then. A fast system's single pass took ~20 ms, "
                             "and such passes measured the scheduler (one cell spread 1.0-2.0x across rounds)")
    parser.add_argument("--budget", type=float, default=4.0,
                        help="seconds after which a timed pass starts no new batch (default 4; 0: none). "
                             "Bounds the run when a peer crawls (PyTorch's 2 threads on a busy machine)")
    parser.add_argument("--build", default=os.path.join(REPO, "build-bench"),
                        help="build folder with seqrec and bench/seqrec_timing (default build-bench)")
    parser.add_argument("--workdir", default=None, help="models, ONNX files, request sets, results "
                        "(default BUILD/compare)")
    args = parser.parse_args()
    def rounds_for(name):  # the slow workloads' rounds take minutes each
        if name == "catalog10m":  # a round is minutes of the peers' 10M-row products
            return args.rounds or 2
        return args.rounds or (2 if args.quick else 3 if name in ("catalog1m", "hstu-large") else 6)
    args.workdir = args.workdir or os.path.join(args.build, "compare")
    os.makedirs(args.workdir, exist_ok=True)

    seqrec = os.path.join(args.build, "seqrec")
    timing = os.path.join(args.build, "bench", "seqrec_timing")
    for path in (seqrec, timing):
        if not os.access(path, os.X_OK):
            sys.exit(f"compare.py: no {path}; build it first:\n  cmake -S {REPO} -B {args.build} "
                     f"-DCMAKE_BUILD_TYPE=Release && cmake --build {args.build} -j2 --target seqrec seqrec_timing")
    if not os.path.isdir(os.path.join(HERE, "node_modules", "onnxruntime-node")) or not shutil.which("node"):
        sys.exit("compare.py: ONNX Runtime peer missing; install it:\n  scripts/install-deps.sh --bench   "
                 "(or: cd bench && npm install --ignore-scripts)")

    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads.WORKLOADS]
    if unknown:
        sys.exit(f"compare.py: unknown workload(s) {unknown} (expected {','.join(workloads.WORKLOADS)})")

    started = time.time()
    all_results, skipped, info, check_rows, capped = [], [], {}, [], []
    sgemm = {label: [] for label in SGEMM_KERNELS}
    limits = start_limit_workers(args.build)
    try:
        run_workloads(args, names, rounds_for, seqrec, limits, sgemm, all_results, skipped, info, check_rows,
                      capped)
    finally:
        for worker in limits.values():
            worker.close()
    if not all_results:
        sys.exit("compare.py: no workload could run")
    limit, _ = sgemm_limit(sgemm)
    rows = build_results(all_results, limit)
    out = []
    rounds = ", ".join(f"{wr['workload'].name} {rounds_for(wr['workload'].name)}" for wr in all_results)
    out += environment_lines(info, sgemm, "rounds: " + rounds, args.quick)
    out.append("")
    out.append(table_markdown(rows))
    for wr in all_results:
        if wr["onnx_failed"]:
            out.append(f"{wr['workload'].name}: no ONNX Runtime column - {wr['onnx_failed']}")
    out.append("")
    out.append("top-10 agreement with PyTorch (every request of the main set; exact-tie swaps allowed):")
    for name, c in check_rows:
        out.append(f"  {name:10s} {LABEL[c['system']]:12s} batch {c['batch']:2d}: "
                   f"{'same' if c['differ'] == 0 else 'DIFFERENT'} on {c['requests'] - c['differ']}/{c['requests']} "
                   f"(max |logit delta| {c['max_delta']:.1e})")
    if capped:
        cut = sorted({(c[0], c[1], c[3], c[4]) for c in capped})
        out.append(f"passes cut by the {args.budget:g} s budget (ms/request over the requests answered): "
                   + "; ".join(f"{wn} {sysname} batch {b} threads {t}" for wn, sysname, b, t in cut))
    out.append("")
    out.append("targets (same-run ratios):")
    for text, shown, verdict in targets(all_results, rows, limit):
        out.append(f"  [{verdict:4s}] {text}: {shown}")
    for name, why in skipped:
        out.append(f"  [n/a ] {name}: not run - {why}")
    out.append("")
    out.append(f"total time {time.time() - started:.0f} s")
    text = "\n".join(out)
    print(text)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    chart = write_chart(rows, os.path.join(args.workdir, "results.png"))
    if chart:
        log(f"chart: {chart}")
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"rows": rows, "sgemm_gflops": sgemm, "sgemm_kernels": sgemm_cores, "limit_gflops": limit,
                   "checks": [dict(c, workload=n) for n, c in check_rows], "skipped": skipped,
                   "onnx_failed": {wr["workload"].name: wr["onnx_failed"] for wr in all_results if wr["onnx_failed"]}},
                  f, indent=1)
    differ = sum(c["differ"] for _, c in check_rows)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
