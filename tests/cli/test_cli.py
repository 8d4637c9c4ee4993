#!/usr/bin/env python3
"""End-to-end tests of the `seqrec` binary on the bundled MovieLens example model:
convert, inspect, recommend (request semantics and every request error), and hostile
checkpoints / model files. Needs only Python's standard library (no PyTorch).

usage: test_cli.py --seqrec build/seqrec --workdir DIR [--only NAME]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import EXAMPLE, Failure, check, example_checkpoint, item_ids  # noqa: E402


class Cli:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir

    def run(self, *args, stdin=None, env=None):
        proc = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, timeout=120,
                              env=env)
        check(proc.returncode >= 0 and proc.returncode < 128,
              f"seqrec {' '.join(args)} died with signal/code {proc.returncode}: {proc.stderr[-2000:]}")
        return proc

    def expect_error(self, *args, stdin=None, mentions=(), env=None):
        """A clean failure: non-zero exit, exactly one line on stderr, nothing on stdout."""
        proc = self.run(*args, stdin=stdin, env=env)
        check(proc.returncode != 0, f"expected failure for {args} {stdin!r:.200}, got success: {proc.stdout[:300]}")
        lines = proc.stderr.strip().splitlines()
        check(len(lines) == 1, f"expected one stderr line for {args} {stdin!r:.200}, got: {proc.stderr!r}")
        check(proc.stdout == "", f"stdout must be empty on error, got {proc.stdout[:200]!r}")
        for word in mentions:
            check(word in lines[0], f"error line should mention {word!r}: {lines[0]}")
        return lines[0]

    def recommend(self, model, request, *flags):
        body = request if isinstance(request, str) else json.dumps(request)
        proc = self.run("recommend", "--model", model, *flags, stdin=body)
        check(proc.returncode == 0, f"recommend failed: {proc.stderr.strip()} for {body[:200]}")
        return json.loads(proc.stdout)


def ids_of(response):
    return [r["id"] for r in response["recommendations"]]


# ---- tests -------------------------------------------------------------------------------

def test_convert_and_inspect(cli, model):
    proc = cli.run("inspect", model)
    check(proc.returncode == 0, proc.stderr)
    n = len(item_ids())
    check(f"catalog       {n} items" in proc.stdout, f"inspect should report {n} items:\n{proc.stdout}")
    check("pmixer" in proc.stdout and "rating >= 3.5" in proc.stdout, proc.stdout)


def test_dict_and_list_forms_agree(cli, model):
    ids = item_ids()[:6]
    as_dict = {"user_interactions": {i: {"timestamp": 1000 + n, "rating": 4.0} for n, i in enumerate(ids)}, "k": 20}
    as_list = {"user_interactions": [{"item_id": i, "timestamp": 1000 + n, "rating": 4.0} for n, i in enumerate(ids)],
               "k": 20}
    a, b = cli.recommend(model, as_dict), cli.recommend(model, as_list)
    check(a == b, "dict and list forms must give the same response")
    check(len(a["recommendations"]) == 20 and a["message"] is None, a)
    scores = [r["score"] for r in a["recommendations"]]
    check(scores == sorted(scores, reverse=True), "scores must be descending")
    check(all(0.0 < s < 1.0 for s in scores), "the example model reports sigmoid probabilities")
    check(all(isinstance(r["id"], int) for r in a["recommendations"]), "MovieLens ids are integers in JSON")
    check(not set(map(str, ids_of(a))) & set(ids), "seen items must not be recommended")


def test_order_comes_from_timestamps(cli, model):
    ids = item_ids()[10:15]
    shuffled = list(enumerate(ids))
    random.Random(3).shuffle(shuffled)
    ordered = cli.recommend(model, {"user_interactions": [{"item_id": i, "timestamp": t} for t, i in enumerate(ids)]})
    mixed = cli.recommend(model, {"user_interactions": [{"item_id": i, "timestamp": t} for t, i in shuffled]})
    check(ordered == mixed, "input order must not matter when timestamps differ")
    reversed_ts = cli.recommend(model, {"user_interactions": [{"item_id": i, "timestamp": -t}
                                                              for t, i in enumerate(ids)]})
    check(reversed_ts != ordered, "the model must see the timestamp order")


def test_threshold_negatives_are_seen_not_input(cli, model):
    ids = item_ids()
    base = [{"item_id": ids[n], "timestamp": n, "rating": 5.0} for n in range(4)]
    plain = cli.recommend(model, {"user_interactions": base, "k": 10})
    disliked = str(ids_of(plain)[0])
    with_negative = cli.recommend(model, {"user_interactions": base + [{"item_id": disliked, "timestamp": 99,
                                                                        "rating": 1.0}], "k": 10})
    check(disliked not in map(str, ids_of(with_negative)), "a negative interaction is still seen")
    check(ids_of(with_negative) == ids_of(plain)[1:] + ids_of(with_negative)[-1:],
          "a rating below the threshold must not enter the sequence")


def test_unknown_ids_are_skipped_and_reported(cli, model):
    ids = item_ids()[:3]
    known = cli.recommend(model, {"user_interactions": [{"item_id": i, "timestamp": n} for n, i in enumerate(ids)]})
    mixed = cli.recommend(model, {"user_interactions": [{"item_id": "no-such-movie", "timestamp": 0}] +
                                  [{"item_id": i, "timestamp": n + 1} for n, i in enumerate(ids)]})
    check(ids_of(known) == ids_of(mixed), "unknown ids must not change the ranking")
    check(mixed["message"] and "no-such-movie" in mixed["message"], mixed["message"])


def test_candidates_exclusions_and_k(cli, model):
    ids = item_ids()
    history = {"user_interactions": [{"item_id": ids[0], "timestamp": 1}]}
    r = cli.recommend(model, dict(history, candidate_ids=[ids[5], "unknown-x", ids[6], ids[0]], k=10))
    got = [str(i) for i in ids_of(r)]
    check(set(got) == {ids[5], "unknown-x", ids[6]}, f"candidates restrict the ranking (seen excluded): {got}")
    unknown = [x for x in r["recommendations"] if x["id"] == "unknown-x"][0]
    check(unknown["score"] == 0, "unknown candidates score 0")
    check("Only 3 item(s)" in (r["message"] or ""), r["message"])
    top = ids_of(cli.recommend(model, dict(history, k=5)))
    excluded = cli.recommend(model, dict(history, k=5, exclude_ids=[str(top[0]), top[1]]))
    check(ids_of(excluded)[:3] == top[2:5], "exclusions drop exactly those items")
    seen_ok = cli.recommend(model, dict(history, k=len(ids), recommend_seen=True), "--max-k", str(len(ids)))
    check(len(seen_ok["recommendations"]) == len(ids) and seen_ok["message"] is None,
          "k = catalog size with recommend_seen returns the whole catalog")
    too_many = cli.recommend(model, dict(history, k=len(ids) + 5), "--max-k", str(len(ids) + 5))
    check(len(too_many["recommendations"]) == len(ids) - 1 and "Only" in too_many["message"], too_many["message"])


def test_empty_history_falls_back(cli, model):
    for body in ({"user_interactions": {}}, {"user_interactions": [{"item_id": "nope", "timestamp": 1}]},
                 {"user_interactions": [{"item_id": item_ids()[0], "rating": 0.5}]}):
        r = cli.recommend(model, body)
        check(len(r["recommendations"]) == 10, r)
        check(r["message"] and "No known positive interaction" in r["message"], r["message"])


def test_request_errors_are_one_line(cli, model):
    cases = [
        ("{not json", ["JSON"]),
        ("[]", ["request body"]),
        ('{"k": 5}', ["neither"]),
        ('{"user_id": "u1", "user_interactions": {}}', ["both"]),
        ('{"user_interactions": {}, "k": 0}', ["k: 0"]),
        ('{"user_interactions": {}, "k": 100000}', ["k: 100000", "1..1000"]),
        ('{"user_interactions": {}, "k": "ten"}', ["k:", "\"ten\""]),
        ('{"user_interactions": {"5": {"timestamp": "x"}}}', ["timestamp", "\"x\""]),
        ('{"user_interactions": {"5": {"rating": []}}}', ["rating"]),
        ('{"user_interactions": [{"item_id": {}}]}', ["item_id"]),
        ('{"user_interactions": {}, "recommend_seen": "yes"}', ["recommend_seen"]),
        ('{"user_interactions": {}, "candidate_ids": 5}', ["candidate_ids"]),
        ('{"user_interactions": {}, "exclude_ids": [null]}', ["exclude_ids[0]"]),
        ('{"user_interactions": {}, "surprise": 1}', ["surprise"]),
        ('{"user_id": "u1"}', ["user_id", "history store"]),
        ("", ["JSON"]),
    ]
    for body, words in cases:
        cli.expect_error("recommend", "--model", model, stdin=body, mentions=words)


def test_bad_flags_and_files(cli, model):
    ckpt = example_checkpoint()
    out = os.path.join(cli.workdir, "should-not-exist.seqrec")
    cli.expect_error("convert", "--from", "pmixer", "/nonexistent.pth", "--out", out, mentions=["/nonexistent.pth"])
    cli.expect_error("convert", "--from", "keras", ckpt, "--out", out, mentions=["--from", "keras"])
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--variant", "newest", mentions=["--variant"])
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--heads", "7", mentions=["--heads"])
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--heads", "two", mentions=["--heads"])
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--score", "probit", mentions=["--score"])
    short_ids = os.path.join(cli.workdir, "short_ids.txt")
    with open(short_ids, "w") as f:
        f.write("[PAD]\n1\n2\n")
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--item-ids", short_ids,
                     mentions=["short_ids.txt", "expected"])
    dup_ids = os.path.join(cli.workdir, "dup_ids.txt")
    ids = ["[PAD]"] + item_ids()
    ids[2] = ids[1]
    with open(dup_ids, "w") as f:
        f.write("\n".join(ids) + "\n")
    cli.expect_error("convert", "--from", "pmixer", ckpt, "--out", out, "--item-ids", dup_ids,
                     mentions=["line 2", "already on line 1"])
    check(not os.path.exists(out), "a failed convert must not leave an output file")
    cli.expect_error("recommend", "--model", "/nonexistent.seqrec", stdin="{}", mentions=["/nonexistent.seqrec"])
    cli.expect_error("recommend", "--model", model, "--max-k", "0", stdin="{}", mentions=["--max-k"])
    cli.expect_error("inspect", ckpt, mentions=[os.path.basename(ckpt)])  # a .pth is not a .seqrec
    cli.expect_error("recommend", mentions=["--model"])
    cli.expect_error("frobnicate", mentions=["frobnicate"])
    for sub in ("convert", "recommend", "inspect"):
        proc = cli.run(sub, "--help")
        check(proc.returncode == 0 and "Usage" in proc.stdout, f"{sub} --help")


def test_hostile_checkpoints(cli, model):
    """Truncated and corrupted .pth files: a clean one-line error (or, for corruption inside
    float data, a successful convert) — never a crash."""
    with open(example_checkpoint(), "rb") as f:
        data = f.read()
    rng = random.Random(11)
    path = os.path.join(cli.workdir, "hostile.pth")
    out = os.path.join(cli.workdir, "hostile.seqrec")
    cuts = sorted(set([0, 1, 4, 22, 30, 64, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 22,
                       len(data) - 1] + [rng.randrange(len(data)) for _ in range(8)]))
    for cut in cuts:
        with open(path, "wb") as f:
            f.write(data[:cut])
        cli.expect_error("convert", "--from", "pmixer", path, "--out", out, mentions=["hostile.pth"])
    # Corrupt bytes in the metadata (pickle and zip directory), where they matter most.
    pickle_at = data.find(b"data.pkl")
    positions = [rng.randrange(pickle_at, pickle_at + 2000) for _ in range(25)]
    positions += [rng.randrange(len(data) - 600, len(data)) for _ in range(25)]
    for pos in positions:
        broken = bytearray(data)
        broken[pos] ^= 0xFF
        with open(path, "wb") as f:
            f.write(broken)
        proc = cli.run("convert", "--from", "pmixer", path, "--out", out)
        if proc.returncode != 0:
            check(len(proc.stderr.strip().splitlines()) == 1, f"one line at byte {pos}: {proc.stderr!r}")


def test_hostile_model_files(cli, model):
    with open(model, "rb") as f:
        data = f.read()
    path = os.path.join(cli.workdir, "hostile.seqrec")
    rng = random.Random(5)
    for cut in sorted(set([0, 3, 8, 12, 40, len(data) // 2, len(data) - 1] +
                          [rng.randrange(len(data)) for _ in range(10)])):
        with open(path, "wb") as f:
            f.write(data[:cut])
        cli.expect_error("recommend", "--model", path, stdin='{"user_interactions": {}}', mentions=["hostile.seqrec"])
        cli.expect_error("inspect", path, mentions=["hostile.seqrec"])


def with_kernel_path(path):
    env = dict(os.environ)
    env["SEQREC_CPU_ISA"] = path
    return env


def test_every_kernel_path_answers_alike(cli, model):
    """One binary, every kernel path this machine runs (kernels/cpu_isa.h), forced in turn:
    inspect names the path, and the answers agree (same top-20, scores within 1e-5)."""
    proc = cli.run("inspect", model)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("cpu path")), "")
    check(line, f"inspect should name the cpu path:\n{proc.stdout}")
    supported = line.split("this binary runs here: ")[1].rstrip(")").split(", ")
    check(supported[0] == "portable", line)
    check(line.split()[2] == supported[-1], f"without SEQREC_CPU_ISA the best path runs: {line}")
    ids = item_ids()
    request = {"user_interactions": [{"item_id": i, "timestamp": t} for t, i in enumerate(ids[100:160])], "k": 20}
    reference = cli.recommend(model, request)
    for path in supported:
        env = with_kernel_path(path)
        proc = cli.run("inspect", model, env=env)
        check(proc.returncode == 0 and f"cpu path      {path} on" in proc.stdout, f"{path}: {proc.stdout}{proc.stderr}")
        proc = cli.run("recommend", "--model", model, stdin=json.dumps(request), env=env)
        check(proc.returncode == 0, f"{path}: {proc.stderr}")
        got = json.loads(proc.stdout)
        check(ids_of(got) == ids_of(reference), f"{path}: top-20 differs from {supported[-1]}'s")
        worst = max(abs(a["score"] - b["score"]) for a, b in zip(got["recommendations"], reference["recommendations"]))
        check(worst <= 1e-5, f"{path}: scores differ by {worst}")
    for bad, mentions in (("avx9000", ("SEQREC_CPU_ISA", "unknown value 'avx9000'")),
                          ("AVX2", ("SEQREC_CPU_ISA", "portable|avx2|avx512|avx512_vnni"))):
        line = cli.expect_error("inspect", model, mentions=mentions, env=with_kernel_path(bad))
        check("avx9000" in line or "AVX2" in line, line)


TESTS = [test_convert_and_inspect, test_every_kernel_path_answers_alike, test_dict_and_list_forms_agree, test_order_comes_from_timestamps,
         test_threshold_negatives_are_seen_not_input, test_unknown_ids_are_skipped_and_reported,
         test_candidates_exclusions_and_k, test_empty_history_falls_back, test_request_errors_are_one_line,
         test_bad_flags_and_files, test_hostile_checkpoints, test_hostile_model_files]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only")
    args = parser.parse_args()
    if example_checkpoint() is None:
        print("SKIPPED: no bundled example checkpoint in examples/movielens")
        return 77
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    cli = Cli(os.path.abspath(args.seqrec), args.workdir)
    model = os.path.join(args.workdir, "movielens.seqrec")
    proc = cli.run("convert", "--from", "pmixer", example_checkpoint(), "--item-ids",
                   os.path.join(EXAMPLE, "item_ids.txt"), "--rating-threshold", "3.5", "--out", model)
    if proc.returncode != 0:
        print(f"FAIL convert of the bundled example: {proc.stderr}")
        print("0 passed, 1 failed")
        return 1
    passed = failed = 0
    for test in TESTS:
        if args.only and args.only not in test.__name__:
            continue
        try:
            test(cli, model)
            passed += 1
            print(f"ok   {test.__name__}")
        except Exception as e:  # noqa: BLE001 — report every failure, keep going
            failed += 1
            print(f"FAIL {test.__name__}: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
