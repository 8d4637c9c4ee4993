#!/usr/bin/python3
"""`seqrec eval` on the models that read time or score with their own table — TiSASRec, gSASRec
and HSTU — against the same independent protocol (tests/eval/reference_eval.py) with each
source's own reference modules (tests/parity/*_reference.py) as the scorer.

For each kind: a small model with random weights saved exactly as its trainer saves it,
converted with `seqrec convert`, and a CSV data set it writes (string ids, timestamps with
uneven gaps, equal timestamps, negative ratings, items the model does not know). Then
`seqrec eval --json` for both splits, full ranking and sampled (with the negatives seqrec
saved), and every metric compared with the reference's to 1e-6. What each kind's reference
is given is the point of the test:

  tisasrec  the input positives with their timestamps (time scale and intervals from them);
  gsasrec   the input positives' rows (time only orders them);
  hstu      the input positives with their timestamps, and `now` = the held-out item's
            timestamp, as HSTU's own evaluation does; its item-id file has rows that are not
            items (empty lines), which are neither inputs nor candidates.

Also, per kind: `seqrec export --safetensors` then `convert --from safetensors` answers timed
requests (with `now`) byte for byte as the original, and `inspect` shows the block kind.

usage: test_eval_newer_models.py --seqrec build/seqrec --workdir DIR [--kind tisasrec|gsasrec|hstu|all]
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
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "parity"))
import reference_eval as ref  # noqa: E402
import gsasrec_reference  # noqa: E402
import hstu_reference  # noqa: E402
import tisasrec_reference  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import Failure, check  # noqa: E402

TOLERANCE = 1e-6
TIMEOUT = 300
KS = (1, 5, 10)
NEGATIVES = 15
SEED = 7


def run(seqrec, *args):
    proc = subprocess.run([seqrec, *args], capture_output=True, text=True, timeout=TIMEOUT)
    check(proc.returncode == 0, f"seqrec {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


# ---------------------------------------------------------------- data

def write_data(path, item_ids, seed, users=70):
    """A CSV of users whose histories exercise the protocol. `item_ids` are the catalog's raw
    ids; two ids the model does not know are mixed in. Timestamps in seconds, uneven gaps."""
    rng = random.Random(seed)
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(users):
        length = rng.choice([1, 2, 3, 4, 6, 9, 14, 20])
        t = 1_000_000_000 + rng.randrange(10_000_000)
        for _ in range(length):
            t += rng.choice([0, 1, 7, 60, 3600, 86_400, 400_000]) + rng.randrange(50)
            if rng.random() < 0.08:
                item = rng.choice(["unknown-1", "unknown-2"])
            else:
                item = rng.choice(item_ids)
            rating = rng.choice(["5", "4", "4.5", "3", "2", "1"])
            lines.append(f"u{u},{item},{rating},{t}")
        # Rows in file order that is not time order: seqrec and the reference both sort.
    body = lines[1:]
    rng.shuffle(body)
    with open(path, "w") as f:
        f.write("\n".join([lines[0]] + body) + "\n")


def timed_cases(by_user, rows, threshold, split):
    """reference_eval.leave_one_out, keeping each input positive's timestamp and the target's."""
    cases, skipped = [], 0
    for user, events in by_user.items():
        positives = [(ts, rows[item]) for item, rating, ts in events
                     if item in rows and (rating is None or threshold is None or rating >= threshold)]
        positives = sorted(positives, key=lambda event: event[0])  # stable
        if len(positives) < 3:
            skipped += 1
            continue
        at = len(positives) - (1 if split == "last" else 2)
        interacted = {rows[item] for item, _, _ in events if item in rows}
        case = ref.Case(user, positives[at][1], [row for _, row in positives[:at]], interacted)
        case.timed_history = [(row, ts) for ts, row in positives[:at]]
        case.target_time = positives[at][0]
        cases.append(case)
    return cases, skipped


# ---------------------------------------------------------------- the three kinds

class Kind:
    """A converted model plus the reference that scores a case: scores over catalog rows
    (index = seqrec's row, 0 = padding) for the case's input."""

    def __init__(self, name, model_file, embedding_row_ids, score_case, max_len):
        self.name, self.model_file, self.max_len = name, model_file, max_len
        # The catalog seqrec keeps: the rows whose id line is not empty, renumbered 1..n.
        self.embedding_rows = [r for r in range(1, len(embedding_row_ids)) if embedding_row_ids[r]]
        self.rows = {embedding_row_ids[r]: i + 1 for i, r in enumerate(self.embedding_rows)}
        self.raw_ids = [embedding_row_ids[r] for r in self.embedding_rows]
        self.to_embedding_row = {i + 1: r for i, r in enumerate(self.embedding_rows)}
        self.score_case = score_case
        self.n_rows = len(self.embedding_rows) + 1

    def scores(self, cases):
        out = np.zeros((len(cases), self.n_rows), dtype=np.float64)
        for i, case in enumerate(cases):
            by_embedding_row = self.score_case(case, self.to_embedding_row)
            out[i, 1:] = by_embedding_row[self.embedding_rows]
        return out


def write_ids(path, ids):
    with open(path, "w") as f:
        f.write("\n".join(ids) + "\n")


def make_tisasrec(seqrec, workdir):
    torch.manual_seed(11)
    items, maxlen, span = 40, 12, 64
    model = tisasrec_reference.build_model("current", items, hidden_units=16, num_heads=2, num_blocks=2,
                                           maxlen=maxlen, time_span=span)
    for p in model.parameters():  # main.py's initialisation
        try:
            torch.nn.init.xavier_normal_(p.data)
        except ValueError:
            pass
    model.eval()
    checkpoint = tisasrec_reference.save_checkpoint(model, workdir)
    ids = ["[PAD]"] + [f"m{1000 + r}" for r in range(1, items + 1)]
    ids_file = os.path.join(workdir, "tisasrec_ids.txt")
    write_ids(ids_file, ids)
    out = os.path.join(workdir, "tisasrec.seqrec")
    run(seqrec, "convert", "--from", "tisasrec", checkpoint, "--item-ids", ids_file, "--score", "raw", "--out", out)

    def score(case, to_embedding_row):
        history = [(to_embedding_row[row], ts) for row, ts in case.timed_history]
        return tisasrec_reference.predict_all(model, history)
    return Kind("tisasrec", out, ids, score, maxlen)


def make_gsasrec(seqrec, workdir):
    torch.manual_seed(12)
    items, maxlen = 40, 12
    model = gsasrec_reference.build_model("relu", items, embedding_dim=16, num_heads=2, num_blocks=2,
                                          sequence_length=maxlen)
    model.eval()
    checkpoint = os.path.join(workdir, "gsasrec.pt")
    gsasrec_reference.save_checkpoint(model, checkpoint)
    ids = ["[PAD]"] + [f"g{r * 7}" for r in range(1, items + 1)]
    ids_file = os.path.join(workdir, "gsasrec_ids.txt")
    write_ids(ids_file, ids)
    out = os.path.join(workdir, "gsasrec.seqrec")
    run(seqrec, "convert", "--from", "gsasrec", checkpoint, "--heads", "2", "--item-ids", ids_file, "--score", "raw",
        "--out", out)

    def score(case, to_embedding_row):
        return gsasrec_reference.score_history(model, [to_embedding_row[row] for row in case.history])
    return Kind("gsasrec", out, ids, score, maxlen)


def make_hstu(seqrec, workdir):
    torch.manual_seed(13)
    max_item_id, maxlen, heads, dqk, dv = 45, 12, 2, 8, 8
    model = hstu_reference.build_model(max_item_id, item_embedding_dim=16, num_blocks=2, num_heads=heads, dqk=dqk,
                                       dv=dv, max_sequence_length=maxlen)
    # Relative biases are zero at initialisation; give them values so that time matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_ts_w" in name or "_pos_w" in name:
                p.normal_(0, 0.5)
    model.eval()
    checkpoint = os.path.join(workdir, "hstu_ep3")
    hstu_reference.save_checkpoint(model, hstu_reference.make_optimizer(model), 3, checkpoint, ddp=True)
    # Raw movie ids as rows, some rows not items (empty lines), as their MovieLens pipelines.
    ids = [""] + [("" if r % 6 == 0 else str(r)) for r in range(1, max_item_id + 1)]
    ids_file = os.path.join(workdir, "hstu_ids.txt")
    write_ids(ids_file, ids)
    out = os.path.join(workdir, "hstu.seqrec")
    run(seqrec, "convert", "--from", "hstu", checkpoint, "--item-ids", ids_file, "--max-len", str(maxlen), "--heads",
        str(heads), "--attention-dim", str(dqk), "--linear-dim", str(dv), "--score", "raw", "--out", out)

    def score(case, to_embedding_row):
        history = [(to_embedding_row[row], ts) for row, ts in case.timed_history]
        return hstu_reference.scores_for_history(model, history, case.target_time, maxlen)
    return Kind("hstu", out, ids, score, maxlen)


MAKERS = {"tisasrec": make_tisasrec, "gsasrec": make_gsasrec, "hstu": make_hstu}


# ---------------------------------------------------------------- checks

def compare(label, got, want, diagnostics):
    for key, value in want.items():
        check(key in got, f"{label}: seqrec's JSON has no {key!r}: {sorted(got)}")
        if abs(got[key] - value) > TOLERANCE:
            raise Failure(f"{label}: {key} seqrec {got[key]!r} vs reference {value!r} "
                          f"(|Δ| {abs(got[key] - value):.3g}); {diagnostics()}")


def check_kind(results, seqrec, workdir, name):
    kind = MAKERS[name](seqrec, workdir)
    check_export_round_trip(results, seqrec, workdir, kind)
    data = os.path.join(workdir, f"{name}_ratings.csv")
    write_data(data, kind.raw_ids, seed={"tisasrec": 1, "gsasrec": 2, "hstu": 3}[name])
    by_user = ref.read_interactions(data)
    threshold = 3.5
    base = ["eval", "--model", kind.model_file, "--interactions", data, "--k", ",".join(map(str, KS)),
            "--rating-threshold", str(threshold), "--allow-unknown", "--json"]
    for split in ("last", "valid"):
        cases, skipped = timed_cases(by_user, kind.rows, threshold, split)
        check(len(cases) >= 20, f"{name}: only {len(cases)} users to evaluate; the data set is too small")
        scores = kind.scores(cases)

        def diagnostics():
            target_gap, boundary_gap, ties = ref.smallest_gaps(cases, scores, kind.n_rows, KS)
            return (f"smallest reference score gap at a target {target_gap:.3g}, across a top-k boundary "
                    f"{boundary_gap:.3g}, {ties} exact ties")
        # Random weights, fixed seeds: a near tie would make the comparison about float rounding.
        target_gap, boundary_gap, _ = ref.smallest_gaps(cases, scores, kind.n_rows, KS)
        check(min(target_gap, boundary_gap) > 1e-5, f"{name} split={split}: near ties in the data: {diagnostics()}")

        label = f"{name} full split={split}"
        got = json.loads(run(seqrec, *base, "--split", split).stdout)
        check(got["users"]["evaluated"] == len(cases) and got["users"]["skipped"] == skipped,
              f"{label}: users {got['users']} vs reference {len(cases)} evaluated, {skipped} skipped")
        want = ref.evaluate(cases, scores, kind.n_rows, KS, "full")
        compare(label, got["metrics"], want, diagnostics)
        results.append(f"{label}: {len(cases)} users, identical (HR@10 {want['hr@10']:.4f}, MRR {want['mrr']:.4f})")

        label = f"{name} sampled split={split}"
        path = os.path.join(workdir, f"{name}.{split}.negatives.tsv")
        got = json.loads(run(seqrec, *base, "--split", split, "--protocol", "sampled", "--negatives", str(NEGATIVES),
                             "--seed", str(SEED), "--save-negatives", path).stdout)
        saved = ref.read_negatives(path, kind.rows)
        for case in cases:
            check(saved[case.user][0] == case.target, f"{label}: user {case.user}: another target")
            check(not (set(saved[case.user][1]) & case.interacted), f"{label}: user {case.user}: an interacted negative")
        negatives = {user: rows for user, (_, rows) in saved.items()}
        want = ref.evaluate(cases, scores, kind.n_rows, KS, "sampled", negatives)
        compare(label, got["metrics"], want, diagnostics)
        results.append(f"{label}: identical (MRR {want['mrr']:.4f})")

        if name == "hstu" and split == "last":
            # The held-out item's time is `now`: with the last input's time instead, the
            # reference's scores move — so the match above is not an accident of time not mattering.
            moved = 0
            for case, row_scores in zip(cases[:10], scores[:10]):
                case_then = ref.Case(case.user, case.target, case.history, case.interacted)
                case_then.timed_history = case.timed_history
                case_then.target_time = case.timed_history[-1][1]
                other = kind.scores([case_then])[0]
                moved += not np.allclose(other, row_scores, atol=1e-6)
            check(moved >= 5, f"{label}: `now` changes the reference's scores for only {moved} of 10 users")
            results.append(f"{name}: `now` = the held-out item's time (scores move with it for {moved} of 10 users)")


def check_export_round_trip(results, seqrec, workdir, kind):
    """`seqrec export --safetensors` then `convert --from safetensors`: the same answers, byte for
    byte, for requests with timestamps and `now`; `inspect` of both names the block kind."""
    exported = os.path.join(workdir, f"{kind.name}.safetensors")
    back = os.path.join(workdir, f"{kind.name}.roundtrip.seqrec")
    run(seqrec, "export", kind.model_file, "--safetensors", exported)
    run(seqrec, "convert", "--from", "safetensors", exported, "--out", back)
    for model_file in (kind.model_file, back):
        shown = run(seqrec, "inspect", model_file).stdout
        check(f"blocks        {kind.name if kind.name != 'gsasrec' else 'sasrec_original'} x 2" in shown,
              f"{kind.name}: inspect of {model_file} does not show the block kind: {shown[:400]}")
    rng = random.Random(5)
    answers = 0
    for n in (1, 3, kind.max_len, kind.max_len + 4):
        t = 1_500_000_000
        history = []
        for _ in range(n):
            t += rng.choice([0, 5, 3600, 90_000])
            history.append({"item_id": rng.choice(kind.raw_ids), "timestamp": t})
        body = json.dumps({"user_interactions": history, "now": t + 600, "k": 10, "recommend_seen": True})
        got = [subprocess.run([seqrec, "recommend", "--model", m], input=body, capture_output=True, text=True,
                              timeout=TIMEOUT) for m in (kind.model_file, back)]
        for proc in got:
            check(proc.returncode == 0, f"{kind.name}: recommend failed: {proc.stderr.strip()}")
        check(got[0].stdout == got[1].stdout, f"{kind.name}: answers differ after the round trip:\n"
              f"{got[0].stdout[:300]}\n{got[1].stdout[:300]}")
        check(len(json.loads(got[0].stdout)["recommendations"]) == 10, f"{kind.name}: not 10 recommendations")
        answers += 1
    results.append(f"{kind.name}: export --safetensors -> convert --from safetensors answers {answers} timed "
                   f"requests byte for byte alike; inspect shows the kind")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqrec", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--kind", default="all", choices=["all", *MAKERS])
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results, failures = [], []
    for name in (MAKERS if args.kind == "all" else [args.kind]):
        folder = os.path.join(args.workdir, name)
        os.makedirs(folder, exist_ok=True)
        try:
            check_kind(results, args.seqrec, folder, name)
        except Failure as error:
            failures.append(f"{name}: {error}")
        except Exception:  # noqa: BLE001 — a broken reference must fail loudly, not skip
            failures.append(f"{name}: {traceback.format_exc()}")
    for line in results:
        print(f"ok: {line}")
    for line in failures:
        print(f"FAILED: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
