#!/usr/bin/env python3
"""A soak run of `seqrec serve` on the LMDB store: mixed traffic at ~80% of measured capacity
for a long time, recorded minute by minute.

  python3 bench/soak.py [--minutes 60] [--out build/soak.json] [--seqrec build/seqrec]
                        [--workdir build/soak] [--capacity-seconds 20] [--load 0.8] [--connections 32]

1. Converts the bundled MovieLens model, imports examples/movielens/ratings.csv into a fresh
   LMDB store and starts `seqrec serve --history lmdb:... --api-key-file ...` on a free port.
2. Capacity: --capacity-seconds of the traffic mix closed-loop (every connection sends its
   next request as soon as the last is answered) → completed requests per second.
3. Soak: --minutes at --load x capacity, open-loop: requests are scheduled at a fixed rate
   whatever the server does, and each latency counts from the scheduled moment (a server
   that falls behind shows it instead of slowing the client down).
   The mix: inline /recommend 35%, user_id /recommend 25%, appends with the API key 20%,
   GET history 12%, cold starts (never-seen users) 8%; POST /admin/reload with an empty
   body every ~30 s.
4. Per minute: requests, errors (non-2xx or no answer: nothing here is meant to fail),
   p50/p99 latency from the scheduled moment and of the exchange alone (send to answer: what
   the server took, whatever backlog the client had), the server's RSS at the minute's end (VmRSS, and its anonymous and
   file-backed parts), reloads, and the CPU used by the server and by this client. Prints the
   table, writes it as JSON (--out), and checks the goal: 0 errors and RSS flat after warm-up
   (the last minute's anonymous RSS within 10% or 8 MiB of the warm-up's end, a quarter into
   the run, minute 2 at least: the first hour-long run's anonymous memory rose from 13.6 to
   20 MiB over its first 11 minutes, then held at 20-22 MiB for 49; the file-backed part
   is the LMDB map, which grows with the appended histories). Exit 1 when it is missed.

The client is Python threads with keep-alive http.client connections on the same machine as
the server: "capacity" is what this client and the server reach together on these cores.
Standard-library Python only.
"""
import argparse
import bisect
import csv
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "examples", "movielens")
API_KEY = "soak-admin-key"
MIX = [("inline", 35), ("user_id", 25), ("append", 20), ("history", 12), ("cold_start", 8)]
RELOAD_EVERY = 30.0


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid):
    """VmRSS and its parts: RssAnon (heap and stacks: what a leak grows) and RssFile (file
    pages mapped in, mostly the LMDB map: it grows with the database and is page cache)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def rss_mib(pid):
    return memory_mib(pid).get("VmRSS", 0.0)


def cpu_seconds(pid):
    """User + system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    t = os.times()
    return t.user + t.system


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Traffic:
    """The request mix: a random request of each kind, as (kind, method, path, body, headers)."""

    def __init__(self, ratings_path):
        self.lock = threading.Lock()
        histories = {}
        with open(ratings_path) as f:
            for row in csv.DictReader(f):
                histories.setdefault(row["userId"], []).append(
                    (int(row["timestamp"]), row["movieId"], float(row["rating"])))
        for h in histories.values():
            h.sort()
        self.known_users = sorted(histories)
        # Inline bodies: the most recent (up to 50) interactions of real users.
        self.inline_bodies = []
        for user in self.known_users[:400]:
            recent = histories[user][-50:]
            self.inline_bodies.append(json.dumps({
                "user_interactions": [{"item_id": i, "timestamp": t, "rating": r} for t, i, r in recent], "k": 10}))
        self.items = sorted({i for h in histories.values() for _, i, _ in h})
        self.soak_users = [f"soak-{n}" for n in range(2000)]
        self.next_cold = 0
        self.next_ts = 2_000_000_000
        kinds, weights = zip(*MIX)
        self.kinds = kinds
        self.cumulative = []
        total = 0
        for w in weights:
            total += w
            self.cumulative.append(total)

    def pick_kind(self, rng):
        return self.kinds[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]

    def make(self, kind, rng):
        if kind == "inline":
            return kind, "POST", "/recommend", rng.choice(self.inline_bodies), {}
        if kind == "user_id":
            user = rng.choice(self.known_users) if rng.random() < 0.7 else rng.choice(self.soak_users)
            return kind, "POST", "/recommend", json.dumps({"user_id": user, "k": 10}), {}
        if kind == "append":
            with self.lock:
                self.next_ts += 1
                ts = self.next_ts
            pairs = [{"item_id": rng.choice(self.items), "timestamp": ts, "rating": rng.choice((3.0, 4.0, 5.0))}
                     for _ in range(rng.choice((1, 1, 2, 3)))]
            user = rng.choice(self.soak_users)
            return kind, "POST", f"/users/{user}/interactions", json.dumps({"user_interactions": pairs}), \
                {"X-API-Key": API_KEY}
        if kind == "history":
            user = rng.choice(self.known_users) if rng.random() < 0.5 else rng.choice(self.soak_users)
            return kind, "GET", f"/users/{user}/interactions", None, {}
        with self.lock:
            self.next_cold += 1
            n = self.next_cold
        return kind, "POST", "/recommend", json.dumps({"user_id": f"cold-{n}-{rng.randrange(1 << 30)}", "k": 10}), {}


class Server:
    def __init__(self, seqrec, model, history, key_file, log_path):
        self.port = free_port()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([seqrec, "serve", "--model", model, "--history", history, "--port", str(self.port),
                                      "--api-key-file", key_file], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"seqrec serve exited early; see {log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("seqrec serve did not become ready")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Recorder:
    """Answers filed by minute (of the measured phase) → counts and latencies."""

    def __init__(self, began):
        self.began = began
        self.lock = threading.Lock()
        self.minutes = {}

    def add(self, scheduled, latency, exchange, ok, kind, detail=None):
        minute = int((scheduled - self.began) // 60)
        with self.lock:
            m = self.minutes.setdefault(minute, {"latencies": [], "exchanges": [], "errors": 0, "by_kind": {},
                                                 "samples": []})
            m["latencies"].append(latency)
            m["exchanges"].append(exchange)
            m["by_kind"][kind] = m["by_kind"].get(kind, 0) + 1
            if not ok:
                m["errors"] += 1
                if len(m["samples"]) < 5:
                    m["samples"].append(detail)


class Client:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def exchange(self, method, path, body, headers):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = dict(headers)
            if body is not None:
                headers["Content-Type"] = "application/json"
            self.conn.request(method, path, body=body, headers=headers)
            res = self.conn.getresponse()
            payload = res.read()
            if res.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return res.status, payload
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            return None, repr(e).encode()


def run_request(client, traffic, rng, kind):
    kind, method, path, body, headers = traffic.make(kind, rng)
    status, payload = client.exchange(method, path, body, headers)
    ok = status is not None and 200 <= status < 300
    return kind, ok, (None if ok else f"{kind} {method} {path} -> {status} {payload[:200]!r}")


def reload_loop(port, stop, results):
    """POST /admin/reload (empty body: the same file) every RELOAD_EVERY seconds, each on a new
    connection (one idle for 30 s would have been closed by the server's --read-timeout)."""
    while not stop.wait(RELOAD_EVERY):
        started = time.time()
        status, payload = Client(port).exchange("POST", "/admin/reload", "", {"X-API-Key": API_KEY})
        results.append((started, time.time() - started, status, payload[:200]))


def measure_capacity(port, pid, traffic, seconds, connections, seed):
    """Closed loop: `connections` clients, each sending its next request once the last is answered."""
    stop = threading.Event()
    counts = [0] * connections
    errors = []

    def worker(n):
        rng = random.Random(seed * 1000 + n)
        client = Client(port)
        while not stop.is_set():
            _, ok, detail = run_request(client, traffic, rng, traffic.pick_kind(rng))
            counts[n] += 1
            if not ok:
                errors.append(detail)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    started, server_cpu, client_cpu = time.time(), cpu_seconds(pid), own_cpu_seconds()
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    reload_status, _ = Client(port).exchange("POST", "/admin/reload", "", {"X-API-Key": API_KEY})
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    cpu = ((cpu_seconds(pid) - server_cpu) / elapsed, (own_cpu_seconds() - client_cpu) / elapsed)
    return sum(counts) / elapsed, errors, reload_status, cpu


def soak(port, pid, traffic, rate, minutes, workers, seed):
    """Open loop at `rate` requests/s for `minutes`: each of `workers` connections owns every
    workers-th slot of one fixed schedule, and a latency counts from the request's scheduled
    moment, so an answer that comes late also delays (and charges) the requests behind it."""
    began = time.time() + 0.5
    end = began + minutes * 60
    recorder = Recorder(began)
    stop = threading.Event()
    rss = {}  # minute → VmRSS at its end (MiB)
    cpu = {}  # minute → (server, client) CPU seconds used per second
    reloads = []
    late = [0] * workers  # requests sent more than 1 s after their scheduled moment
    sent = [0] * workers
    interval = 1.0 / rate

    def worker(n):
        rng = random.Random(seed * 7919 + n)
        client = Client(port)
        slot = n
        while True:
            scheduled = began + slot * interval
            if scheduled >= end:
                return
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                late[n] += 1
            sent_at = time.time()
            kind, ok, detail = run_request(client, traffic, rng, traffic.pick_kind(rng))
            answered = time.time()
            recorder.add(scheduled, answered - scheduled, answered - sent_at, ok, kind, detail)
            sent[n] += 1
            slot += workers

    def sample_rss():
        minute = 0
        server_cpu, client_cpu, at = cpu_seconds(pid), own_cpu_seconds(), time.time()
        while minute < minutes:
            if stop.wait(max(0.0, began + (minute + 1) * 60 - time.time())):
                return
            rss[minute] = memory_mib(pid)
            now_server, now_client, now = cpu_seconds(pid), own_cpu_seconds(), time.time()
            cpu[minute] = ((now_server - server_cpu) / (now - at), (now_client - client_cpu) / (now - at))
            server_cpu, client_cpu, at = now_server, now_client, now
            m = recorder.minutes.get(minute, {})
            log(f"  minute {minute + 1}: VmRSS {rss[minute]['VmRSS']:.1f} MiB (anon {rss[minute]['RssAnon']:.1f}, file "
                f"{rss[minute]['RssFile']:.1f}), {len(m.get('latencies', []))} requests, "
                f"{m.get('errors', 0)} errors")
            minute += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    sampler = threading.Thread(target=sample_rss, daemon=True)
    reloader = threading.Thread(target=reload_loop, args=(port, stop, reloads), daemon=True)
    for t in threads + [sampler, reloader]:
        t.start()
    for t in threads:
        t.join()
    sampler.join()  # it ends after the last minute
    stop.set()
    reloader.join()
    for minute in range(minutes):
        rss.setdefault(minute, memory_mib(pid))
    return recorder, rss, cpu, reloads, sum(late), sum(sent)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--out", default=os.path.join(REPO, "build", "soak.json"))
    parser.add_argument("--seqrec", default=os.path.join(REPO, "build", "seqrec"))
    parser.add_argument("--workdir", default=os.path.join(REPO, "build", "soak"))
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity to run at")
    parser.add_argument("--connections", type=int, default=32, help="client connections (capacity and soak)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.minutes < 2:
        raise SystemExit("--minutes: at least 2 (the goal compares the last minute with minute 2)")

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    model = os.path.join(args.workdir, "movielens.seqrec")
    checkpoint = next(f for f in sorted(os.listdir(EXAMPLE)) if f.startswith("SASRec.") and f.endswith(".pth"))
    subprocess.run([args.seqrec, "convert", "--from", "pmixer", os.path.join(EXAMPLE, checkpoint), "--item-ids",
                    os.path.join(EXAMPLE, "item_ids.txt"), "--rating-threshold", "3.5", "--out", model],
                   check=True, capture_output=True)
    history = "lmdb:" + os.path.join(args.workdir, "history")
    ratings = os.path.join(EXAMPLE, "ratings.csv")
    subprocess.run([args.seqrec, "import", "--history", history, "--interactions", ratings], check=True,
                   capture_output=True)
    key_file = os.path.join(args.workdir, "api-key")
    with open(key_file, "w") as f:
        f.write(API_KEY + "\n")
    traffic = Traffic(ratings)
    server = Server(args.seqrec, model, history, key_file, os.path.join(args.workdir, "serve.log"))
    try:
        log(f"server pid {server.proc.pid} on port {server.port}; VmRSS {rss_mib(server.proc.pid):.1f} MiB")
        capacity, capacity_errors, capacity_reload, capacity_cpu = measure_capacity(
            server.port, server.proc.pid, traffic, args.capacity_seconds, args.connections, args.seed)
        rate = args.load * capacity
        log(f"capacity {capacity:.0f} requests/s ({len(capacity_errors)} errors, reload {capacity_reload}, CPU "
            f"server {capacity_cpu[0]:.0%} client {capacity_cpu[1]:.0%} of a core); soaking {args.minutes} min at "
            f"{rate:.0f} requests/s")
        recorder, rss, cpu, reloads, late, sent = soak(server.port, server.proc.pid, traffic, rate, args.minutes,
                                                       args.connections, args.seed)
        exit_code = server.stop()
    finally:
        if server.proc.poll() is None:
            server.stop()

    rows = []
    for minute in range(args.minutes):
        m = recorder.minutes.get(minute, {"latencies": [], "exchanges": [], "errors": 0, "by_kind": {}, "samples": []})
        latencies = sorted(m["latencies"])
        exchanges = sorted(m["exchanges"])
        rows.append({
            "minute": minute + 1,
            "requests": len(latencies),
            "errors": m["errors"],
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "exchange_p50_ms": round(percentile(exchanges, 0.50) * 1000, 2),
            "exchange_p99_ms": round(percentile(exchanges, 0.99) * 1000, 2),
            "rss_mib": round(rss[minute]["VmRSS"], 1),
            "rss_anon_mib": round(rss[minute]["RssAnon"], 1),
            "rss_file_mib": round(rss[minute]["RssFile"], 1),
            "server_cpu": round(cpu.get(minute, (0, 0))[0], 2),
            "client_cpu": round(cpu.get(minute, (0, 0))[1], 2),
            "reloads": sum(1 for started, *_ in reloads if recorder.began + minute * 60 <= started
                           < recorder.began + (minute + 1) * 60),
            "by_kind": m["by_kind"],
            "error_samples": m["samples"],
        })
    total_errors = sum(r["errors"] for r in rows)
    failed_reloads = [r for r in reloads if r[2] != 200]
    # Flat is judged on the anonymous memory: the file pages are the LMDB map, which grows with
    # the appended histories (and which the kernel may drop at will).
    warm = max(2, args.minutes // 4)  # the warm-up ends here (minute numbers from 1)
    rss_warm, rss_last = rows[min(warm, len(rows)) - 1]["rss_anon_mib"], rows[-1]["rss_anon_mib"]
    rss_flat = rss_last <= max(rss_warm * 1.10, rss_warm + 8)

    print(f"capacity (closed loop, {args.connections} connections, {args.capacity_seconds:.0f} s): {capacity:.0f} "
          f"requests/s (CPU: server {capacity_cpu[0]:.0%}, client {capacity_cpu[1]:.0%} of a core); soak at {args.load:.0%} = {rate:.0f} requests/s, open loop, {args.minutes} min, LMDB store")
    print(f"{'minute':>6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'xchg p50':>8} {'xchg p99':>8} "
          f"{'RSS MiB':>8} {'anon':>6} {'file':>6} {'reloads':>7} {'server CPU':>10} {'client CPU':>10}")
    for r in rows:
        print(f"{r['minute']:>6} {r['requests']:>9} {r['errors']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['exchange_p50_ms']:>8.2f} {r['exchange_p99_ms']:>8.2f} "
              f"{r['rss_mib']:>8.1f} {r['rss_anon_mib']:>6.1f} {r['rss_file_mib']:>6.1f} {r['reloads']:>7} "
              f"{r['server_cpu']:>10.0%} {r['client_cpu']:>10.0%}")
    samples = [s for r in rows for s in r["error_samples"]][:5]
    for s in samples:
        print(f"  error: {s}")
    print(f"reloads {len(reloads)} ({len(failed_reloads)} failed, slowest "
          f"{max((r[1] for r in reloads), default=0):.2f} s); requests sent > 1 s after their scheduled moment: {late} of {sent}; "
          f"server exit code after SIGTERM {exit_code}")
    if late > sent // 100:
        print(f"note: this client fell behind its schedule ({late} of {sent} requests sent over 1 s late): the p50/p99 "
              "from the schedule measure its backlog; the exchange columns are what the server took")
    goal_met = total_errors == 0 and not failed_reloads and rss_flat and exit_code == 0
    print(f"goal: 0 errors -> {total_errors} errors, {len(failed_reloads)} failed reloads; RSS flat after warm-up -> "
          f"anonymous RSS minute {warm} (end of warm-up) {rss_warm:.1f} MiB, last minute {rss_last:.1f} MiB "
          f"({'flat' if rss_flat else 'GREW'}; VmRSS {rows[warm - 1]['rss_mib']:.1f} -> {rows[-1]['rss_mib']:.1f}, the "
          f"difference the LMDB map's pages); "
          f"{'MET' if goal_met else 'MISSED'}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "minutes": args.minutes, "capacity_rps": round(capacity, 1), "capacity_errors": len(capacity_errors),
            "capacity_cpu": {"server": round(capacity_cpu[0], 2), "client": round(capacity_cpu[1], 2)},
            "load": args.load, "rate_rps": round(rate, 1), "requests_sent": sent, "store": "lmdb",
            "mix": dict(MIX), "reload_every_s": RELOAD_EVERY, "rows": rows,
            "reloads": [{"at_s": round(s - recorder.began, 1), "seconds": round(d, 3), "status": st}
                        for s, d, st, _ in reloads],
            "sent_over_1s_late": late, "server_exit_code": exit_code,
            "goal": {"errors": total_errors, "failed_reloads": len(failed_reloads),
                     "warm_up_minutes": warm, "rss_anon_warm_mib": rss_warm, "rss_anon_last_mib": rss_last,
                     "rss_flat": rss_flat,
                     "met": goal_met},
        }, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if goal_met else 1


if __name__ == "__main__":
    sys.exit(main())
