#!/usr/bin/env python3
"""The Redis Cluster history store through a failover, against real `seqrec serve` replicas.

Starts a Redis Cluster of 6 `redis-server` processes (3 masters, 1 replica each) on loopback
ports, two `seqrec serve` replicas on `--history redis-cluster://...`, and loads them from a few
threads: appends for many users through both replicas and user_id recommends. Mid-load one
master is killed with SIGKILL; the cluster promotes its replica. Then checks:
  - every acknowledged (200) append is stored (the store WAITs for a replica after each write:
    redis_cluster_store.cc "WHAT A FAILOVER MAY LOSE"; nothing is lost unless a WAIT timed out,
    which the server logs as "not yet on a replica");
  - every answer that is not a 200 is a 503 history_unavailable;
  - both replicas answer 200 again after the failover, without a restart, and /readyz is 200;
  - the item counts (cold start) are still read and served, and agree with the histories.
Prints a one-line summary. Exit 77 (skipped) when redis-server or redis-cli is missing.
Standard library only.

    test_redis_cluster.py --seqrec build/cli/seqrec --workdir /tmp/cluster
"""
import argparse
import glob
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import (EXAMPLE, REDIS_SERVER, Failure, RedisServer, check, free_port, item_ids,  # noqa: E402
                     stop_process)

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
SKIP = 77
GONE = (ConnectionError, socket.timeout, http.client.HTTPException, OSError)


def cli(port, *args, timeout=10):
    proc = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


class Cluster:
    """6 redis-server processes, cluster-enabled, no persistence, 2 s node timeout."""

    def __init__(self, workdir, nodes=6):
        self.workdir = workdir
        self.ports, self.procs = [], {}
        try:
            # Each node through harness.RedisServer: a free port, started again elsewhere when
            # another process takes it first, and up only when the PONG is its own.
            for i in range(nodes):
                node_dir = os.path.join(workdir, f"node-{i}")
                os.makedirs(node_dir)
                node = RedisServer(node_dir, extra_args=[
                    "--cluster-port", str(free_port()), "--cluster-enabled", "yes",
                    "--cluster-config-file", os.path.join(node_dir, "nodes.conf"), "--cluster-node-timeout", "2000",
                    "--logfile", os.path.join(node_dir, "redis.log")])
                self.procs[node.port] = node.proc
                self.ports.append(node.port)
            out = cli(self.ports[0], "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                      "--cluster-replicas", "1", "--cluster-yes", timeout=60)
            check("All 16384 slots covered" in out, f"redis-cli --cluster create:\n{out}")
            self.wait(self.healthy, 30, "the cluster did not become ok with a replica per master")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def wait(condition, seconds, message):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise Failure(message)

    def live(self):
        return [p for p in self.ports if self.procs[p].poll() is None]

    def state_ok(self):
        return all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in self.live())

    def masters(self):
        """port → (node id, replica ports) as CLUSTER NODES tells it (live masters only)."""
        lines = cli(self.live()[0], "CLUSTER", "NODES").splitlines()
        nodes = [line.split() for line in lines if line.strip()]
        by_id = {n[0]: n for n in nodes}
        masters = {}
        for n in nodes:
            if "master" in n[2] and "fail" not in n[2] and len(n) > 8:
                masters[int(n[1].split("@")[0].rsplit(":", 1)[1])] = (n[0], [])
        for n in nodes:
            if "slave" in n[2] and "fail" not in n[2] and n[3] in by_id:
                master = int(by_id[n[3]][1].split("@")[0].rsplit(":", 1)[1])
                if master in masters:
                    masters[master][1].append(int(n[1].split("@")[0].rsplit(":", 1)[1]))
        return masters

    def healthy(self):
        if not self.state_ok():
            return False
        masters = self.masters()
        if len(masters) != 3 or any(len(r) != 1 for _, r in masters.values()):
            return False
        # Every replica in sync (a WAIT can succeed) and listed by CLUSTER SLOTS.
        for _, replicas in masters.values():
            if "master_link_status:up" not in cli(replicas[0], "INFO", "replication"):
                return False
        return True

    def kill9(self, port):
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Server:
    def __init__(self, seqrec, model, history, workdir):
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"serve-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([seqrec, "serve", "--model", model, "--history", history, "--port", str(self.port),
                                      "--threads", "2"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            check(self.proc.poll() is None, f"seqrec serve exited early:\n{self.read_log()}")
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except GONE:
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise Failure(f"seqrec serve did not become ready:\n{self.read_log()}")

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def request(self, method, path, body=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            return send(conn, method, path, body)
        finally:
            conn.close()

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def send(conn, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    raw = response.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return response.status, parsed


def error_code(got):
    if isinstance(got, dict):
        error = got.get("error")
        if isinstance(error, dict):
            return error.get("code")
        if isinstance(error, str):
            return error
    return None


class Load:
    """Threads appending one interaction at a time for their own users, through both servers in
    turn, with a user_id recommend every few appends."""

    def __init__(self, servers, ids, threads=4, users_per_thread=40):
        self.servers, self.ids = servers, ids
        self.hot = ids[0]  # every third append: the most popular item by far
        self.acked = {}    # user → [(timestamp, item)] answered 200
        self.records = []  # (time, kind, status, code)
        self.messages = []  # (time, kind, error message) of the answers that were not 200
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.next_ts = 1_700_000_000
        self.threads = [threading.Thread(target=self.run, args=(t, users_per_thread)) for t in range(threads)]

    def timestamp(self):
        with self.lock:
            self.next_ts += 1
            return self.next_ts

    def run(self, t, users):
        conns = [None] * len(self.servers)
        n = 0
        while not self.done.is_set():
            n += 1
            which = n % len(self.servers)
            user = f"t{t}-u{n % users}"
            item = self.hot if n % 3 == 0 else self.ids[1 + (n * 7 + t) % 300]
            pair = (self.timestamp(), item)
            for kind, method, path, body in (
                    ("append", "POST", f"/users/{user}/interactions",
                     {"user_interactions": [{"item_id": item, "timestamp": pair[0], "rating": 4.5}]}),
                    ("recommend", "POST", "/recommend", {"user_id": user, "k": 5}) if n % 4 == 0 else (None,) * 4):
                if kind is None:
                    continue
                started = time.time()
                try:
                    if conns[which] is None:
                        conns[which] = http.client.HTTPConnection("127.0.0.1", self.servers[which].port, timeout=30)
                    status, got = send(conns[which], method, path, body)
                    code = error_code(got) if status != 200 else None
                    if status != 200 and isinstance(got, dict) and isinstance(got.get("error"), dict):
                        message = got["error"].get("message")
                    else:
                        message = None
                except GONE as e:
                    conns[which] = None
                    status, code, message = type(e).__name__, None, None
                with self.lock:
                    self.records.append((started, kind, status, code))
                    if status != 200:
                        self.messages.append((started, kind, message))
                    if kind == "append" and status == 200:
                        self.acked.setdefault(user, []).append(pair)
            time.sleep(0.002)

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join()


def stored(server, user):
    status, got = server.request("GET", f"/users/{user}/interactions")
    check(status == 200, f"GET /users/{user}/interactions: {status} {got}")
    return [(int(x["timestamp"]), str(x["item_id"])) for x in got["interactions"]]


def stored_counts(cluster):
    """item → count summed over the 16 count shards, read with redis-cli in cluster mode."""
    counts = {}
    port = cluster.live()[0]
    for shard in range(16):
        out = cli(port, "-c", "--no-raw", "HGETALL", f"seqrec:item_counts:{{{shard:02d}}}").splitlines()
        values = [m.group(1) for m in map(re.compile(r'^\s*\d+\) "(.*)"$').match, out) if m]
        for item, n in zip(values[0::2], values[1::2]):
            counts[item] = counts.get(item, 0) + int(n)
    return counts


def run(args):
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    checkpoint = sorted(glob.glob(os.path.join(EXAMPLE, "SASRec.*.pth")))
    if not checkpoint:
        print("SKIPPED: no bundled example checkpoint")
        return SKIP
    model = os.path.join(args.workdir, "movielens.seqrec")
    proc = subprocess.run([args.seqrec, "convert", "--from", "pmixer", checkpoint[0], "--item-ids",
                           os.path.join(EXAMPLE, "item_ids.txt"), "--rating-threshold", "3.5", "--out", model],
                          capture_output=True, text=True)
    check(proc.returncode == 0, f"convert: {proc.stderr}")
    ids = item_ids()

    cluster = Cluster(args.workdir)
    servers = []
    try:
        masters = cluster.masters()
        seeds = ",".join(f"127.0.0.1:{p}" for p in sorted(masters)[:2])
        spec = f"redis-cluster://{seeds}"
        servers = [Server(args.seqrec, model, spec, args.workdir) for _ in range(2)]
        for server in servers:
            status, got = server.request("GET", "/model")
            check(status == 200 and spec in json.dumps(got), f"/model names the store {spec}: {got}")
        load = Load(servers, ids)
        load.start()
        try:
            time.sleep(3)
            # The master of a user the load writes: its slots are the ones that fail over.
            victim = sorted(masters)[2]
            killed_at = time.time()
            cluster.kill9(victim)
            cluster.wait(lambda: victim not in cluster.masters() and cluster.state_ok(), 30,
                         "the killed master's replica was not promoted within 30 s")
            promoted_at = time.time()
            time.sleep(4)  # load on the failed-over cluster
        finally:
            load.stop()

        # Both replicas recover without a restart. Every node learns the new master at its own
        # pace (CLUSTERDOWN may linger a moment on some), so recovery is a condition waited
        # for (30 s at most), then a steady phase where every request must succeed.
        recovered_after = []
        for n, server in enumerate(servers):
            check(server.proc.poll() is None, f"server {n} died:\n{server.read_log()}")
            deadline = time.time() + 30
            while True:
                status, got = server.request("POST", f"/users/after-{n}/interactions",
                                             {"user_interactions": [{"item_id": ids[5], "timestamp": 1}]})
                if status == 200 and server.request("GET", "/readyz")[0] == 200:
                    break
                check(status == 503 and got.get("error", {}).get("code") == "history_unavailable",
                      f"server {n}: while recovering only 503 history_unavailable: {status} {got}")
                check(time.time() < deadline, f"server {n}: not recovered 30 s after the promotion: {status} {got}")
                time.sleep(0.1)
            recovered_after.append(time.time() - promoted_at)
        steady = []
        for i in range(200):
            server = servers[i % 2]
            user = f"steady-{i % 20}"
            status, got = server.request("POST", f"/users/{user}/interactions",
                                         {"user_interactions": [{"item_id": ids[i % 50], "timestamp": 10 + i}]})
            steady.append((status, got))
            status, got = server.request("POST", "/recommend", {"user_id": user, "k": 3})
            steady.append((status, got))
        steady_failures = [(s, g) for s, g in steady if s != 200]

        records = load.records
        failures = [r for r in records if r[2] != 200]
        others = sorted({(kind, status, code) for _, kind, status, code in failures
                         if not (status == 503 and code == "history_unavailable")})
        window = (max(r[0] for r in failures) - min(r[0] for r in failures)) if failures else 0.0
        after = [r for r in records if r[0] > promoted_at + 1.5]
        late_failures = [r for r in after if r[2] != 200]

        lost = []
        acked = 0
        for user, pairs in load.acked.items():
            acked += len(pairs)
            have = set(stored(servers[0], user))
            lost += [(user, p) for p in pairs if p not in have]
        stored_total = 0
        for user in load.acked:
            stored_total += len(stored(servers[1], user))
        stored_total += 2 + 200  # the two appends after the failover and the steady phase's 200
        not_acked = sum(1 for r in records if r[1] == "append" and r[2] != 200)
        counts = stored_counts(cluster)
        counted = sum(counts.values())

        # Cold start: an unknown user gets the popular items from the store's counts.
        status, cold = servers[1].request("POST", "/recommend", {"user_id": "nobody-ever", "k": 5})
        logs = [s.read_log() for s in servers]
        # The writes were followed by WAIT (the masters that kept their replica say so).
        waits = [re.search(r"cmdstat_wait:calls=(\d+)", cli(p, "INFO", "commandstats")) for p in sorted(masters)[:2]]
        check(all(w and int(w.group(1)) > 0 for w in waits), "no WAIT reached the masters with a replica")
        unreplicated = sum(log.count("not yet on a replica") for log in logs)

        print(f"redis-cluster failover: acked appends {acked}, lost {len(lost)}, 503 history_unavailable "
              f"{sum(1 for r in failures if r[2] == 503)}, other failures {len(others)}, window {window:.2f} s "
              f"(kill → promoted {promoted_at - killed_at:.2f} s), requests {len(records)}, "
              f"failures under load after the promotion {len(late_failures)}, servers recovered "
              f"{', '.join(f'{t:.2f}' for t in recovered_after)} s after it, steady phase {len(steady) - len(steady_failures)}/"
              f"{len(steady)} ok, counts {counted} for {stored_total} stored, "
              f"WAIT timeouts logged {unreplicated}")
        check(acked > 100, f"too few acknowledged appends to judge ({acked})")
        check(not others, f"answers other than 200 and 503 history_unavailable: {others}")
        check(failures, "no request failed at all: did the load write to the killed master?")
        # The documented guarantee: an acknowledged append is lost only when its WAIT timed out.
        check(len(lost) <= unreplicated, f"acknowledged appends lost beyond the WAIT timeouts logged "
              f"({unreplicated}): {lost[:10]}")
        check(not steady_failures, f"after recovery every request succeeds: {len(steady_failures)} of {len(steady)} "
              f"failed: {steady_failures[:3]}")
        # Counts: a 503 append may be stored yet not counted; the count changes in flight when
        # the master died may be counted twice or not at all (a few).
        check(abs(stored_total - counted) <= not_acked + unreplicated,
              f"item counts {counted} vs {stored_total} stored interactions ({not_acked} appends not acknowledged)")
        check(counts.get(ids[0], 0) == max(counts.values()), "the hot item is the most counted")
        check(status == 200 and cold.get("recommendations"), f"cold-start recommend: {status} {cold}")
        for n, log in enumerate(logs):
            check("unreachable" in log, f"server {n} did not log the node going away:\n{log[-2000:]}")
        return 0
    finally:
        for server in servers:
            server.stop()
        cluster.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    for tool in (REDIS_SERVER, REDIS_CLI):
        if not os.access(tool, os.X_OK):
            print(f"SKIPPED: {tool} is not installed (apt-get install redis-server redis-tools)")
            return SKIP
    try:
        return run(args)
    except Failure as e:
        print(f"FAIL: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
