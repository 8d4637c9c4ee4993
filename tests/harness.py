"""What the Python test scripts under tests/ share: the repository's paths, how a case fails or
is skipped, free loopback ports, the bundled example model, a redis-server of their own, and
the loop that runs named cases and prints one line each.

A script imports it after putting tests/ on its path:

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from harness import Failure, Skip, check  # noqa: E402

Standard-library Python only, like the scripts.
"""
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "movielens")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class Failure(Exception):
    """A case found the product doing something it must not (the message says what)."""


class Skip(Exception):
    """A case cannot run here (a service or a file is missing); never counted as passed."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def free_port():
    """A loopback TCP port nothing listens on now, chosen at random below Linux's ephemeral
    range (32768-60999): a port from bind(0) lies inside that range, where every outgoing
    connection of the parallel tests also takes its local port, and one of them could take it
    before our server binds it."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # 200 taken ports in a row: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def item_ids():
    """The example model's item ids, in row order (row 0, the padding row, left out)."""
    with open(os.path.join(EXAMPLE, "item_ids.txt")) as f:
        return [line.rstrip("\n") for line in f][1:]


def example_checkpoint():
    """The bundled SASRec.pytorch checkpoint, or None when the clone has none."""
    found = sorted(glob.glob(os.path.join(EXAMPLE, "SASRec.*.pth")))
    return found[0] if found else None


def convert_example(seqrec, out):
    """`seqrec convert` of the bundled checkpoint into `out`; returns the failed process, or None."""
    proc = subprocess.run([seqrec, "convert", "--from", "pmixer", example_checkpoint(), "--item-ids",
                           os.path.join(EXAMPLE, "item_ids.txt"), "--rating-threshold", "3.5", "--out", out],
                          capture_output=True, text=True)
    return proc if proc.returncode != 0 else None


def stop_process(proc, sig=signal.SIGTERM, timeout=30):
    """Asks a process to stop with `sig` (kill -9 after `timeout` s); returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class RedisServer:
    """A redis-server of the test's own on a free loopback port, with no snapshots; `durable`:
    AOF with a sync per write, so an acknowledged write survives kill -9 of Redis itself."""

    def __init__(self, workdir, durable=False, extra_args=()):
        """`extra_args`: more redis-server options (a cluster node's, say)."""
        if not os.path.exists(REDIS_SERVER):
            raise Skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.durable = durable
        self.extra_args = list(extra_args)
        self.start(new_port_if_taken=True)

    def start(self, new_port_if_taken=False):
        """Starts (or restarts, on the same port) and waits for PONG from this very process. The
        free port can be taken by another process before redis-server binds it (tests run in
        parallel); a first start then tries other ports."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        for _ in range(5 if new_port_if_taken else 1):
            self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          *persistence, "--dir", self.workdir, *self.extra_args],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        s.sendall(b"PING\r\n")  # -LOADING while an AOF is read back: not ready yet
                        if s.recv(16).startswith(b"+PONG") and self._answers_as_own():
                            return
                except OSError:
                    pass
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise Failure(f"redis-server did not answer PING on port {self.port} within 10 s")
            if new_port_if_taken:
                self.port = free_port()
        raise Failure(f"redis-server exited at start (exit code {self.proc.returncode}, port {self.port} taken?)")

    def _answers_as_own(self):
        """True when the server on self.port is this one, not another test's that holds the port."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"INFO server\r\n")
            reply = b""
            while True:  # one reply: a bulk string "$<length>\r\n<body>\r\n", or an error line
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
                head, sep, body = reply.partition(b"\r\n")
                if sep and (not head.startswith(b"$") or len(body) >= int(head[1:]) + 2):
                    break
        for line in reply.split(b"\r\n"):
            if line.startswith(b"process_id:"):
                return int(line[len(b"process_id:"):]) == self.proc.pid
        return False

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen (SIGSTOP) Redis cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"


class Tally:
    """Runs named cases, one line each: `ok`, `skip NAME: why` or `FAIL NAME: what` (with the
    traceback when the case broke rather than failed a check)."""

    def __init__(self, timed=False):
        self.passed = self.failed = self.skipped = 0
        self.timed = timed
        self.began = time.time()

    def run(self, name, case, *args):
        started = time.time()
        took = lambda: f" ({time.time() - started:.0f} s)" if self.timed else ""  # noqa: E731
        try:
            case(*args)
            self.passed += 1
            print(f"ok   {name}{took()}")
        except Skip as e:
            self.skipped += 1
            print(f"skip {name}: {e}")
        except Exception as e:  # noqa: BLE001
            self.failed += 1
            print(f"FAIL {name}{took()}: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
        sys.stdout.flush()

    def summary(self):
        """Prints the counts; returns the exit status (1 when a case failed)."""
        took = f" in {time.time() - self.began:.0f} s" if self.timed else ""
        print(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped{took}")
        return 1 if self.failed else 0
