#!/usr/bin/env python3
"""Fault injection against a real `seqrec serve`: what the server promises when things break.

  kill9      kill -9 during concurrent appends (LMDB; Redis too when redis-server is installed):
             every acknowledged append is there after the restart, once, under its own user
  disk_full  LMDB on a tiny tmpfs (needs root for mount): a clean error status, the store intact,
             writable again once space returns
  redis      Redis killed, frozen (SIGSTOP) and restarted under load: 503 history_unavailable only
             while it is away, recovery without restarting seqrec, /readyz and the log follow it
  floods     1000 slow 1 MiB bodies (RSS bounded, others still served) and ~19,500 idle
             connections past the descriptor limit (/healthz answers, no accept spin)
  reload     POST /admin/reload of truncated and byte-flipped files under load: 422, the old
             model keeps serving, no request fails
  valgrind   (--long only) the CLI under `valgrind --error-exitcode=1`: convert, inspect --verify,
             recommend (a good and a bad body), similar, import, the batch export, eval, and
             refused inputs (a truncated model, a corrupt checkpoint): no invalid read or write,
             no use of uninitialised memory, no leak reported as definite

Each case prints one summary line of figures. Standard-library Python only; exit 77 when the
bundled example checkpoint is missing (nothing to serve).

usage: test_faults.py --seqrec build/seqrec --workdir DIR [--long] [--only NAME] [--seed N]
"""
import argparse
import glob
import http.client
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import (EXAMPLE, REDIS_SERVER, Failure, RedisServer, Skip, Tally, check,  # noqa: E402
                     convert_example, example_checkpoint, free_port, item_ids, stop_process)

TICKS = os.sysconf("SC_CLK_TCK")
# The errors a client sees when the server goes away under it.
GONE = (OSError, http.client.HTTPException)


def proc_status(pid):
    """VmRSS and VmHWM of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Server:
    """One `seqrec serve` process on a free port (`limit_fds`: its descriptor limit, via prlimit)."""

    def __init__(self, ctx, history, *extra, model=None, limit_fds=None, threads=2):
        self.port = free_port()
        self.log_path = os.path.join(ctx.workdir, f"serve-{self.port}.log")
        self.log = open(self.log_path, "w")
        command = [ctx.binary, "serve", "--model", model or ctx.model, "--history", history, "--port", str(self.port),
                   "--threads", str(threads), *extra]
        if limit_fds:
            command = ["prlimit", f"--nofile={limit_fds}:{limit_fds}", "--"] + command
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid  # prlimit execs the server: same process
        deadline = time.time() + 30
        while time.time() < deadline:
            check(self.proc.poll() is None, f"seqrec serve exited early:\n{self.read_log()}")
            try:
                if self.request("GET", "/healthz", timeout=2)[0] == 200:
                    return
            except GONE:
                time.sleep(0.05)
        self.proc.kill()
        raise Failure(f"seqrec serve did not come up:\n{self.read_log()}")

    def read_log(self, tail=3000):
        self.log.flush()
        with open(self.log_path) as f:
            text = f.read()
        return text[-tail:] if tail else text

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            return send(conn, method, path, body, headers)
        finally:
            conn.close()

    def metrics(self):
        status, text = self.request("GET", "/metrics")
        check(status == 200, f"/metrics: {status}")
        return text

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self):
        status = stop_process(self.proc)
        if not self.log.closed:
            self.log.close()
        return status


def send(conn, method, path, body=None, headers=None):
    """One exchange on `conn` → (status, parsed JSON or text)."""
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers=headers or {})
    res = conn.getresponse()
    payload = res.read().decode()
    if res.getheader("Content-Type", "").startswith("application/json"):
        try:
            return res.status, json.loads(payload)
        except ValueError:
            return res.status, {"unparsable": payload}
    return res.status, payload


def error_code(got):
    return got.get("error", {}).get("code") if isinstance(got, dict) else None


class Redis(RedisServer):
    """The test's redis-server (harness.RedisServer), with a data set to fill it."""

    def fill(self, db, keys, value_bytes=100):
        """`keys` string keys in `db` (pipelined): a data set that takes Redis a moment to load."""
        def resp(*words):
            return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        value = b"v" * value_bytes
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(resp(b"SELECT", str(db).encode()))
            batch = 10_000
            for start in range(0, keys, batch):
                s.sendall(b"".join(resp(b"SET", b"filler:%d" % n, value) for n in range(start, min(keys, start + batch))))
            s.sendall(resp(b"PING"))
            received = b""
            while not received.endswith(b"+PONG\r\n"):
                chunk = s.recv(1 << 20)
                check(chunk, "redis closed the connection while being filled")
                received = received[-16:] + chunk


class Context:
    def __init__(self, args, workdir):
        self.binary = os.path.abspath(args.seqrec)
        self.workdir = workdir
        self.model = os.path.join(workdir, "movielens.seqrec")
        self.long = args.long
        self.random = random.Random(args.seed)
        self.ids = item_ids()
        self.counter = 0

    def fresh_dir(self, name):
        self.counter += 1
        path = os.path.join(self.workdir, f"{name}-{self.counter}")
        os.makedirs(path)
        return path

    def key_file(self, key="fault-key"):
        path = os.path.join(self.workdir, "api-key")
        with open(path, "w") as f:
            f.write(key + "\n")
        return path


def interactions(pairs):
    """[(timestamp, item_id)] → the append body's list form."""
    return [{"item_id": item, "timestamp": ts, "rating": 4.5} for ts, item in pairs]


def stored_pairs(server, user):
    status, got = server.request("GET", f"/users/{user}/interactions")
    check(status == 200, f"GET /users/{user}/interactions: {status} {got}")
    return [(int(x["timestamp"]), str(x["item_id"])) for x in got["interactions"]]


# ---- (a) kill -9 during concurrent appends ------------------------------------------------

class AppendLoad:
    """Client threads appending to many users over keep-alive connections until the server goes
    away. Every interaction's timestamp is unique: it names the interaction."""

    def __init__(self, port, users, rng, ids, first_ts, threads=8):
        self.port, self.users, self.ids = port, users, ids
        self.sent = {}       # timestamp → (user, item, group) for everything sent
        self.groups = []     # [(thread, user, [timestamps])] in send order
        self.acked = set()   # group indexes answered 200
        self.other = []      # non-200 answers (none expected while the server lives)
        self.lock = threading.Lock()
        self.next_ts = first_ts
        self.seeds = [rng.randrange(1 << 30) for _ in range(threads)]
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(timeout=60)
            check(not t.is_alive(), "an append client hung after the server died")

    def run(self, thread):
        rng = random.Random(self.seeds[thread])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while True:
                user = rng.choice(self.users)
                with self.lock:
                    pairs = []
                    for _ in range(rng.choice((1, 1, 1, 2, 3))):  # some appends carry several interactions
                        pairs.append((self.next_ts, rng.choice(self.ids)))
                        self.next_ts += 1
                    group = len(self.groups)
                    self.groups.append((thread, user, [ts for ts, _ in pairs]))
                    for ts, item in pairs:
                        self.sent[ts] = (user, item, group)
                try:
                    status, got = send(conn, "POST", f"/users/{user}/interactions", {"user_interactions": interactions(pairs)})
                except GONE:
                    return
                with self.lock:
                    if status == 200:
                        self.acked.add(group)
                    else:
                        self.other.append((status, got))
        finally:
            conn.close()


def verify_after_restart(server, load):
    """→ (acknowledged interactions, lost, duplicated, misplaced, torn appends, out of order,
    [appends in flight at the kill, of which applied], problems)."""
    stored_at = {}  # timestamp → [(user, position)]
    for user in load.users:
        for position, (ts, item) in enumerate(stored_pairs(server, user)):
            stored_at.setdefault(ts, []).append((user, position, item))
    acknowledged = lost = duplicated = misplaced = torn = out_of_order = 0
    in_flight = [0, 0]  # appends unanswered at the kill, and how many of them were applied
    problems = []
    for ts, places in stored_at.items():
        if len(places) > 1:
            duplicated += len(places) - 1
            problems.append(f"timestamp {ts} stored {len(places)} times: {places}")
        expected = load.sent.get(ts)
        for user, _, item in places:
            if expected is None or expected[0] != user or expected[1] != item:
                misplaced += 1
                problems.append(f"timestamp {ts} under {user} item {item}, sent as {expected}")
    for group, (_, user, stamps) in enumerate(load.groups):
        present = [ts in stored_at for ts in stamps]
        if group in load.acked:
            acknowledged += len(stamps)
            missing = present.count(False)
            lost += missing
            if missing:
                problems.append(f"acknowledged append to {user} {stamps} lost {missing}")
        else:
            in_flight[0] += 1
            in_flight[1] += all(present)
            if any(present) and not all(present):
                torn += 1
                problems.append(f"unacknowledged append to {user} {stamps} half applied: {present}")
    # One client's acknowledged appends to one user stay in the order it made them.
    last_position = {}
    for group, (thread, user, stamps) in enumerate(load.groups):
        if group not in load.acked:
            continue
        for ts in stamps:
            places = stored_at.get(ts)
            if not places:
                continue
            position = places[0][1]
            if position < last_position.get((thread, user), -1):
                out_of_order += 1
                problems.append(f"{user}: timestamp {ts} stored before an earlier append of the same client")
            last_position[(thread, user)] = position
    return acknowledged, lost, duplicated, misplaced, torn, out_of_order, in_flight, problems


def kill9_trials(ctx, label, history, trials, users_per_trial=64):
    totals = dict(trials=0, acknowledged=0, lost=0, duplicated=0, misplaced=0, torn=0, out_of_order=0, in_flight=0,
                  in_flight_applied=0)
    problems = []
    server = Server(ctx, history)
    try:
        for trial in range(trials):
            users = [f"k{trial}-u{n}" for n in range(users_per_trial)]
            load = AppendLoad(server.port, users, ctx.random, ctx.ids, first_ts=(trial + 1) * 10_000_000)
            load.start()
            time.sleep(ctx.random.uniform(0.15, 1.0))
            server.kill9()  # at a random moment, appends in flight
            load.join()
            check(not load.other, f"{label}: non-200 answers before the kill: {load.other[:3]}")
            server = Server(ctx, history)
            acknowledged, lost, duplicated, misplaced, torn, out_of_order, in_flight, found = \
                verify_after_restart(server, load)
            totals["trials"] += 1
            for key, value in (("acknowledged", acknowledged), ("lost", lost), ("duplicated", duplicated),
                               ("misplaced", misplaced), ("torn", torn), ("out_of_order", out_of_order),
                               ("in_flight", in_flight[0]), ("in_flight_applied", in_flight[1])):
                totals[key] += value
            problems += [f"trial {trial}: {p}" for p in found]
    finally:
        server.stop()
    print(f"  kill9[{label}]: trials {totals['trials']}, acknowledged appends {totals['acknowledged']} "
          f"(interactions), lost {totals['lost']}, duplicated {totals['duplicated']}, under another user "
          f"{totals['misplaced']}, half-applied {totals['torn']}, out of order {totals['out_of_order']}; appends in "
          f"flight at the kill {totals['in_flight']} (applied {totals['in_flight_applied']}, the rest not at all)")
    check(totals["acknowledged"] > 0, f"{label}: no append was acknowledged")
    check(not problems, f"{label}: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))


def test_kill9(ctx):
    trials = 200 if ctx.long else 5
    kill9_trials(ctx, "lmdb", "lmdb:" + ctx.fresh_dir("kill9-lmdb"), trials)
    if not os.path.exists(REDIS_SERVER):
        print("  kill9[redis]: skipped (redis-server is not installed)")
        return
    redis = Redis(ctx.fresh_dir("kill9-redis"))
    try:
        kill9_trials(ctx, "redis", redis.url(1), trials)
    finally:
        redis.stop()


# ---- (b) LMDB on a full disk ---------------------------------------------------------------

def mount_tmpfs(path, size):
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Skip(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")


def test_disk_full(ctx):
    mount_point = ctx.fresh_dir("disk-full")
    mount_tmpfs(mount_point, "2m")
    history = "lmdb:" + os.path.join(mount_point, "db")
    server = None
    try:
        server = Server(ctx, history)
        acked = {}  # user → [(timestamp, item)]
        refused = None
        ts = 1
        for n in range(2000):
            user = f"fill{n}"
            pairs = [(ts + i, ctx.ids[(ts + i) % len(ctx.ids)]) for i in range(400)]
            ts += len(pairs)
            status, got = server.request("POST", f"/users/{user}/interactions", {"user_interactions": interactions(pairs)})
            if status == 200:
                acked[user] = pairs
                continue
            refused = (user, status, got)
            break
        check(refused is not None, "2000 appends of 400 interactions fit a 2 MiB tmpfs?")
        user, status, got = refused
        clean_json = isinstance(got, dict) and set(got) == {"error"} and "unparsable" not in got
        check(status in (500, 503, 507) and clean_json,
              f"a full disk must give a clean JSON error, got {status} {got}")
        code = error_code(got)
        message = got["error"]["message"]
        filled_users = len(acked)
        # The full disk stays answered the same way, and the process stays up.
        repeat = []
        for _ in range(3):
            pairs = [(ts + i, ctx.ids[i]) for i in range(400)]
            ts += len(pairs)
            repeat.append(server.request("POST", f"/users/{user}/interactions",
                                         {"user_interactions": interactions(pairs)})[0])
            if repeat[-1] == 200:
                acked.setdefault(user, []).extend(pairs)
        check(server.request("GET", "/healthz")[0] == 200, "the server lives on a full disk")
        # Intact: every acknowledged user reads back exactly; a refused append left nothing.
        for u, pairs in acked.items():
            check(stored_pairs(server, u) == pairs, f"{u} changed on the full disk")
        check(stored_pairs(server, user) == acked.get(user, []), f"a refused append to {user} left interactions behind")
        inline = server.request("POST", "/recommend", {"user_id": "fill0", "k": 3})[0]
        # Space comes back: first by erasing a user (LMDB reuses freed pages), then by growing the disk.
        deleted = server.request("DELETE", "/users/fill0")
        small = server.request("POST", f"/users/{user}/interactions",
                               {"user_interactions": interactions([(ts + 1, ctx.ids[1])])})
        after_delete = small[0]
        if deleted[0] == 200:
            acked.pop("fill0")
        if after_delete == 200:
            acked.setdefault(user, []).append((ts + 1, ctx.ids[1]))
        subprocess.run(["mount", "-o", "remount,size=16m", mount_point], check=True)
        pairs = [(ts + 10 + i, ctx.ids[i]) for i in range(400)]
        status_grown, got_grown = server.request("POST", "/users/after-growth/interactions",
                                                 {"user_interactions": interactions(pairs)})
        check(status_grown == 200, f"writable again once the disk has room, without a restart: {status_grown} {got_grown}")
        acked["after-growth"] = pairs
        server.stop()
        server = Server(ctx, history)  # the store reopens with everything acknowledged in it
        for u, expected in acked.items():
            check(stored_pairs(server, u) == expected, f"{u} after reopening the store")
        print(f"  disk_full: 2 MiB tmpfs; appends of 400 interactions acknowledged for {filled_users} users before it filled; full disk answered {status} "
              f"{code} (clean JSON: {clean_json}; repeated: {repeat}) \"{message[:90]}\"; user_id recommend {inline}; "
              f"DELETE on the full disk {deleted[0]}; small append after it {after_delete}; after growing the "
              f"tmpfs {status_grown}; store intact after reopen: yes")
    finally:
        if server:
            server.stop()
        subprocess.run(["umount", mount_point], capture_output=True)


# ---- (c) Redis killed, frozen, restarted under load -----------------------------------------

class StoreLoad:
    """Store-dependent traffic (appends, reads, user_id recommends) plus inline recommends and a
    /readyz poller, each request recorded as (start, end, kind, status, error code)."""

    def __init__(self, port, ids, store_threads=3):
        self.port, self.ids = port, ids
        self.records = []
        self.messages = []  # the answers that were neither 200 nor 503
        self.ready = []  # (time, status)
        self.acked = {}  # user → [(timestamp, item)] acknowledged
        self.refused_appends = {}  # user → [(timestamp, item)] answered 503
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.store_client, args=(n,), daemon=True) for n in range(store_threads)]
        self.threads.append(threading.Thread(target=self.inline_client, daemon=True))
        self.threads.append(threading.Thread(target=self.ready_poller, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(timeout=60)
            check(not t.is_alive(), "a load client hung")

    def timed(self, conn_box, kind, method, path, body=None):
        start = time.time()
        try:
            status, got = send(conn_box[0], method, path, body)
        except GONE as e:
            conn_box[0].close()
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            status, got = "connection", {"error": {"code": type(e).__name__}}
        with self.lock:
            self.records.append((start, time.time(), kind, status, error_code(got)))
            if status not in (200, 503):
                self.messages.append((round(start, 2), kind, status, json.dumps(got)[:300]))
        return status, got

    def store_client(self, n):
        conn = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)]
        ts = (n + 1) * 1_000_000
        user = f"redis-u{n}"
        while not self.done.is_set():
            ts += 1
            pair = (ts, self.ids[ts % len(self.ids)])
            status, _ = self.timed(conn, "append", "POST", f"/users/{user}/interactions",
                                   {"user_interactions": interactions([pair])})
            with self.lock:
                (self.acked if status == 200 else self.refused_appends).setdefault(user, []).append(pair)
            status, got = self.timed(conn, "get", "GET", f"/users/{user}/interactions")
            if status == 200:
                # A reply meant for another request (a desynchronised connection) would show here.
                stored = [(int(x["timestamp"]), str(x["item_id"])) for x in got["interactions"]]
                with self.lock:
                    expected = set(self.acked.get(user, []))
                    possible = expected | set(self.refused_appends.get(user, []))
                if got.get("user_id") != user or not expected <= set(stored) or not set(stored) <= possible:
                    with self.lock:
                        self.records.append((time.time(), time.time(), "get-mismatch", "mismatch", user))
            self.timed(conn, "recommend_uid", "POST", "/recommend", {"user_id": user, "k": 5})
        conn[0].close()

    def inline_client(self):
        conn = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)]
        body = {"user_interactions": interactions([(i, self.ids[i]) for i in range(10)]), "k": 5}
        while not self.done.is_set():
            self.timed(conn, "recommend_inline", "POST", "/recommend", body)
            time.sleep(0.01)
        conn[0].close()

    def ready_poller(self):
        while not self.done.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                status, _ = send(conn, "GET", "/readyz")
            except GONE:
                status = "connection"
            finally:
                conn.close()
            with self.lock:
                self.ready.append((time.time(), status))
            time.sleep(0.1)


def test_redis(ctx):
    redis = Redis(ctx.fresh_dir("redis-outage"), durable=True)
    # Data of its own (another database) makes a restarted Redis spend a moment loading it,
    # as a production one does.
    redis.fill(db=3, keys=200_000)
    server = Server(ctx, redis.url(0))
    load = StoreLoad(server.port, ctx.ids)
    outages = []  # (kind, down at, back at)
    try:
        load.start()
        time.sleep(2)
        down = time.time()
        redis.kill9()
        time.sleep(3)
        redis.start()
        outages.append(("killed", down, time.time()))
        time.sleep(3)
        down = time.time()
        os.kill(redis.proc.pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(redis.proc.pid, signal.SIGCONT)
        outages.append(("frozen", down, time.time()))
        time.sleep(4)
        load.stop()
        # Acknowledged appends are all there (Redis syncs its AOF before answering).
        lost = 0
        for user, pairs in load.acked.items():
            stored = set(stored_pairs(server, user))
            lost += sum(1 for p in pairs if p not in stored)
        applied_anyway = 0
        for user, pairs in load.refused_appends.items():
            stored = set(stored_pairs(server, user))
            applied_anyway += sum(1 for p in pairs if p in stored)
        log = server.read_log(tail=None)
    finally:
        load.done.set()
        server.stop()
        redis.stop()

    recovery = 1.5  # seconds after Redis is back within which a request may still fail (1 s command timeout)
    def during_outage(start, end):
        return any(start < back + recovery and end > went for _, went, back in outages)

    bad, misplaced_503, store_503, mismatches = [], [], {kind: 0 for kind, _, _ in outages}, 0
    counts = {}
    for start, end, kind, status, code in load.records:
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "get-mismatch":
            mismatches += 1
            bad.append((kind, "mismatch", code))
        elif kind == "recommend_inline":
            if status != 200:
                bad.append((kind, status, code, round(start - load.records[0][0], 2)))
        elif status == 200:
            continue
        elif status == 503 and code == "history_unavailable":
            if not during_outage(start, end):
                misplaced_503.append((kind, round(start - outages[0][1], 2)))
            for outage, went, back in outages:
                if start < back + recovery and end > went:
                    store_503[outage] += 1
        else:
            bad.append((kind, status, code))
    slowest = max((end - start, kind) for start, end, kind, _, _ in load.records if kind != "get-mismatch")
    ready_down = {kind: sum(1 for t, s in load.ready if went <= t <= back and s == 503) for kind, went, back in outages}
    last_ready = load.ready[-1][1] if load.ready else None
    unreachable = log.count(" unreachable (")
    reachable = log.count("reachable again")
    print(f"  redis: requests {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
          f"503 history_unavailable while killed {store_503['killed']}, while frozen {store_503['frozen']}, "
          f"outside an outage {len(misplaced_503)}; mismatched reads {mismatches}; other failures {len(bad)} "
          f"({', '.join(sorted(set(f'{k} {st} {c}' for k, st, c, *_ in bad)))}); slowest request {slowest[0]:.2f} s "
          f"({slowest[1]}); /readyz 503 while killed "
          f"{ready_down['killed']}, while frozen {ready_down['frozen']}, last {last_ready}; log 'unreachable' "
          f"{unreachable}x, 'reachable again' {reachable}x; acknowledged appends lost {lost}; 503-answered appends "
          f"applied anyway {applied_anyway}")
    timeline = ", ".join(f"{kind} {went - outages[0][1]:.2f}..{back - outages[0][1]:.2f} s" for kind, went, back in outages)
    log_lines = [l.split("history: ", 1)[-1] for l in log.splitlines() if "reachable" in l]
    check_all([
        (not bad, f"only 200 or 503 history_unavailable (inline always 200), no mismatched reads: {bad[:3]}; "
                  f"outages {timeline}; first answers: " +
                  "; ".join(f"{t - outages[0][1]:.2f} s {kind} {status} {text}" for t, kind, status, text in load.messages[:2])),
        (not misplaced_503, f"503 only while Redis is away: {misplaced_503[:5]}"),
        (store_503["killed"] > 0 and store_503["frozen"] > 0, f"each outage was noticed: {store_503}"),
        (ready_down["killed"] > 0 and ready_down["frozen"] > 0 and last_ready == 200,
         f"/readyz follows Redis: {ready_down}, last {last_ready}"),
        (lost == 0, f"{lost} acknowledged appends lost"),
        (unreachable == 2 and reachable == 2,
         f"the log says it once per outage (killed, frozen), got 'unreachable' {unreachable}x and 'reachable again' "
         f"{reachable}x: " + " / ".join(log_lines[:6])),
    ])


def check_all(conditions):
    """Every failed condition reported at once (one case may find several things)."""
    failed = [message for ok, message in conditions if not ok]
    check(not failed, " | ".join(failed))


# ---- (d) connection and body floods ----------------------------------------------------------

class RssSampler:
    def __init__(self, pid, every=0.05):
        self.pid, self.every = pid, every
        self.samples = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.is_set():
            try:
                self.samples.append((time.time(), proc_status(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            time.sleep(self.every)

    def stop(self):
        self.done.set()
        self.thread.join()

    def peak(self):
        return max(rss for _, rss in self.samples)


def fresh_answers(server, ids):
    """/healthz and a small /recommend from new connections → their statuses."""
    try:
        health = server.request("GET", "/healthz", timeout=10)[0]
    except GONE as e:
        health = type(e).__name__
    try:
        rec = server.request("POST", "/recommend", {"user_interactions": interactions([(1, ids[0]), (2, ids[1])]),
                                                    "k": 3}, timeout=10)[0]
    except GONE as e:
        rec = type(e).__name__
    return health, rec


def body_flood(ctx):
    """1000 connections each sending 1,000,000 bytes of a 1 MiB body, then stalling."""
    server = Server(ctx, "memory")
    sampler = None
    sockets = []
    try:
        warm = [server.request("POST", "/recommend", {"user_interactions": interactions([(1, ctx.ids[i])])})[0]
                for i in range(20)]
        check(set(warm) == {200}, f"warm-up: {warm}")
        time.sleep(0.5)
        start_rss = proc_status(server.pid)["VmRSS"]
        sampler = RssSampler(server.pid)
        header = (b"POST /recommend HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1048576\r\n\r\n")
        target = len(header) + 1_000_000
        chunk = b" " * 65536
        selector = selectors.DefaultSelector()
        progress = {}
        answered = {}
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.port))
            sockets.append(s)
            progress[s] = 0
            selector.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ)
        deadline = time.time() + 60
        pending = len(sockets)
        while pending and time.time() < deadline:
            for key, events in selector.select(timeout=1):
                s = key.fileobj
                if events & selectors.EVENT_READ:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    answered[s] = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
                    selector.unregister(s)
                    pending -= 1
                    continue
                sent = progress[s]
                data = header[sent:] if sent < len(header) else chunk[: target - sent]
                try:
                    progress[s] += s.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    answered[s] = "reset"
                    selector.unregister(s)
                    pending -= 1
                    continue
                if progress[s] >= target:
                    selector.modify(s, selectors.EVENT_READ)  # stalled: wait only for an answer now
            if all(progress[s] >= target for s in sockets if s not in answered) and time.time() > deadline - 55:
                break
        stalled = sum(1 for s in sockets if s not in answered and progress[s] >= target)
        held_rss = proc_status(server.pid)["VmRSS"]
        during = fresh_answers(server, ctx.ids)
        time.sleep(2)
        during_later = fresh_answers(server, ctx.ids)
        for s in sockets:
            s.close()
        sockets.clear()
        # RSS falls back once the bodies are gone (malloc_trim runs within a second or two).
        settle_deadline = time.time() + 10
        while time.time() < settle_deadline:
            time.sleep(0.5)
            end_rss = proc_status(server.pid)["VmRSS"]
            if end_rss <= start_rss + 16:
                break
        sampler.stop()
        status = proc_status(server.pid)
        text = server.metrics()
        refused_bodies = metric(text, "seqrec_refused_bodies_total")
        after = fresh_answers(server, ctx.ids)
        refused_status = {}
        for s, status_text in answered.items():
            refused_status[status_text] = refused_status.get(status_text, 0) + 1
        print(f"  floods[bodies]: 1000 connections x 1,000,000 of 1,048,576 bytes: stalled mid-body {stalled}, "
              f"answered {refused_status}; seqrec_refused_bodies_total {refused_bodies:.0f}; VmRSS start "
              f"{start_rss:.1f} MiB, held {held_rss:.1f}, peak sampled {sampler.peak():.1f}, VmHWM "
              f"{status['VmHWM']:.1f}, after {end_rss:.1f}; fresh /healthz,/recommend during {during}, 2 s later "
              f"{during_later}, after {after}")
        check_all([
            (status["VmHWM"] <= start_rss + 64 + 64,
             f"RSS bounded by the 64 MiB body budget (+64 MiB slack): peak {status['VmHWM']:.1f} MiB from {start_rss:.1f}"),
            (end_rss <= start_rss + 16, f"RSS back near the start: {end_rss:.1f} MiB from {start_rss:.1f}"),
            (during[0] == 200 and during_later[0] == 200, f"/healthz answered during the flood: {during} {during_later}"),
            (after == (200, 200), f"served normally after the flood: {after}"),
            (during[1] == 200 and during_later[1] == 200,
             f"a small /recommend from a fresh connection is served while slow 1 MiB bodies hold the body budget "
             f"(--max-buffered-body-bytes): got {during[1]} then {during_later[1]}"),
        ])
    finally:
        for s in sockets:
            s.close()
        if sampler:
            sampler.stop()
        server.stop()


def open_idle(port, count):
    """`count` connections that send nothing (non-blocking connects; those beyond the listen
    backlog keep retrying their SYN) → the sockets."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    return sockets


class HealthPoller:
    """GET /healthz from a fresh connection every 0.25 s → [(seconds taken, status or error)]."""

    def __init__(self, server):
        self.server = server
        self.results = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.is_set():
            started = time.time()
            try:
                status, got = self.server.request("GET", "/healthz", timeout=5)
                if status != 200:
                    status = f"{status} {json.dumps(got)[:90]}"
            except GONE as e:
                status = type(e).__name__
            self.results.append((round(time.time() - started, 2), status))
            time.sleep(0.25)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.results


def idle_flood(ctx, label, count, *extra, limit_fds):
    """`count` connections that never send a byte; /healthz polled from fresh connections throughout."""
    server = Server(ctx, "memory", *extra, limit_fds=limit_fds)
    sockets = []
    poller = None
    try:
        poller = HealthPoller(server)
        cpu_before, started = cpu_seconds(server.pid), time.time()
        sockets = open_idle(server.port, count)
        opened = time.time() - started
        cpu_opening = (cpu_seconds(server.pid) - cpu_before) / opened
        # The flood sits there: the server must idle, not spin on accept().
        fds = []
        cpu_start, window_start = cpu_seconds(server.pid), time.time()
        while time.time() - window_start < 6:
            fds.append(open_fds(server.pid))
            time.sleep(0.25)
        cpu_held = (cpu_seconds(server.pid) - cpu_start) / (time.time() - window_start)
        health = poller.stop()
        held_fds = max(fds)
        for s in sockets:
            s.close()
        sockets.clear()
        time.sleep(1)
        text = server.metrics()
        accept_errors = metric(text, "seqrec_accept_errors_total")
        refused = metric(text, "seqrec_refused_connections_total")
        evicted = metric(text, "seqrec_evicted_connections_total")
        deadline = time.time() + 40  # idle sessions end at the latest with --read-timeout
        while time.time() < deadline and metric(server.metrics(), "seqrec_open_connections") > 1:
            time.sleep(0.5)
        open_after = metric(server.metrics(), "seqrec_open_connections")
        after = fresh_answers(server, ctx.ids)
        ok = sum(1 for _, s in health if s == 200)
        longest_outage = run = 0
        for _, status in health:
            run = 0 if status == 200 else run + 1
            longest_outage = max(longest_outage, run)
        print(f"  floods[{label}]: {count} idle connections (server fd limit {limit_fds}) opened in {opened:.1f} s; "
              f"server fds up to {held_fds}; /healthz from fresh connections every 0.25 s: {ok}/{len(health)} "
              f"answered 200 (slowest {max(t for t, _ in health)} s; longest run of failures {longest_outage}: "
              f"{sorted(set(str(s) for _, s in health if s != 200))}); server CPU {cpu_opening * 100:.1f}% of a core "
              f"while the flood arrived, {cpu_held * 100:.1f}% while it sat; seqrec_accept_errors_total "
              f"{accept_errors:.0f}, seqrec_refused_connections_total {refused:.0f}, seqrec_evicted_connections_total "
              f"{evicted:.0f}; open connections after "
              f"{open_after:.0f}; fresh /healthz,/recommend after {after}; log: "
              + "; ".join(l.split(": ", 1)[1][:100] for l in server.read_log(tail=None).splitlines()
                          if "accept failed" in l or "connection refused" in l)[:300])
        check_all([
            (server.proc.poll() is None, "the server survives the flood"),
            # Within the configured caps every probe is answered 200. Past the descriptor limit
            # (--max-connections set above what `ulimit -n` allows) the server closes the oldest
            # connections that never sent a request to make room: the probes still get sessions.
            (ok == len(health),
             f"{label}: /healthz keeps answering through the flood: {ok}/{len(health)}, longest "
             f"run of failures {longest_outage} ({longest_outage * 0.25:.2f} s+): "
             f"{sorted(set(str(s) for _, s in health if s != 200))}"),
            (cpu_held < 0.5, f"no accept spin: server CPU {cpu_held * 100:.0f}% of a core while flooded"),
            (after == (200, 200), f"served normally after the flood: {after}"),
        ])
        return accept_errors, refused, evicted
    finally:
        if poller:
            poller.stop()
        for s in sockets:
            s.close()
        server.stop()


def test_floods(ctx):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    count = min(19_500, hard - 200) if hard != resource.RLIM_INFINITY else 19_500
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # The server's descriptors well below the flood (when this process may hold fewer sockets
    # than 19,500, the flood and the server's limit shrink together).
    server_fds = min(4096, max(512, count // 4))

    def past_the_fd_limit():
        # --max-connections above what the descriptors allow: accept() itself fails with EMFILE.
        accept_errors, _, evicted = idle_flood(ctx, "idle, past the fd limit", count, "--max-connections", "100000",
                                      limit_fds=server_fds)
        check(accept_errors and accept_errors > 0, "seqrec_accept_errors_total counts accept() at the descriptor limit")
        check(evicted and evicted > 0,
              "seqrec_evicted_connections_total counts the silent connections closed at the descriptor limit")

    # The three floods are independent: each runs, and every failure is reported.
    failures = []
    for flood in (lambda: body_flood(ctx),
                  lambda: idle_flood(ctx, "idle, default cap", count, limit_fds=server_fds),  # the cap refuses first
                  past_the_fd_limit):
        try:
            flood()
        except Failure as e:
            failures.append(str(e))
    check(not failures, " | ".join(failures))


# ---- (e) reload of damaged files under load ---------------------------------------------------

def damaged_copies(model_path, directory, rng, flips):
    """Truncated and byte-flipped copies of the model → [(name, path)]."""
    with open(model_path, "rb") as f:
        data = f.read()
    header_length = int.from_bytes(data[16:24], "little")
    out = []
    for cut in sorted({0, 7, 31, 32 + header_length // 2, 32 + header_length, len(data) // 4, len(data) // 2,
                       len(data) - 1}):
        path = os.path.join(directory, f"truncated-{cut}.seqrec")
        with open(path, "wb") as f:
            f.write(data[:cut])
        out.append((f"truncated at {cut}", path))
    # Flips in the prefix and header (always checked) and at random places in the data.
    offsets = [0, 9, 13, 17, 25, 32 + header_length // 3] + [rng.randrange(len(data)) for _ in range(flips)]
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << rng.randrange(8)
        path = os.path.join(directory, f"flipped-{offset}.seqrec")
        with open(path, "wb") as f:
            f.write(flipped)
        out.append((f"byte {offset} flipped", path))
    return out


def test_reload(ctx):
    models = ctx.fresh_dir("reload-models")
    good = os.path.join(models, "good.seqrec")
    shutil.copy(ctx.model, good)
    served = os.path.join(models, "served.seqrec")  # the --model file, damaged in place for the empty-body reload
    shutil.copy(ctx.model, served)
    damaged = damaged_copies(ctx.model, models, ctx.random, flips=200 if ctx.long else 30)
    admin = {"X-API-Key": "fault-key"}
    server = Server(ctx, "memory", "--api-key-file", ctx.key_file(), "--model-dir", models, model=served)
    bodies = [{"user_interactions": interactions([(i, ctx.ids[(7 * i + n) % 500]) for i in range(5 + n)]), "k": 10}
              for n in range(4)]
    expected = [server.request("POST", "/recommend", b) for b in bodies]
    check(all(s == 200 for s, _ in expected), f"baseline answers: {expected}")
    failures, changed, count = [], [], [0]
    done = threading.Event()

    def client(n):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while not done.is_set():
            i = (n + count[0]) % len(bodies)
            try:
                status, got = send(conn, "POST", "/recommend", bodies[i])
            except GONE as e:
                failures.append(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                continue
            count[0] += 1
            if status != 200:
                failures.append((status, got))
            elif got != expected[i][1]:
                changed.append(i)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    refused, accepted_harmless, wrong = 0, [], []
    try:
        for t in threads:
            t.start()
        good_reloads = []
        for n, (name, path) in enumerate(damaged):
            if n % 4 == 0:  # successful swaps in between: those must not fail a request either
                good_reloads.append(server.request("POST", "/admin/reload", {"path": good}, admin)[0])
            status, got = server.request("POST", "/admin/reload", {"path": path}, admin)
            if status == 422 and error_code(got) == "reload_failed":
                refused += 1
            elif status == 200:
                # A flip in alignment padding carries no meaning: the file may load, and must then
                # answer exactly as the good one (the clients would see any difference).
                accepted_harmless.append(name)
                status, got = server.request("POST", "/admin/reload", {"path": good}, admin)
                check(status == 200, f"reloading the good file: {status} {got}")
            else:
                wrong.append((name, status, got))
        # The served file damaged in place: the empty-body reload (which reloads the file being
        # served, the last one loaded) and SIGHUP refuse it.
        status, got = server.request("POST", "/admin/reload", {"path": served}, admin)
        check(status == 200, f"reloading {served}: {status} {got}")
        with open(ctx.model, "rb") as f:
            data = f.read()
        with open(served + ".tmp", "wb") as f:
            f.write(data[: len(data) // 3])
        os.replace(served + ".tmp", served)
        status, got = server.request("POST", "/admin/reload", "", admin)
        same_file = (status, error_code(got))
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        shutil.copy(ctx.model, served)
        status_back, _ = server.request("POST", "/admin/reload", "", admin)
        time.sleep(0.3)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
        log = server.read_log(tail=None)
        server.stop()
    truncations = sum(1 for name, _ in damaged if name.startswith("truncated"))
    print(f"  reload: {len(damaged)} damaged files ({truncations} truncated, {len(damaged) - truncations} "
          f"byte-flipped): 422 reload_failed {refused}, loaded but harmless (padding) {len(accepted_harmless)} {accepted_harmless}, other "
          f"{len(wrong)}; damaged --model file: empty-body reload {same_file}, SIGHUP refused "
          f"{'reload refused' in log}; /recommend requests {count[0]}, failed {len(failures)}, answers changed "
          f"{len(changed)}; good file reloaded in between {good_reloads.count(200)}/{len(good_reloads)} and after "
          f"{status_back}")
    check(not wrong, f"damaged files must be refused with 422: {wrong[:3]}")
    check(same_file == (422, "reload_failed"), f"a damaged --model file refused: {same_file}")
    check("reload refused" in log, "SIGHUP with a damaged file is refused (and logged)")
    check(status_back == 200 and set(good_reloads) == {200}, f"the good file reloads: {good_reloads} {status_back}")
    check(not failures, f"zero failed requests during the reloads: {failures[:3]}")
    check(not changed, f"the old model keeps serving: {len(changed)} answers changed")
    check(count[0] > 50, f"the load ran ({count[0]} requests)")


def test_valgrind(ctx):
    if not ctx.long:
        raise Skip("--long only (valgrind runs the CLI ~50x slower)")
    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise Skip("valgrind is not installed (apt-get install valgrind)")
    work = os.path.join(ctx.workdir, "valgrind")
    os.makedirs(work, exist_ok=True)
    checkpoint = sorted(glob.glob(os.path.join(EXAMPLE, "SASRec.*.pth")))[0]
    truncated = os.path.join(work, "truncated.seqrec")
    with open(ctx.model, "rb") as src, open(truncated, "wb") as out:
        out.write(src.read()[: os.path.getsize(ctx.model) // 3])
    corrupt = os.path.join(work, "corrupt.pth")
    data = bytearray(open(checkpoint, "rb").read())
    for i in range(0, len(data), max(1, len(data) // 64)):
        data[i] ^= 0x5A
    with open(corrupt, "wb") as f:
        f.write(data)
    ids = item_ids()
    body = json.dumps({"user_interactions": [{"item_id": i, "timestamp": n} for n, i in enumerate(ids[:30])], "k": 5})
    ratings = os.path.join(work, "ratings.csv")
    with open(os.path.join(EXAMPLE, "ratings.csv")) as src, open(ratings, "w") as out:
        for n, line in enumerate(src):
            if n > 3000:
                break
            out.write(line)
    # The memory store: LMDB's 64 GiB map is more address space than valgrind will map. The
    # import still reads the whole file; the export walks a user list through the engine.
    store = "memory"
    users = os.path.join(work, "users.txt")
    with open(users, "w") as f:
        f.write("".join(f"u{n}\n" for n in range(200)))
    runs = [  # (name, argv, stdin, expected exit: 0 or "nonzero")
        ("convert", ["convert", "--from", "pmixer", checkpoint, "--item-ids", os.path.join(EXAMPLE, "item_ids.txt"),
                     "--out", os.path.join(work, "m.seqrec")], None, 0),
        ("inspect --verify", ["inspect", "--verify", ctx.model], None, 0),
        ("recommend", ["recommend", "--model", ctx.model], body, 0),
        ("recommend, bad body", ["recommend", "--model", ctx.model], '{"user_interactions": [{"item_id": 5}], "k": 0}', "nonzero"),
        ("similar", ["similar", "--model", ctx.model, "--item", ids[0], "--k", "5"], None, 0),
        ("import", ["import", "--history", store, "--interactions", ratings], None, 0),
        ("batch export", ["recommend", "--model", ctx.model, "--history", store, "--users", users,
                          "--out", os.path.join(work, "recs.jsonl"), "--threads", "2", "--batch", "16"], None, 0),
        ("eval", ["eval", "--model", ctx.model, "--interactions", ratings, "--threads", "1"], None, 0),
        ("truncated model", ["inspect", truncated], None, "nonzero"),
        ("corrupt checkpoint", ["convert", "--from", "pmixer", corrupt, "--out", os.path.join(work, "x.seqrec")], None,
         "nonzero"),
    ]
    results = []
    for name, argv, stdin, expected in runs:
        started = time.time()
        proc = subprocess.run([valgrind, "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                               "-q", ctx.binary, *argv], input=stdin, capture_output=True, text=True, timeout=1800)
        reports = [line for line in proc.stderr.splitlines() if line.startswith("==")]
        results.append((name, proc.returncode, len(reports), time.time() - started))
        check(proc.returncode != 99 and not reports, f"valgrind, {name}: exit {proc.returncode}:\n" + "\n".join(reports[:30]))
        check(proc.returncode == 0 if expected == 0 else proc.returncode not in (0, 99),
              f"valgrind, {name}: exit {proc.returncode}, expected {expected}: {proc.stderr[-500:]}")
    print("  valgrind: " + "; ".join(f"{n} exit {rc}, {r} reports, {t:.0f} s" for n, rc, r, t in results))


TESTS = [("kill9", test_kill9), ("disk_full", test_disk_full), ("redis", test_redis), ("floods", test_floods),
         ("reload", test_reload), ("valgrind", test_valgrind)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--long", action="store_true", help="the thorough figures (200 kill -9 trials, ...)")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = int(time.time()) % 100_000
    if not example_checkpoint():
        print("SKIPPED: no bundled example checkpoint")
        return 77
    workdir = os.path.abspath(args.workdir)
    for line in open("/proc/mounts"):  # a tmpfs left mounted by an interrupted run
        mount_point = line.split()[1]
        if mount_point.startswith(workdir + "/"):
            subprocess.run(["umount", mount_point], capture_output=True)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    failed_convert = convert_example(args.seqrec, os.path.join(workdir, "movielens.seqrec"))
    if failed_convert:
        print("FAIL convert:", failed_convert.stderr)
        return 1
    print(f"seed {args.seed}{' (long)' if args.long else ''}")
    ctx = Context(args, workdir)
    tally = Tally(timed=True)
    for name, test in TESTS:
        if not args.only or args.only in name:
            tally.run(name, test, ctx)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
