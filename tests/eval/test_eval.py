#!/usr/bin/python3
"""`seqrec eval` against an independent PyTorch implementation of the same protocol
(tests/eval/reference_eval.py), on two model/data pairs:

  movielens  the bundled SASRec checkpoint on examples/movielens/ratings.csv (in the repo);
  small      a small SASRec (pre_ln, random weights, some all-zero item embeddings so that
             exact score ties occur) that this test builds, on a TSV data set it writes: custom
             column names, string ids, equal timestamps, empty ratings, repeated items, items
             the model does not know, users too short to evaluate, a user with fewer
             never-interacted items than --negatives asks for.

For each: both splits, full ranking (every metric identical to 1e-6) and sampled (the
negatives written by --save-negatives are checked to be valid and to be exactly what the
documented generator draws, and the metrics over them are identical). Also: results do not
depend on --threads / --batch-size, the seed changes the negatives, the table output, and
bad input (unknown column, empty file, catalog mismatch, bad --k, ...) ends with one line.

usage: test_eval.py --seqrec build/seqrec --workdir DIR
Exit status: 0 passed, 1 failed, 77 skipped (no torch).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import traceback

try:
    import numpy as np
    import torch
except ImportError as error:
    print(f"SKIPPED: PyTorch/numpy not importable by {sys.executable} ({error})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(ROOT, "examples", "movielens")
sys.path.insert(0, HERE)
import reference_eval as ref  # noqa: E402
import sasrec_pytorch  # noqa: E402  (on the path reference_eval set up)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import Failure, check  # noqa: E402

TOLERANCE = 1e-6
TIMEOUT = 300


class Seqrec:
    def __init__(self, binary):
        self.binary = binary

    def run(self, *args):
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=TIMEOUT)
        check(0 <= proc.returncode < 128, f"seqrec {' '.join(args)} died: {proc.returncode} {proc.stderr[-2000:]}")
        return proc

    def ok(self, *args):
        proc = self.run(*args)
        check(proc.returncode == 0, f"seqrec {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def eval_json(self, *args):
        return json.loads(self.ok("eval", "--json", *args).stdout)

    def expect_error(self, *args, mentions=()):
        proc = self.run(*args)
        check(proc.returncode != 0, f"expected failure for {args}, got success: {proc.stdout[:300]}")
        lines = proc.stderr.strip().splitlines()
        check(len(lines) == 1, f"expected one stderr line for {args}, got: {proc.stderr!r}")
        check(proc.stdout == "", f"stdout must be empty on error, got {proc.stdout[:200]!r}")
        for word in mentions:
            check(word in lines[0], f"error line should mention {word!r}: {lines[0]}")
        return lines[0]


class Setup:
    """One model + data pair, with everything the reference needs."""

    def __init__(self, name, model_file, data, columns, threshold, rows, model, maxlen, ks, negatives, seed,
                 reader_columns):
        self.name, self.model_file, self.data, self.columns = name, model_file, data, columns
        self.threshold, self.rows, self.model, self.maxlen = threshold, rows, model, maxlen
        self.ks, self.negatives, self.seed = ks, negatives, seed
        self.by_user = ref.read_interactions(data, **reader_columns)
        self.n_rows = len(rows) + 1

    def args(self, *extra):
        base = ["--model", self.model_file, "--interactions", self.data, "--k", ",".join(map(str, self.ks))]
        if self.columns:
            base += ["--columns", self.columns]
        return base + list(extra)


def compare(label, got, want, diagnostics):
    for key, value in want.items():
        check(key in got, f"{label}: seqrec's JSON has no {key!r}: {sorted(got)}")
        if abs(got[key] - value) > TOLERANCE:
            raise Failure(f"{label}: {key} seqrec {got[key]!r} vs reference {value!r} "
                          f"(|Δ| {abs(got[key] - value):.3g}); {diagnostics()}")


def check_setup(seqrec, setup, workdir, results):
    for split in ("last", "valid"):
        cases, skipped = ref.leave_one_out(setup.by_user, setup.rows, setup.threshold, split)
        scores = ref.all_scores(setup.model, cases, setup.maxlen)

        def diagnostics():
            target_gap, boundary_gap, ties = ref.smallest_gaps(cases, scores, setup.n_rows, setup.ks)
            return (f"smallest non-zero reference score gap at a target {target_gap:.3g}, across a top-k "
                    f"boundary {boundary_gap:.3g}; {ties} exact ties at targets (float32 differences of ~1e-6 "
                    f"between implementations reorder near ties)")

        if setup.name == "small":
            # This setup is built to be decided by the protocol, not by float rounding: exact
            # ties (zero embeddings) that the tie rule must settle, and every other gap wide.
            target_gap, boundary_gap, ties = ref.smallest_gaps(cases, scores, setup.n_rows, setup.ks)
            check(ties >= 10 and min(target_gap, boundary_gap) > 1e-5,
                  f"small split={split}: the data should hold exact ties and no near ties: {diagnostics()}")

        # Full ranking.
        label = f"{setup.name} full split={split}"
        got = seqrec.eval_json(*setup.args("--split", split))
        check(got["users"]["evaluated"] == len(cases) and got["users"]["skipped"] == skipped,
              f"{label}: users {got['users']} vs reference {len(cases)} evaluated, {skipped} skipped")
        check(got["users"]["total"] == len(setup.by_user), f"{label}: {got['users']['total']} users, "
              f"reference {len(setup.by_user)}")
        want = ref.evaluate(cases, scores, setup.n_rows, setup.ks, "full")
        compare(label, got["metrics"], want, diagnostics)
        results.append(f"{label}: {len(cases)} users, identical (HR@10 {want.get('hr@10', float('nan')):.4f}, "
                       f"MRR {want['mrr']:.4f})")

        # Sampled, with the negatives seqrec drew.
        label = f"{setup.name} sampled split={split}"
        path = os.path.join(workdir, f"{setup.name}.{split}.negatives.tsv")
        got = seqrec.eval_json(*setup.args("--split", split, "--protocol", "sampled", "--negatives",
                                           str(setup.negatives), "--seed", str(setup.seed), "--save-negatives", path))
        saved = ref.read_negatives(path, setup.rows)
        check(set(saved) == {c.user for c in cases}, f"{label}: the negatives file lists other users")
        short = 0
        for case in cases:
            target, negatives = saved[case.user]
            check(target == case.target, f"{label}: user {case.user}: target row {target}, reference {case.target}")
            check(len(set(negatives)) == len(negatives), f"{label}: user {case.user}: repeated negatives")
            check(not (set(negatives) & case.interacted), f"{label}: user {case.user}: an interacted item as negative")
            eligible = setup.n_rows - 1 - len(case.interacted)
            check(len(negatives) == min(setup.negatives, eligible),
                  f"{label}: user {case.user}: {len(negatives)} negatives, expected min({setup.negatives}, {eligible})")
            short += eligible < setup.negatives
            expected = ref.sample_negatives(setup.seed, case.user, setup.n_rows, case.interacted, setup.negatives)
            check(negatives == expected, f"{label}: user {case.user}: negatives differ from the documented "
                  f"generator's: {negatives[:5]}... vs {expected[:5]}...")
        check(got["users"]["short_of_negatives"] == short,
              f"{label}: short_of_negatives {got['users']['short_of_negatives']}, reference {short}")
        negatives = {user: rows for user, (_, rows) in saved.items()}
        want = ref.evaluate(cases, scores, setup.n_rows, setup.ks, "sampled", negatives)
        compare(label, got["metrics"], want, diagnostics)
        results.append(f"{label}: {len(cases)} users, same negatives as the documented generator, identical "
                       f"(MRR {want['mrr']:.4f})")

        # Another seed draws other negatives; threads and batch size change nothing.
        other = os.path.join(workdir, f"{setup.name}.{split}.seed2.tsv")
        seqrec.eval_json(*setup.args("--split", split, "--protocol", "sampled", "--negatives", str(setup.negatives),
                                     "--seed", str(setup.seed + 1), "--save-negatives", other))
        check(ref.read_negatives(other, setup.rows) != saved, f"{label}: --seed changed nothing")
        for protocol in ("full", "sampled"):
            one = seqrec.eval_json(*setup.args("--split", split, "--protocol", protocol, "--threads", "1"))
            many = seqrec.eval_json(*setup.args("--split", split, "--protocol", protocol, "--threads", "2",
                                                "--batch-size", "5"))
            check(one["metrics"] == many["metrics"], f"{setup.name} {protocol} split={split}: --threads 2 "
                  f"--batch-size 5 gives {many['metrics']} vs {one['metrics']}")
    results.append(f"{setup.name}: --seed, --threads, --batch-size behave")


# ---------------------------------------------------------------- the two setups

def movielens_setup(seqrec, workdir):
    checkpoints = sorted(f for f in os.listdir(EXAMPLE) if f.startswith("SASRec.") and f.endswith(".pth"))
    check(checkpoints, f"no bundled checkpoint in {EXAMPLE}")
    checkpoint = os.path.join(EXAMPLE, checkpoints[0])
    model_file = os.path.join(workdir, "movielens.seqrec")
    seqrec.ok("convert", "--from", "pmixer", checkpoint, "--item-ids", os.path.join(EXAMPLE, "item_ids.txt"),
              "--rating-threshold", "3.5", "--out", model_file)
    rows = ref.read_item_ids(os.path.join(EXAMPLE, "item_ids.txt"))
    model = ref.load_model(checkpoint, "post_ln", len(rows), hidden_units=50, num_heads=1, num_blocks=2, maxlen=200)
    return Setup("movielens", model_file, os.path.join(EXAMPLE, "ratings.csv"), None, 3.5, rows, model, 200,
                 [1, 5, 10, 20], 100, 42, {})


SMALL_ITEMS = 70        # known to the model: m1 .. m70
SMALL_UNKNOWN = 6       # m71 .. m76: not in the model's catalog
ZERO_ROWS = [3, 7, 11, 19, 20]  # all-zero item embeddings: their scores tie exactly (0.0)
SMALL_MAXLEN = 8


def write_small_data(path, rng):
    """A TSV with its own column names; returns nothing, the reference reads the file."""
    lines = ["who\twhat\tstars\twhen"]
    known = [f"m{i}" for i in range(1, SMALL_ITEMS + 1)]
    unknown = [f"m{i}" for i in range(SMALL_ITEMS + 1, SMALL_ITEMS + SMALL_UNKNOWN + 1)]

    def stars():
        return rng.choice(["1", "2", "2.5", "3", "3.5", "4", "4.5", "5", "5", ""])  # "" = no rating: positive

    for u in range(140):
        user = f"user-{u:03d}"
        n = rng.choice([0, 1, 2, 3, 3, 4, 5, 8, 12, 20, 30])
        for _ in range(n):
            item = rng.choice(unknown) if rng.random() < 0.05 else rng.choice(known)
            lines.append(f"{user}\t{item}\t{stars()}\t{rng.randrange(1000, 1012)}")  # many equal timestamps
    # Interacted with all but 4 of the known items: fewer never-interacted items than --negatives.
    for i, item in enumerate(rng.sample(known, SMALL_ITEMS - 4)):
        lines.append(f"heavy\t{item}\t{'4' if i % 3 else '2'}\t{2000 + i // 2}")
    # Zero-embedding items as targets and inputs: exact ties decided by catalog row.
    for u in range(10):
        items = rng.sample(known, 5) + [f"m{ZERO_ROWS[u % len(ZERO_ROWS)]}", f"m{ZERO_ROWS[(u + 1) % len(ZERO_ROWS)]}"]
        for t, item in enumerate(items):
            lines.append(f"tie-{u}\t{item}\t5\t{3000 + t}")
    body = lines[1:]  # file order is not time order
    rng.shuffle(body)
    with open(path, "w") as file:
        file.write("\n".join([lines[0]] + body) + "\n")


def small_setup(seqrec, workdir):
    rng = random.Random(20240607)
    data = os.path.join(workdir, "small.tsv")
    write_small_data(data, rng)
    item_ids = os.path.join(workdir, "small_item_ids.txt")
    with open(item_ids, "w") as file:
        file.write("\n".join(["[PAD]"] + [f"m{i}" for i in range(1, SMALL_ITEMS + 1)]) + "\n")

    torch.manual_seed(5)
    model = sasrec_pytorch.build_model("pre_ln", SMALL_ITEMS, hidden_units=16, num_heads=2, num_blocks=2,
                                       maxlen=SMALL_MAXLEN)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
        model.item_emb.weight[0].zero_()
        for row in ZERO_ROWS:
            model.item_emb.weight[row].zero_()
    model.eval()
    checkpoint = os.path.join(workdir, f"SASRec.epoch=1.lr=0.001.layer=2.head=2.hidden=16.maxlen={SMALL_MAXLEN}.pth")
    torch.save(model.state_dict(), checkpoint)
    model_file = os.path.join(workdir, "small.seqrec")
    seqrec.ok("convert", "--from", "pmixer", checkpoint, "--variant", "pre_ln", "--item-ids", item_ids,
              "--rating-threshold", "3", "--out", model_file)
    rows = ref.read_item_ids(item_ids)
    return Setup("small", model_file, data, "user=who,item=what,rating=stars,timestamp=when", 3.0, rows, model,
                 SMALL_MAXLEN, [1, 3, 10, 20], 20, 7,
                 {"user": "who", "item": "what", "rating": "stars", "timestamp": "when"})


# ---------------------------------------------------------------- output and errors

def check_table_and_warning(seqrec, small, results):
    proc = seqrec.ok("eval", *small.args("--protocol", "sampled", "--negatives", "20"))
    for text in ("HR@k", "NDCG@k", "coverage@k", "MRR", "users/s", "skipped"):
        check(text in proc.stdout, f"the table should show {text!r}:\n{proc.stdout}")
    lines = proc.stderr.strip().splitlines()
    check(len(lines) == 1 and "warning" in lines[0] and "do" in lines[0] and "not know" in lines[0],
          f"expected one warning about unknown items, got {proc.stderr!r}")
    results.append("table output; one warning line naming the unknown items' counts")


def check_errors(seqrec, movielens, small, workdir, results):
    model = movielens.model_file
    ratings = movielens.data
    empty = os.path.join(workdir, "empty.csv")
    open(empty, "w").close()
    header_only = os.path.join(workdir, "header_only.csv")
    with open(header_only, "w") as file:
        file.write("userId,movieId,rating,timestamp\n")
    foreign = os.path.join(workdir, "foreign.csv")
    with open(foreign, "w") as file:
        file.write("userId,movieId,rating,timestamp\n")
        for u in range(20):
            for t in range(5):
                file.write(f"{u},B{u * 5 + t:05d},5,{t}\n")
    mostly = os.path.join(workdir, "mostly_foreign.csv")
    with open(mostly, "w") as file:
        file.write("userId,movieId,rating,timestamp\n")
        for u in range(20):  # 4 unknown and 3 known positives each
            for t, item in enumerate(["B1", "B2", "B3", "B4", "1", "2", "3"]):
                file.write(f"{u},{item},5,{t}\n")

    cases = [
        (["eval", "--model", model, "--interactions", ratings, "--columns", "item=nope"], ["--columns", "nope"]),
        (["eval", "--model", model, "--interactions", ratings, "--columns", "colour=x"], ["--columns", "colour"]),
        (["eval", "--model", model, "--interactions", empty], [empty, "empty"]),
        (["eval", "--model", model, "--interactions", header_only], [header_only, "no interactions"]),
        (["eval", "--model", model, "--interactions", os.path.join(workdir, "missing.csv")], ["missing.csv"]),
        (["eval", "--model", os.path.join(workdir, "missing.seqrec"), "--interactions", ratings], ["missing.seqrec"]),
        (["eval", "--model", model, "--interactions", foreign], ["100 of 100 positive", "catalog", "B00000"]),
        (["eval", "--model", model, "--interactions", mostly], ["80 of 140 positive", "--allow-unknown"]),
        (["eval", "--model", model, "--interactions", ratings, "--k", "1,x"], ["--k", "'x'"]),
        (["eval", "--model", model, "--interactions", ratings, "--k", "0"], ["--k", "'0'"]),
        (["eval", "--model", model, "--interactions", ratings, "--k", "5,,10"], ["--k"]),
        (["eval", "--model", model, "--interactions", ratings, "--k", ""], ["--k"]),
        (["eval", "--model", model, "--interactions", ratings, "--protocol", "loo"], ["--protocol", "loo"]),
        (["eval", "--model", model, "--interactions", ratings, "--split", "test"], ["--split", "test"]),
        (["eval", "--model", model, "--interactions", ratings, "--protocol", "sampled", "--negatives", "0"],
         ["--negatives"]),
        (["eval", "--model", model, "--interactions", ratings, "--save-negatives", "x.tsv"], ["--save-negatives"]),
        (["eval", "--model", model, "--interactions", ratings, "--threads", "0"], ["--threads"]),
        (["eval", "--model", model, "--interactions", ratings, "--rating-threshold", "9"], ["positive"]),
        (["eval", "--model", model], ["--interactions"]),
    ]
    for args, mentions in cases:
        seqrec.expect_error(*args, mentions=mentions)
    # --allow-unknown evaluates the mostly-unknown file anyway (its known part), with a warning.
    proc = seqrec.run("eval", "--model", model, "--interactions", mostly, "--allow-unknown", "--json")
    check(proc.returncode == 0, f"--allow-unknown should evaluate: {proc.stderr}")
    check(json.loads(proc.stdout)["interactions"]["unknown_item_positive"] == 80, proc.stdout)
    check("warning" in proc.stderr, f"--allow-unknown should still warn: {proc.stderr!r}")
    results.append(f"{len(cases)} kinds of bad input: one line each; --allow-unknown")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (os.path.isfile(args.seqrec) and os.access(args.seqrec, os.X_OK)):
        print(f"FAIL: no executable seqrec binary at {args.seqrec}")
        return 1
    os.makedirs(args.workdir, exist_ok=True)
    seqrec = Seqrec(os.path.abspath(args.seqrec))

    results, failures = [], 0
    setups = {}
    steps = [
        ("movielens", lambda: setups.__setitem__("movielens", movielens_setup(seqrec, args.workdir))),
        ("small", lambda: setups.__setitem__("small", small_setup(seqrec, args.workdir))),
        ("movielens vs reference", lambda: check_setup(seqrec, setups["movielens"], args.workdir, results)),
        ("small vs reference", lambda: check_setup(seqrec, setups["small"], args.workdir, results)),
        ("table", lambda: check_table_and_warning(seqrec, setups["small"], results)),
        ("errors", lambda: check_errors(seqrec, setups["movielens"], setups["small"], args.workdir, results)),
    ]
    for name, step in steps:
        try:
            step()
        except Failure as failure:
            failures += 1
            print(f"FAIL {name}: {failure}")
        except Exception:  # noqa: BLE001 - report and go on
            failures += 1
            print(f"FAIL {name}: {traceback.format_exc()}")
    for line in results:
        print(f"ok  {line}")
    print(f"{len(results)} checks passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
