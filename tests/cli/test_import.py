#!/usr/bin/env python3
"""End-to-end tests of `seqrec import`: CSV / TSV / "user item" files and the bundled
MovieLens ratings into LMDB stores, the summary line, and every input error (bad lines with
their line number, --skip-bad-lines, unknown --columns, empty and missing files).
What was imported is read back by the GoogleTest suite (tests/unit/history_store_test.cc);
here the summary's counts are checked. Needs only Python's standard library.

usage: test_import.py --seqrec build/seqrec --workdir DIR [--only NAME]
"""
import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import EXAMPLE, Failure, check  # noqa: E402

RATINGS = os.path.join(EXAMPLE, "ratings.csv")
SUMMARY = re.compile(r"^imported (\d+) interactions of (\d+) users into (\S+) in ([0-9.]+) s \((\d+) interactions/min\)")


class Cli:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.stores = 0

    def path(self, name):
        return os.path.join(self.workdir, name)

    def write(self, name, text, mode="w"):
        path = self.path(name)
        with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            f.write(text)
        return path

    def fresh_store(self):
        self.stores += 1
        return "lmdb:" + self.path(f"store{self.stores}")

    def run(self, *args):
        proc = subprocess.run([self.binary, "import", *args], capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=300)
        check(0 <= proc.returncode < 128, f"seqrec import {' '.join(args)} died with {proc.returncode}: {proc.stderr[-2000:]}")
        return proc

    def imports(self, *args):
        """A successful import: returns (interactions, users, stderr lines)."""
        proc = self.run(*args)
        check(proc.returncode == 0, f"import {args} failed: {proc.stderr.strip()}")
        lines = proc.stderr.strip().splitlines()
        check(lines, "no summary line")
        match = SUMMARY.match(lines[-1])
        check(match, f"the last stderr line is not the summary: {lines[-1]!r}")
        check(proc.stdout == "", f"nothing on stdout expected, got {proc.stdout[:200]!r}")
        return int(match.group(1)), int(match.group(2)), lines

    def fails(self, *args, mentions=()):
        """A clean failure: non-zero exit, exactly one line on stderr naming what is wrong."""
        proc = self.run(*args)
        check(proc.returncode != 0, f"expected failure for {args}, got: {proc.stderr.strip()}")
        lines = proc.stderr.strip().splitlines()
        check(len(lines) == 1, f"expected one stderr line for {args}, got: {proc.stderr!r}")
        for word in mentions:
            check(word in lines[0], f"the error should mention {word!r}: {lines[0]}")
        return lines[0]


# ---- tests -------------------------------------------------------------------------------

def test_csv_with_header_and_quotes(cli):
    random.seed(7)
    rows = []
    users = set()
    for n in range(5000):
        user = f"u{random.randrange(300)}"
        users.add(user)
        rows.append(f"{user},{random.randrange(1000)},{random.randrange(1, 11) / 2},{1700000000 + n}")
    # Quoted fields: a comma, a doubled quote and a newline inside ids.
    rows.append('"user, with comma","item ""quoted""",4.0,1')
    rows.append('"multi\nline user","x",,')
    users.update(["user, with comma", "multi\nline user"])
    path = cli.write("header.csv", "user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    interactions, n_users, lines = cli.imports("--history", cli.fresh_store(), "--interactions", path)
    check(interactions == 5002, f"expected 5002 interactions, summary says {interactions}")
    check(n_users == len(users), f"expected {len(users)} users, summary says {n_users}")
    check(len(lines) == 1, f"only the summary expected on stderr (not a terminal): {lines}")


def test_tsv_with_recbole_header_crlf_and_bom(cli):
    text = "\ufeffuser_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
    text += "".join(f"{u}\t{i}\t{3.5}\t{978300760 + i}.0\r\n" for u in range(20) for i in range(7))
    path = cli.write("recbole.inter", text)
    interactions, users, _ = cli.imports("--history", cli.fresh_store(), "--interactions", path)
    check((interactions, users) == (140, 20), f"expected 140 interactions of 20 users, got {interactions} of {users}")


def test_tsv_without_optional_columns(cli):
    path = cli.write("plain.tsv", "userId\tmovieId\n" + "".join(f"{u}\t{u * 3}\n" for u in range(50)))
    interactions, users, _ = cli.imports("--history", cli.fresh_store(), "--interactions", path)
    check((interactions, users) == (50, 50), f"got {interactions} of {users}")


def test_user_item_lines(cli):
    lines = [f"{u} {i}" for u in range(1, 31) for i in range(1, 11)]
    path = cli.write("sasrec.txt", "\n".join(lines) + "\n\n")  # a trailing blank line is fine
    interactions, users, _ = cli.imports("--history", cli.fresh_store(), "--interactions", path)
    check((interactions, users) == (300, 30), f"got {interactions} of {users}")


def test_movielens_ratings(cli):
    store = cli.fresh_store()
    interactions, users, _ = cli.imports("--history", store, "--interactions", RATINGS)
    check((interactions, users) == (100836, 610), f"expected 100836 of 610, got {interactions} of {users}")
    # Importing again appends to the same store.
    interactions, users, _ = cli.imports("--history", store, "--interactions", RATINGS, "--max-per-user", "50")
    check((interactions, users) == (100836, 610), f"second import: {interactions} of {users}")


def test_columns_flag(cli):
    path = cli.write("custom.csv", "Who,What,Stars,When\n" + "".join(f"a{u},b{u},5,{u}\n" for u in range(10)))
    interactions, users, _ = cli.imports("--history", cli.fresh_store(), "--interactions", path, "--columns",
                                         "user=who,item=WHAT,rating=Stars,timestamp=When")
    check((interactions, users) == (10, 10), f"got {interactions} of {users}")
    line = cli.fails("--history", cli.fresh_store(), "--interactions", path, "--columns", "user=who,item=nope",
                     mentions=("--columns", "'nope'", "custom.csv"))
    cli.fails("--history", cli.fresh_store(), "--interactions", path, "--columns", "user=who,colour=red",
              mentions=("--columns", "'colour'"))
    cli.fails("--history", cli.fresh_store(), "--interactions", path, "--columns", "userwho",
              mentions=("--columns", "'userwho'"))
    # No recognisable header and no --columns: named as such.
    cli.fails("--history", cli.fresh_store(), "--interactions", path, mentions=("custom.csv:1", "user"))
    del line


def test_bad_lines_are_reported_with_their_line_number(cli):
    good = [f"{u},{u + 1},4.0,{1000 + u}" for u in range(20)]
    cases = {
        "rating": (good[:3] + ["7,8,lots,1003"] + good[3:], 5, ("rating", "'lots'")),
        "timestamp": (good[:9] + ["7,8,4.0,yesterday"] + good[9:], 11, ("timestamp", "'yesterday'")),
        "fields": (good[:1] + ["7,8,4.0"] + good[1:], 3, ("3 fields", "expected 4")),
        "empty_user": (good + [",8,4.0,1"], 22, ("empty user",)),
        "quote": (good[:2] + ['7,"8"x,4.0,1'] + good[2:], 4, ("quote",)),
    }
    for name, (rows, line, words) in cases.items():
        path = cli.write(f"bad_{name}.csv", "user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
        cli.fails("--history", cli.fresh_store(), "--interactions", path,
                  mentions=(f"bad_{name}.csv:{line}:",) + words)
        interactions, users, lines = cli.imports("--history", cli.fresh_store(), "--interactions", path,
                                                 "--skip-bad-lines")
        check(interactions == 20, f"{name}: expected the 20 good lines imported, got {interactions}")
        report = "\n".join(lines)
        check("skipped 1 bad line" in report and f"bad_{name}.csv:{line}:" in report,
              f"{name}: the skip report should name line {line}: {report}")
        check("bad lines skipped" in lines[-1], f"{name}: the summary should count skipped lines: {lines[-1]}")


def test_many_bad_lines_show_the_first_few(cli):
    rows = [f"{u} {u}" if u % 2 else f"{u} {u} extra" for u in range(100)]
    path = cli.write("many_bad.txt", "\n".join(rows) + "\n")
    interactions, users, lines = cli.imports("--history", cli.fresh_store(), "--interactions", path, "--skip-bad-lines")
    check(interactions == 50, f"expected 50, got {interactions}")
    report = "\n".join(lines)
    check("skipped 50 bad lines; the first 5:" in report, f"report: {report}")
    check("many_bad.txt:1:" in report and "many_bad.txt:9:" in report, f"report: {report}")
    check(len(lines) == 1 + 5 + 1, f"expected a heading, 5 lines and the summary: {lines}")


def test_unclosed_quote(cli):
    path = cli.write("unclosed.csv", 'user,item\n1,2\n3,"4\n5,6\n')
    cli.fails("--history", cli.fresh_store(), "--interactions", path, mentions=("unclosed.csv:3:", "quote"))


def test_empty_missing_and_useless_files(cli):
    empty = cli.write("empty.csv", "")
    cli.fails("--history", cli.fresh_store(), "--interactions", empty, mentions=("empty.csv", "empty"))
    blank = cli.write("blank.csv", "\n\n  \n")
    cli.fails("--history", cli.fresh_store(), "--interactions", blank, mentions=("blank.csv",))
    header_only = cli.write("header_only.csv", "user,item,rating\n")
    cli.fails("--history", cli.fresh_store(), "--interactions", header_only,
              mentions=("header_only.csv", "no interactions"))
    missing = cli.path("does_not_exist.csv")
    cli.fails("--history", cli.fresh_store(), "--interactions", missing, mentions=("does_not_exist.csv",))
    cli.fails("--history", cli.fresh_store(), "--interactions", cli.workdir, mentions=("directory",))
    all_bad = cli.write("all_bad.csv", "user,item,rating\n1,2,x\n3,4,y\n")
    cli.fails("--history", cli.fresh_store(), "--interactions", all_bad, "--skip-bad-lines",
              mentions=("all_bad.csv", "no interactions", "2 bad lines", "all_bad.csv:2:"))


def test_bad_store_and_flags(cli):
    path = cli.write("ok.csv", "user,item\n1,2\n")
    cli.fails("--history", "sqlite:x.db", "--interactions", path, mentions=("'sqlite:x.db'",))
    cli.fails("--history", "lmdb:", "--interactions", path, mentions=("'lmdb:'",))
    blocker = cli.write("a_file", "x")
    cli.fails("--history", "lmdb:" + os.path.join(blocker, "store"), "--interactions", path, mentions=("a_file",))
    cli.fails("--history", cli.fresh_store(), "--interactions", path, "--max-per-user", "0",
              mentions=("--max-per-user",))
    proc = cli.run("--interactions", path)
    check(proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and "--history" in proc.stderr,
          f"a missing --history should be one line naming it: {proc.stderr!r}")


def test_hostile_bytes_do_not_crash(cli):
    random.seed(3)
    for n in range(20):
        blob = bytes(random.randrange(256) for _ in range(random.randrange(1, 3000)))
        header = random.choice([b"user,item,rating,timestamp\n", b"user\titem\n", b""])
        path = cli.write(f"hostile{n}.csv", header + blob, mode="wb")
        cli.run("--history", cli.fresh_store(), "--interactions", path, "--skip-bad-lines")


TESTS = [
    test_csv_with_header_and_quotes,
    test_tsv_with_recbole_header_crlf_and_bom,
    test_tsv_without_optional_columns,
    test_user_item_lines,
    test_movielens_ratings,
    test_columns_flag,
    test_bad_lines_are_reported_with_their_line_number,
    test_many_bad_lines_show_the_first_few,
    test_unclosed_quote,
    test_empty_missing_and_useless_files,
    test_bad_store_and_flags,
    test_hostile_bytes_do_not_crash,
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    cli = Cli(os.path.abspath(args.seqrec), args.workdir)
    passed = failed = 0
    for test in TESTS:
        if args.only and args.only not in test.__name__:
            continue
        try:
            test(cli)
            passed += 1
            print(f"ok   {test.__name__}")
        except Exception as e:  # noqa: BLE001 — report every failure, keep going
            failed += 1
            print(f"FAIL {test.__name__}: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
