#!/usr/bin/env python3
"""The web console in a real browser: starts `seqrec serve` on a free loopback port with the
bundled MovieLens model (users imported into an LMDB history store, an admin key set), then
runs test_console.mjs (node + playwright-core driving Debian's chromium, headless) against it.

Skipped (exit 77) when node, chromium or playwright-core is unavailable; runs `npm ci` in
tests/console first when its node_modules is missing. Standard-library Python only.

usage: run_console_test.py --seqrec build/seqrec --workdir DIR [--chromium /usr/bin/chromium] [--keep-server]
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(ROOT, "examples", "movielens")
SKIP = 77


def skip(reason):
    print(f"console: skipped: {reason}")
    sys.exit(SKIP)


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def check_tools(chromium):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        skip("node is not installed (scripts/install-deps.sh --test installs nodejs and npm)")
    version = run([node, "--version"]).stdout.strip()
    m = re.match(r"v(\d+)\.", version)
    if not m or int(m.group(1)) < 18:
        skip(f"node {version or '?'} is too old (playwright-core needs 18 or newer)")
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        skip(f"chromium is not installed at {chromium} (scripts/install-deps.sh --test installs it)")
    resolve = [node, "-e", "require.resolve('playwright-core')"]
    if run(resolve, cwd=HERE).returncode != 0:
        npm = shutil.which("npm")
        if not npm:
            skip("playwright-core is not installed in tests/console/node_modules and npm is missing")
        print("console: installing playwright-core (npm ci in tests/console)")
        done = run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE)
        if done.returncode != 0 or run(resolve, cwd=HERE).returncode != 0:
            skip(f"playwright-core is unavailable: npm ci failed:\n{done.stdout[-2000:]}")
    return node


class Server:
    def __init__(self, seqrec, model, history, key_file, log_path, extra=()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [seqrec, "serve", "--model", model, "--history", history, "--port", "0", "--threads", "2",
             "--api-key-file", key_file, *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.base = None
        deadline = time.time() + 60
        while time.time() < deadline and self.base is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"seqrec serve exited early:\n{self.read_log()}")
            m = re.search(r"listening on (http://[0-9.]+:\d+)", self.read_log())
            if m:
                self.base = m.group(1)
            else:
                time.sleep(0.05)
        if self.base is None:
            raise RuntimeError(f"seqrec serve did not say where it listens:\n{self.read_log()}")
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"seqrec serve is not ready:\n{self.read_log()}")

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqrec", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--chromium", default=os.environ.get("SEQREC_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--keep-server", action="store_true", help="leave the server running after the test (debugging)")
    args = ap.parse_args()

    node = check_tools(args.chromium)
    seqrec = os.path.abspath(args.seqrec)
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)

    checkpoint = glob.glob(os.path.join(EXAMPLE, "SASRec.*.pth"))
    if len(checkpoint) != 1:
        print(f"console: FAIL: expected one SASRec.*.pth in {EXAMPLE}, found {checkpoint}")
        return 1
    model = os.path.join(workdir, "ml.seqrec")
    history = "lmdb:" + os.path.join(workdir, "history")
    for cmd in ([seqrec, "convert", "--from", "pmixer", checkpoint[0], "--item-ids", os.path.join(EXAMPLE, "item_ids.txt"),
                 "--rating-threshold", "3.5", "--out", model],
                [seqrec, "import", "--history", history, "--interactions", os.path.join(EXAMPLE, "ratings.csv")]):
        done = run(cmd)
        if done.returncode != 0:
            print(f"console: FAIL: {' '.join(cmd)}\n{done.stdout}")
            return 1
    key = "console-test-key-" + os.urandom(6).hex()
    key_file = os.path.join(workdir, "admin.key")
    with open(key_file, "w") as f:
        f.write(key + "\n")
    os.chmod(key_file, 0o600)

    # Item metadata (titles, genres as tags) when this build serves it: the console's title
    # search, titles in answers and tag filters. Without the flag those features are hidden.
    extra = []
    if re.search(r"--items\b", run([seqrec, "serve", "--help"]).stdout):
        extra = ["--items", os.path.join(EXAMPLE, "movies.csv")]
    try:
        server = Server(seqrec, model, history, key_file, os.path.join(workdir, "serve.log"), extra)
    except RuntimeError as e:
        if not extra:
            raise
        print(f"console: note: serving with {' '.join(extra)} failed, serving without item metadata:\n{e}")
        server = Server(seqrec, model, history, key_file, os.path.join(workdir, "serve-no-items.log"))
    try:
        print(f"console: seqrec serve at {server.base}; browser: {args.chromium}")
        env = dict(os.environ, SEQREC_CONSOLE_KEY=key)
        test = subprocess.run(
            [node, os.path.join(HERE, "test_console.mjs"), "--base", server.base, "--workdir", workdir,
             "--chromium", args.chromium, "--example", EXAMPLE],
            cwd=HERE, env=env, timeout=240)
        if test.returncode not in (0, SKIP):
            print(f"console: server log (tail):\n{server.read_log()}")
        if args.keep_server:
            print(f"console: server left running at {server.base} (pid {server.proc.pid})")
            return test.returncode
        return test.returncode
    finally:
        if not args.keep_server:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
