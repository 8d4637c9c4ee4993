#!/usr/bin/python3
"""Parity test: `seqrec convert --from hstu` + `seqrec recommend` against HSTU
(github: facebookresearch/generative-recommenders, generative_recommenders/research/).

For each model shape (two small ones and one shaped like the ml-1m "large" config: d=50,
8 blocks, 2 heads, dqk=dv=25, L=200, gr_output_length=10), this builds HSTU with the reference
modules of tests/parity/hstu_reference.py (their class and attribute names, so the same
state_dict keys), gives it trained-looking weights (a few AdamW steps of their sampled-softmax
training), saves it as their trainer does — {"epoch", "model_state_dict",
"optimizer_state_dict"}, keys "module.…" (DistributedDataParallel; what train.py always
writes) and, as a second file, without the prefix — writes an item-id file with an empty line
for every embedding row that is not an item (row 0 and, as in ml-1m where rows are raw movie
ids, ids that are not movies), converts both files with seqrec, sends histories with
timestamps and a `now` through `seqrec recommend`, and compares every item's score with the
reference's (max |delta| <= 1e-4, same top-10 except between exact ties).

Histories: one and three items, L-1, exactly L, L+1 and 3L items, equal timestamps, gaps from
one second to 2e9 s, millisecond timestamps (gaps to 1e12), gaps exactly on and one below the
time-bucket boundaries, `now` before the last interaction, and no `now` (the clock, in unix
seconds). Time sensitivity: the same items at other timestamps, and the same history with
another `now`, give other scores (asserted in the reference, then seqrec must follow).
Scores: --score raw (the cosine their evaluation ranks by) and --score softmax
(softmax(cosine / T) over the item rows; T from --temperature, default 0.05, their gin
train_fn.temperature). Refused conversions: no --heads, a truncated checkpoint, a missing key
(the optimizer state still holding tensors of its shape), --max-len beyond the position table,
a --linear-dim the weights contradict, an item-id file one line short.

Every expected value is computed by PyTorch at test time.

Usage:
  /usr/bin/python3 tests/parity/test_hstu_parity.py --seqrec build/seqrec --workdir DIR
      [--case small_h1|small_h2_gr4|ml1m_large|errors|all]
Exit status: 0 all passed, 1 any failure, 77 skipped (no torch).
"""

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time

try:
    import numpy as np
    import torch
except ImportError as error:
    print(f"SKIPPED: PyTorch/numpy not importable by {sys.executable} ({error})")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hstu_reference as ref  # noqa: E402  (needs the path above)
from parity_common import (SCORE_TOLERANCE, TOP_N, Results, compare, finish, one_line, record_refusal,  # noqa: E402
                           run, seqrec_binary)

# ml-1m's first rating (2000-04-25), a plausible base for second timestamps.
BASE_TS = 956_703_932
# The reference must show at least this much change for a "time matters" case to mean anything.
TIME_EFFECT_MIN = 1e-3


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    d: int
    blocks: int
    heads: int
    dqk: int
    dv: int
    max_len: int          # gin train_fn.max_sequence_length
    gr_output_length: int  # gin train_fn.gr_output_length (N = max_len + this + 1)
    rows: int             # item-embedding rows = max item id + 1
    non_items: int        # rows besides row 0 that are not items (empty lines in the id file)
    id_style: str         # "raw": row r has id str(r) (ml-1m); "mapped": other strings


SHAPES = [
    Shape("small_h1", d=16, blocks=1, heads=1, dqk=8, dv=12, max_len=8, gr_output_length=10,
          rows=61, non_items=6, id_style="raw"),
    # gr_output_length 4: N = 25, not max_len + 11 — the converter must take N from the weights.
    Shape("small_h2_gr4", d=24, blocks=3, heads=2, dqk=6, dv=10, max_len=20, gr_output_length=4,
          rows=121, non_items=11, id_style="mapped"),
    # configs/ml-1m/hstu-sampled-softmax-n128-large-final.gin; 3953 rows (max movie id 3952),
    # 3883 movies in movies.dat: 69 rows besides row 0 are not items.
    Shape("ml1m_large", d=50, blocks=8, heads=2, dqk=25, dv=25, max_len=200, gr_output_length=10,
          rows=3953, non_items=69, id_style="raw"),
]
CASES = [shape.name for shape in SHAPES] + ["errors"]


# ---- model, files --------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    shape: Shape
    model: object
    optimizer: object
    ids: list          # ids[row]; "" for rows that are not items
    item_rows: list    # rows that are items, ascending
    dir: str
    ddp_checkpoint: str
    plain_checkpoint: str
    item_ids_file: str


def catalog(shape, rng):
    non_items = set(rng.choice(np.arange(1, shape.rows), size=shape.non_items, replace=False).tolist())
    item_rows = [row for row in range(1, shape.rows) if row not in non_items]
    ids = [""] * shape.rows
    for row in item_rows:
        ids[row] = str(row) if shape.id_style == "raw" else f"m{100_000 + 37 * row}"
    return ids, item_rows


def write_item_ids(path, ids):
    """One line per embedding row; an empty line for a row that is not an item (row 0 too)."""
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(ids) + "\n")


def random_history(length, item_rows, rng, gap_exponent_max=8.5, start=BASE_TS):
    """(row, timestamp) oldest first: items with repeats, gaps 10**U(0, max) seconds (0 too)."""
    rows = [item_rows[i] for i in rng.integers(0, len(item_rows), size=length)]
    if length >= 2:
        rows[-1] = rows[-2]
    if length >= 4:
        rows[length // 2] = rows[0]
    gaps = np.floor(10.0 ** rng.uniform(0, gap_exponent_max, size=length)).astype(np.int64)
    gaps[rng.random(length) < 0.1] = 0
    gaps[0] = 0
    times = start + np.cumsum(gaps)
    return [(int(r), int(t)) for r, t in zip(rows, times)]


def train_steps(model, optimizer, shape, item_rows, rng, steps=3, batch=4, negatives=16):
    """A few steps of train.py's loop: target scattered into slot `length`, the output of slot i
    scored against item i+1 and uniform negatives from the items (LocalNegativesSampler,
    item_l2_norm), sampled softmax at temperature 0.05, AdamW."""
    rows_tensor = torch.tensor(item_rows, dtype=torch.int64)
    model.train()
    for _ in range(steps):
        histories = [random_history(int(n), item_rows, rng) for n in rng.integers(2, 2 * shape.max_len + 2, size=batch)]
        feats = [ref.eval_features(h[:-1], h[-1][1], shape.max_len, shape.gr_output_length) for h in histories]
        lengths = torch.cat([f[0] for f in feats])
        past_ids = torch.cat([f[1] for f in feats])
        stamps = torch.cat([f[2] for f in feats])
        past_ids[torch.arange(batch), lengths] = torch.tensor([h[-1][0] for h in histories])
        embeddings = model.get_item_embeddings(past_ids)
        outputs = model(lengths, past_ids, embeddings, {"timestamps": stamps})[:, :-1]
        supervision = past_ids[:, 1:]
        weights = ((supervision != 0) & (torch.arange(supervision.size(1)).unsqueeze(0) < lengths.unsqueeze(1))).float()

        def l2(x):
            return x / torch.clamp(torch.linalg.norm(x, dim=-1, keepdim=True), min=1e-6)

        positive = (outputs * l2(embeddings[:, 1:])).sum(-1, keepdim=True) / ref.DEFAULT_TEMPERATURE
        sampled = rows_tensor[torch.randint(0, len(item_rows), supervision.shape + (negatives,))]
        negative = torch.einsum("bnd,bnrd->bnr", outputs, l2(model.get_item_embeddings(sampled))) / ref.DEFAULT_TEMPERATURE
        negative = torch.where(sampled == supervision.unsqueeze(-1), torch.full_like(negative, -5e4), negative)
        loss = -torch.log_softmax(torch.cat([positive, negative], dim=-1), dim=-1)[..., 0]
        loss = (loss * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def trained_looking_model(shape, item_rows, seed):
    """Their init, then weights scaled so every part matters (their std-0.02 biases would hide
    a wrong bucket or position; equal item norms would hide a missing normalisation), then a
    few training steps (which also fill the optimizer state)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ref.build_model(max_item_id=shape.rows - 1, item_embedding_dim=shape.d, num_blocks=shape.blocks,
                            num_heads=shape.heads, dqk=shape.dqk, dv=shape.dv, max_sequence_length=shape.max_len,
                            gr_output_length=shape.gr_output_length, dropout_rate=0.2, linear_dropout_rate=0.2)
    with torch.no_grad():
        table = model._embedding_module._item_emb.weight
        table.mul_(torch.exp(0.7 * torch.randn(table.size(0), 1)) * 20.0)
        for layer in model._hstu._attention_layers:
            layer._rel_attn_bias._ts_w.normal_(0, 0.7)
            layer._rel_attn_bias._pos_w.normal_(0, 0.7)
            layer._uvqk.normal_(0, 1.5 / shape.d ** 0.5)
            layer._o.bias.normal_(0, 0.1)
    optimizer = ref.make_optimizer(model)
    train_steps(model, optimizer, shape, item_rows, rng)
    return model, optimizer


def make_case(workdir, shape, seed):
    case_dir = os.path.join(workdir, shape.name)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    rng = np.random.default_rng(seed)
    ids, item_rows = catalog(shape, rng)
    model, optimizer = trained_looking_model(shape, item_rows, seed)
    # Their file name (no extension; it spells b{blocks}-h{heads}-dqk{dqk}-dv{dv}).
    ddp_checkpoint = os.path.join(case_dir, os.path.basename(
        ref.trainer_checkpoint_name(model, max_sequence_length=shape.max_len)))
    plain_checkpoint = os.path.join(case_dir, "hstu_plain_state.pt")
    ref.save_checkpoint(model, optimizer, 100, ddp_checkpoint, ddp=True)
    ref.save_checkpoint(model, optimizer, 100, plain_checkpoint, ddp=False)
    item_ids_file = os.path.join(case_dir, "item_ids.txt")
    write_item_ids(item_ids_file, ids)
    return Case(shape, model, optimizer, ids, item_rows, case_dir, ddp_checkpoint, plain_checkpoint, item_ids_file)


def convert_command(seqrec, case, checkpoint, out, score="raw", temperature=None, heads=True, max_len=None,
                    linear_dim=None):
    shape = case.shape
    command = [seqrec, "convert", "--from", "hstu", checkpoint, "--item-ids", case.item_ids_file,
               "--max-len", str(max_len or shape.max_len), "--attention-dim", str(shape.dqk),
               "--linear-dim", str(linear_dim or shape.dv), "--out", out]
    if heads:
        command += ["--heads", str(shape.heads)]
    if score:
        command += ["--score", score]
    if temperature is not None:
        command += ["--temperature", str(temperature)]
    return command


# ---- requests and comparisons --------------------------------------------------------------

def recommend(seqrec, model_file, case, history, now):
    """`seqrec recommend` for every item; now=None leaves "now" out of the request."""
    body = {"user_interactions": [{"item_id": case.ids[row], "timestamp": ts} for row, ts in history],
            "k": len(case.item_rows), "recommend_seen": True}
    if now is not None:
        body["now"] = now
    return run([seqrec, "recommend", "--model", model_file, "--max-k", str(len(case.item_rows))], json.dumps(body))


def compact(case, expected):
    """parity_common.compare wants ids[0] = padding and every other id an item: keep the item
    rows (ascending, so ties keep catalog order)."""
    return ["[PAD]"] + [case.ids[row] for row in case.item_rows], np.concatenate(
        [[0.0], expected[np.array(case.item_rows)]])


def expected_scores(case, history, now, score="raw", temperature=ref.DEFAULT_TEMPERATURE):
    return ref.scores_for_history(case.model, history, now, case.shape.max_len, case.shape.gr_output_length,
                                  score=score, temperature=temperature, item_rows=case.item_rows)


def check_one(results, seqrec, model_file, case, label, history, now, expected, clock_bounds=None):
    """Compare seqrec's scores with `expected`; returns seqrec's scores by row (or None)."""
    response = recommend(seqrec, model_file, case, history, now)
    line = f"{case.shape.name:13s} {label:44s} n={len(history):4d}"
    if clock_bounds is not None:
        after = int(time.time()) + 1
        if expected_scores(case, history, after).tolist() != expected_scores(case, history, clock_bounds).tolist():
            results.record(False, f"{line} the clock moved across a bucket boundary; rerun")
            return None
    if response.returncode != 0:
        results.record(False, f"{line} recommend exit {response.returncode}: {one_line(response.stderr)}")
        return None
    ids, want = compact(case, expected)
    max_delta, top_ok, problem = compare(response.stdout, want, ids)
    if problem:
        results.record(False, f"{line} {problem}")
        return None
    ok = max_delta <= SCORE_TOLERANCE and top_ok
    results.record(ok, f"{line} max|delta|={max_delta:.2e} top{TOP_N}={'ok' if top_ok else 'DIFFERENT'}")
    got = np.zeros(case.shape.rows)
    row_of = {case.ids[row]: row for row in case.item_rows}
    for entry in json.loads(response.stdout)["recommendations"]:
        got[row_of[str(entry["id"])]] = float(entry["score"])
    return got


@functools.lru_cache(maxsize=None)
def bucket_thresholds():
    """The smallest |gap| of each bucket 1..128 under torch's own arithmetic (binary search)."""
    def bucket(x):
        return int(ref.log_bucket(torch.tensor([x], dtype=torch.int64))[0])
    out = []
    for k in range(1, ref.NUM_BUCKETS + 1):
        lo, hi = 1, 1 << 62
        while lo < hi:
            mid = (lo + hi) // 2
            if bucket(mid) >= k:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def boundary_histories(case):
    thresholds = bucket_thresholds()
    gaps = sorted({g for k in range(30, 71) for g in (thresholds[k - 1], thresholds[k - 1] - 1)}, reverse=True)
    now = BASE_TS + 1_500_000_000
    rows = case.item_rows
    L = case.shape.max_len
    out = []
    for start in range(0, len(gaps), L):
        chunk = gaps[start:start + L]
        history = [(rows[(start + i) % len(rows)], now - gap) for i, gap in enumerate(chunk)]
        out.append((f"gaps on bucket boundaries ({chunk[-1]}..{chunk[0]} s)", history, now))
    return out


def check_boundary_power(results, case):
    """The boundary histories must be able to catch the likeliest bucket mistake, a division in
    double precision (logf(x) / 0.301 promoted to double): the reference with that mistake
    must move some score by more than the tolerance."""
    def double_division(gaps):
        logs = torch.log(torch.abs(gaps).clamp(min=1)).double()
        return (logs / ref.BUCKET_LOG_DIVISOR).long()

    layers = [layer._rel_attn_bias for layer in case.model._hstu._attention_layers]
    worst = 0.0
    for _, history, now in boundary_histories(case):
        right = expected_scores(case, history, now)
        for bias in layers:
            bias._bucketization_fn = double_division
        try:
            wrong = expected_scores(case, history, now)
        finally:
            for bias in layers:
                bias._bucketization_fn = ref.log_bucket
        worst = max(worst, float(np.max(np.abs(right - wrong)[case.item_rows])))
    results.record(worst > 10 * SCORE_TOLERANCE,
                   f"{case.shape.name:13s} boundary histories catch a double-precision bucket division "
                   f"(reference moves by {worst:.2e})")


def histories(case, rng):
    """(label, history, now) for every kind of history the brief asks for."""
    L = case.shape.max_len
    rows = case.item_rows
    out = []

    def add(label, history, now_gap):
        out.append((label, history, history[-1][1] + now_gap))

    add("one item, now +1 day", random_history(1, rows, rng), 86_400)
    add("three items, minutes apart, now +30 s", random_history(3, rows, rng, gap_exponent_max=3.5), 30)
    add("L-1 items, gaps to 3e8 s", random_history(L - 1, rows, rng), 3_600)
    add("exactly L items", random_history(L, rows, rng), 7 * 86_400)
    add("L+1 items (oldest dropped)", random_history(L + 1, rows, rng, gap_exponent_max=4), 45)
    add("3L items, repeats", random_history(3 * L, rows, rng), 1_000)
    tied = random_history(min(L, 10) + 2, rows, rng)
    add("equal timestamps, now = them", [(row, BASE_TS + 500) for row, _ in tied], 0)
    spread = [(row, 0) for row, _ in random_history(min(L, 40), rows, rng)]
    times = BASE_TS + np.cumsum([10 ** (i % 10) for i in range(len(spread))])
    add("gaps 1 s .. 1e9 s, now +2e9 s", [(row, int(t)) for (row, _), t in zip(spread, times)], 2_000_000_000)
    add("millisecond timestamps, gaps to 1e12", random_history(min(L, 30), rows, rng, gap_exponent_max=12,
                                                               start=BASE_TS * 1000), 10 ** 11)
    add("now 5000 s before the last item", random_history(L // 2 + 1, rows, rng), -5_000)
    # Gaps from `now` exactly on a bucket's first value and one below it (buckets 30..70, up to
    # 1.4e9 s), L at a time so that every one reaches the model.
    for label, history, now in boundary_histories(case):
        out.append((label, history, now))
    return out


def check_time_sensitivity(results, seqrec, model_file, case, rng):
    """The same items at other timestamps, and the same history with another now: the
    reference's scores change (by > TIME_EFFECT_MIN) and seqrec's follow."""
    shape = case.shape
    length = min(shape.max_len, 12)
    base = random_history(length, case.item_rows, rng, gap_exponent_max=2)
    other = [(row, ts) for (row, _), (_, ts) in zip(base, random_history(length, case.item_rows, rng, 7.5))]
    pairs = [("same items, other timestamps", (base, base[-1][1] + 60), (other, other[-1][1] + 60)),
             ("same history, now +60 s vs +1e7 s", (base, base[-1][1] + 60), (base, base[-1][1] + 10_000_000))]
    for label, (history_a, now_a), (history_b, now_b) in pairs:
        want_a, want_b = expected_scores(case, history_a, now_a), expected_scores(case, history_b, now_b)
        effect = float(np.max(np.abs(want_a - want_b)[case.item_rows]))
        line = f"{shape.name:13s} time: {label:38s}"
        if effect <= TIME_EFFECT_MIN:
            results.record(False, f"{line} reference effect only {effect:.2e} (test weights too weak)")
            continue
        got_a = check_one(results, seqrec, model_file, case, f"time A: {label}", history_a, now_a, want_a)
        got_b = check_one(results, seqrec, model_file, case, f"time B: {label}", history_b, now_b, want_b)
        if got_a is None or got_b is None:
            continue
        seqrec_effect = float(np.max(np.abs(got_a - got_b)))
        results.record(seqrec_effect > TIME_EFFECT_MIN / 2,
                       f"{line} reference changes by {effect:.2e}, seqrec by {seqrec_effect:.2e}")


def check_shape(results, seqrec, workdir, shape, seed):
    case = make_case(workdir, shape, seed)
    models = {}
    for label, checkpoint in (("ddp", case.ddp_checkpoint), ("plain", case.plain_checkpoint)):
        out = os.path.join(case.dir, f"model-{label}.seqrec")
        conversion = run(convert_command(seqrec, case, checkpoint, out))
        if conversion.returncode != 0 or not os.path.exists(out):
            results.record(False, f"{shape.name:13s} convert ({label} keys) exit {conversion.returncode}: "
                                  f"{one_line(conversion.stderr)}")
        else:
            models[label] = out
    if not models:
        return

    rng = np.random.default_rng(seed + 1)
    cases = histories(case, rng)
    for label, model_file in models.items():
        for history_label, history, now in cases:
            check_one(results, seqrec, model_file, case, f"[{label}] {history_label}", history, now,
                      expected_scores(case, history, now))
    check_boundary_power(results, case)
    model_file = models.get("ddp") or models["plain"]
    check_time_sensitivity(results, seqrec, model_file, case, rng)

    # No "now": the server's clock in unix seconds. The history ends ~35 days ago, so the
    # buckets cannot change while the request runs (checked against the clock after it).
    start = int(time.time())
    history = random_history(min(shape.max_len, 6), case.item_rows, rng, gap_exponent_max=4,
                             start=start - 3_000_000)
    check_one(results, seqrec, model_file, case, "no now: the clock (unix seconds)", history, None,
              expected_scores(case, history, start), clock_bounds=start)

    # Softmax over the items at the default (0.05) and at an explicit temperature.
    for temperature in (None, 0.2):
        out = os.path.join(case.dir, f"model-softmax-{temperature}.seqrec")
        conversion = run(convert_command(seqrec, case, case.ddp_checkpoint, out, score="softmax",
                                         temperature=temperature))
        label = f"softmax T={temperature or 'default 0.05'}"
        if conversion.returncode != 0:
            results.record(False, f"{shape.name:13s} convert ({label}) exit {conversion.returncode}: "
                                  f"{one_line(conversion.stderr)}")
            continue
        for history_label, history, now in (cases[1], cases[3]):
            expected = expected_scores(case, history, now, score="softmax",
                                       temperature=temperature or ref.DEFAULT_TEMPERATURE)
            check_one(results, seqrec, out, case, f"{label}: {history_label}", history, now, expected)


# ---- refused conversions -------------------------------------------------------------------

def check_refused(results, label, command, case_dir, out, must_mention):
    """Non-zero exit, exactly one stderr line mentioning each of `must_mention`
    (case-insensitive), and no output file."""
    result = run(command)
    leftovers = [name for name in os.listdir(case_dir) if name.startswith(os.path.basename(out))]
    record_refusal(results, f"error:{label:30s}", result, must_mention, leftovers)


def check_errors(results, seqrec, workdir):
    shape = Shape("errors", d=16, blocks=2, heads=2, dqk=4, dv=6, max_len=8, gr_output_length=10,
                  rows=41, non_items=4, id_style="raw")
    case = make_case(workdir, shape, seed=900)
    padded = shape.max_len + shape.gr_output_length + 1
    last = shape.blocks - 1

    def saved(name, state):
        """A trainer-layout file with `state` as its model_state_dict (optimizer state kept)."""
        path = os.path.join(case.dir, name)
        torch.save({"epoch": 100, "model_state_dict": state,
                    "optimizer_state_dict": case.optimizer.state_dict()}, path)
        return path

    def out_for(label):
        return os.path.join(case.dir, label + ".seqrec")

    # A refusal proves something only if the same command with good input converts.
    baseline = run(convert_command(seqrec, case, case.ddp_checkpoint, out_for("baseline")))
    if baseline.returncode != 0 or not os.path.exists(out_for("baseline")):
        results.record(False, f"error:{'baseline':30s} the valid checkpoint does not convert (exit "
                              f"{baseline.returncode}: {one_line(baseline.stderr)}); refusal checks skipped")
        return
    results.record(True, f"error:{'baseline':30s} the valid checkpoint converts")

    # No --heads, in a file whose name says nothing.
    unnamed = os.path.join(case.dir, "checkpoint.pt")
    ref.save_checkpoint(case.model, case.optimizer, 100, unnamed, ddp=True)
    check_refused(results, "no --heads", convert_command(seqrec, case, unnamed, out_for("no_heads"), heads=False),
                  case.dir, out_for("no_heads"), ["--heads"])

    truncated = os.path.join(case.dir, "truncated.pt")
    ref.save_checkpoint(case.model, case.optimizer, 100, truncated, ddp=True)
    with open(truncated, "r+b") as file:
        file.truncate(os.path.getsize(truncated) // 2)
    check_refused(results, "truncated", convert_command(seqrec, case, truncated, out_for("truncated")),
                  case.dir, out_for("truncated"), ["truncated.pt"])

    ddp_state = ref.DistributedDataParallelStandIn(case.model).state_dict()
    for key, prefixed in ((f"_hstu._attention_layers.{last}._rel_attn_bias._ts_w", True),
                          ("_hstu._attention_layers.0._o.bias", False)):
        state = ddp_state if prefixed else case.model.state_dict()
        full_key = ("module." if prefixed else "") + key
        path = saved(f"missing_{key.replace('.', '_')}.pt", {k: v for k, v in state.items() if k != full_key})
        label = f"missing {full_key}"
        out = out_for(f"missing_{'ddp' if prefixed else 'plain'}")
        check_refused(results, label, convert_command(seqrec, case, path, out), case.dir, out, [key])

    check_refused(results, f"--max-len {padded + 1} > N={padded}",
                  convert_command(seqrec, case, case.ddp_checkpoint, out_for("max_len"), max_len=padded + 1),
                  case.dir, out_for("max_len"), ["--max-len"])
    check_refused(results, "--linear-dim contradicts _o.weight",
                  convert_command(seqrec, case, case.ddp_checkpoint, out_for("linear_dim"), linear_dim=shape.dv + 1),
                  case.dir, out_for("linear_dim"), ["--linear-dim"])

    short_ids = os.path.join(case.dir, "short_item_ids.txt")
    write_item_ids(short_ids, case.ids[:-1])
    command = convert_command(seqrec, case, case.ddp_checkpoint, out_for("short_ids"))
    command[command.index("--item-ids") + 1] = short_ids
    check_refused(results, "item-id file one line short", command, case.dir, out_for("short_ids"),
                  ["short_item_ids.txt"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True, help="path to the seqrec binary")
    parser.add_argument("--workdir", required=True, help="scratch folder for checkpoints and models")
    parser.add_argument("--case", default="all", choices=CASES + ["all"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    seqrec = seqrec_binary(args.seqrec, args.workdir)
    if seqrec is None:
        return 1

    results = Results()
    selected = CASES if args.case == "all" else [args.case]
    for index, shape in enumerate(SHAPES):
        if shape.name in selected:
            check_shape(results, seqrec, args.workdir, shape, seed=500 + index)
    if "errors" in selected:
        check_errors(results, seqrec, args.workdir)
    return finish(results)


if __name__ == "__main__":
    sys.exit(main())
