#!/usr/bin/python3
"""Parity test: `seqrec convert --from tisasrec` + `seqrec recommend` against TiSASRec.pytorch.

For every model.py generation TiSASRec.pytorch has saved checkpoints with (2020-09: no FFN
activation and the item_num+1-row time_matrix_K_emb; 2020-10: the same with ReLU; current), this
builds the model with the real torch.nn layers (tests/parity/tisasrec_reference.py), gives it
trained-looking weights, saves `model.state_dict()` under main.py's file name, converts it with
seqrec, sends timestamped histories through `seqrec recommend` (short, exactly maxlen, longer
than maxlen, a single item, repeated timestamps, times that round half to even, unsorted input
with ties, irregular and millisecond gaps, the same items at other times) and compares every
item's score with `model.predict` on the inputs TiSASRec.pytorch's pipeline builds (max |delta|
<= 1e-4, same top-10 except between exact ties). It also converts the published ml-1m
checkpoint when SEQREC_PUBLISHED_CHECKPOINTS names a directory holding tisasrec-ml1m/ (the
case is skipped otherwise), checks the default score (sigmoid of the logit), and checks that
malformed checkpoints are refused with one line naming the problem.

Every expected value is computed by PyTorch at test time.

Usage:
  /usr/bin/python3 tests/parity/test_tisasrec_parity.py --seqrec build/seqrec --workdir DIR
      [--case 2020-09|2020-10|current|published|errors|all]
Environment:
  SEQREC_PUBLISHED_CHECKPOINTS  a directory containing tisasrec-ml1m/<PUBLISHED_NAME> (read, never
                                copied); unset or absent: the published case is skipped
Exit status: 0 all passed, 1 any failure, 77 skipped (no torch; or --case published without
the published checkpoint).
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys

try:
    import numpy as np
    import torch
except ImportError as error:
    print(f"SKIPPED: PyTorch/numpy not importable by {sys.executable} ({error})")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tisasrec_reference as reference  # noqa: E402  (needs the path above)
from parity_common import (SCORE_TOLERANCE, TOP_N, Results, compare, history_of_length, one_line,  # noqa: E402
                           record_refusal, run, seqrec_binary)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The published checkpoint is not in the repository: SEQREC_PUBLISHED_CHECKPOINTS names the
# directory that holds tisasrec-ml1m/ (scripts/check-fresh-machine.sh --published DIR sets it).
PUBLISHED_ENV = "SEQREC_PUBLISHED_CHECKPOINTS"
PUBLISHED_ROOT = os.environ.get(PUBLISHED_ENV, "")
PUBLISHED_DIR = os.path.join(PUBLISHED_ROOT, "tisasrec-ml1m") if PUBLISHED_ROOT else ""
PUBLISHED_NAME = "TiSASRec.epoch=601.lr=0.001.layer=2.head=1.hidden=50.maxlen=200.pth"
PUBLISHED = dict(items=3416, hidden=50, heads=1, blocks=2, maxlen=200, time_span=256)

CASES = ("2020-09", "2020-10", "current", "published", "errors")
# The FFN activation of each generation, as seqrec's --ffn-activation spells it.
ACTIVATION = {"2020-09": "none", "2020-10": "relu", "current": "relu"}
# Generations whose activation the converter can tell from the weights: time_matrix_K_emb with
# time_span+1 rows is the current code (ReLU); item_num+1 rows is pre-2020-11 code, and the
# converter assumes the 2020-09 code of the published checkpoint (no activation). A 2020-10
# checkpoint has the same shapes, so it always needs --ffn-activation relu.
ACTIVATION_DETECTABLE = ("2020-09", "current")

T0 = 1_600_000_000  # 2020-09-13, seconds


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    maxlen: int
    blocks: int
    items: int
    time_span: int
    # False: leave the flag out so the converter must find the value itself (file name for
    # --heads and --max-len, time_matrix_V_emb for --time-span, the weights for the activation).
    pass_heads: bool
    pass_max_len: bool
    pass_time_span: bool
    pass_activation: bool
    # True: rows get raw ids through cleanAndsort's set renumbering and --item-ids; else row r = id r.
    item_ids: bool


SHAPES = [
    Shape("ml1m_like_d50_h1_L200_b2", hidden=50, heads=1, maxlen=200, blocks=2, items=3416, time_span=256,
          pass_heads=False, pass_max_len=False, pass_time_span=False, pass_activation=False, item_ids=True),
    Shape("d32_h2_L20_b1_span8", hidden=32, heads=2, maxlen=20, blocks=1, items=60, time_span=8,
          pass_heads=False, pass_max_len=True, pass_time_span=True, pass_activation=True, item_ids=False),
    Shape("d48_h4_L12_b3_span64", hidden=48, heads=4, maxlen=12, blocks=3, items=150, time_span=64,
          pass_heads=True, pass_max_len=False, pass_time_span=False, pass_activation=True, item_ids=True),
]
ERROR_SHAPE = SHAPES[2]


# ----------------------------------------------------------------------------------------------
# Models

def train_step_batches(generation, shape):
    """2020-09/2020-10 build the query mask with expand(), which only works for one user per
    batch when there is more than one head: their trainer could only run those with batch 1."""
    if generation != "current" and shape.heads > 1:
        return 4, 1
    return 2, 3


def trained_looking_model(generation, shape, seed):
    """A model whose every parameter is non-trivial: the generation's init (PyTorch defaults up to
    2020-11, then main.py's xavier_uniform_ over every matrix, padding row included), random
    LayerNorm affines and biases (their defaults 1/0 would hide mapping mistakes), then a few Adam
    steps of main.py's BCE training (with its l2_emb terms) on random timestamped histories."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = reference.build_model(generation, shape.items, shape.hidden, shape.heads, shape.blocks,
                                  shape.maxlen, shape.time_span)
    if generation == "current":
        for param in model.parameters():
            if param.dim() >= 2:
                torch.nn.init.xavier_uniform_(param.data)
    with torch.no_grad():
        if generation != "current":
            # Embedding's N(0, 1) init, brought to the row norms of the published checkpoint
            # (item rows ~5, position rows ~3, time rows ~1.5 at d = 50).
            for table, scale in ((model.item_emb, 0.7), (model.abs_pos_K_emb, 0.45), (model.abs_pos_V_emb, 0.45),
                                 (model.time_matrix_K_emb, 0.2), (model.time_matrix_V_emb, 0.3)):
                table.weight.mul_(scale)
        for name, param in model.named_parameters():
            if "layernorm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.25 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))

    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.98))
    bce = torch.nn.BCEWithLogitsLoss()
    embeddings = (model.item_emb, model.abs_pos_K_emb, model.abs_pos_V_emb, model.time_matrix_K_emb,
                  model.time_matrix_V_emb)
    model.train()
    steps, batch = train_step_batches(generation, shape)
    for _ in range(steps):
        seqs, matrices, poss, negs = [], [], [], []
        for _ in range(batch):
            length = int(rng.integers(3, 2 * shape.maxlen))
            history = random_history(length, shape, rng)
            # sample(): the input is the user's train items but the last, the targets the next
            # items; Relation(): the time matrix of that input; times normalised over all items.
            normalized = reference.normalized_history(history)
            seq, matrix = reference.window(normalized[:-1], shape.maxlen, shape.time_span)
            pos, _ = reference.window(normalized[1:], shape.maxlen, shape.time_span)
            seqs.append(seq[0])
            matrices.append(matrix[0])
            poss.append(pos[0])
            negs.append(np.where(pos[0] != 0, rng.integers(1, shape.items + 1, size=shape.maxlen), 0))
        seq, matrix, pos, neg = np.stack(seqs), np.stack(matrices), np.stack(poss), np.stack(negs)
        pos_logits, neg_logits = model(None, seq, matrix, pos, neg)
        where = np.where(pos != 0)
        loss = bce(pos_logits[where], torch.ones_like(pos_logits[where]))
        loss = loss + bce(neg_logits[where], torch.zeros_like(neg_logits[where]))
        for table in embeddings:
            loss = loss + 0.00005 * torch.norm(table.weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def random_history(length, shape, rng):
    rows = history_of_length(length, shape.items, rng)
    gaps = rng.choice([0, 1, 30, 60, 3600, 86400, 7 * 86400], size=length)
    return [(row, int(T0 + stamp)) for row, stamp in zip(rows, np.cumsum(gaps))]


# ----------------------------------------------------------------------------------------------
# Histories: (name, [(row, timestamp), ...] in the order the request sends them)

def test_histories(shape, rng):
    L, n = shape.maxlen, shape.items

    def rows(count):
        return history_of_length(count, n, rng)

    def at(row_list, stamps):
        return [(row, int(stamp)) for row, stamp in zip(row_list, stamps)]

    histories = [
        ("single_item", at(rows(1), [T0])),
        ("short_hourly", at(rows(5), T0 + 3600 * np.arange(5))),
        ("exactly_maxlen", at(rows(L), T0 + np.cumsum(rng.choice([60, 120, 3600, 86400], size=L)))),
    ]
    # Longer than maxlen; the smallest gap (7 s) is between the oldest items, which fall out of
    # the window: it still sets the scale (cleanAndsort scales over the whole history).
    gaps = np.where(np.arange(3 * L) < L // 2, 7, rng.choice([600, 1800, 86400], size=3 * L))
    histories.append(("longer_than_maxlen", at(rows(3 * L), T0 + np.cumsum(gaps))))
    # Ties: scale 100 s, equal timestamps keep the order they were sent in.
    count = min(L, 9)
    histories.append(("repeated_timestamps", at(rows(count), T0 + 100 * np.array([0, 0, 1, 1, 1, 2, 5, 5, 9])[:count])))
    # Scale 2 s: (t - t_min) / 2 = 0, 1, 2.5, 3.5, 4.5, 5.5, 6.5, 8, 9, 10.5 -> Python's round
    # gives 0, 1, 2, 4, 4, 6, 6, 8, 9, 10 (half to even), not 3, 4, 5, 6, 7, 11.
    offsets = [0, 2, 5, 7, 9, 11, 13, 16, 18, 21][:min(L, 10)]
    histories.append(("round_half_to_even", at(rows(len(offsets)), T0 + np.array(offsets))))
    # Sent out of time order, with ties: the stable sort keeps the tied items in sent order.
    count = min(L, 10)
    stamps = T0 + 30 * np.array([4, 0, 2, 2, 9, 0, 4, 7, 2, 9])[:count]
    histories.append(("unsorted_with_ties", at(rows(count), stamps)))
    histories.append(("one_timestamp", at(rows(min(L, 6)), [T0] * min(L, 6))))
    count = max(2, L - 2)
    irregular = np.maximum(1, rng.lognormal(mean=7.0, sigma=2.5, size=count)).astype(np.int64)
    histories.append(("irregular_gaps", at(rows(count), T0 + np.cumsum(irregular))))
    count = min(L + 3, 40)
    millis = rng.integers(1, 5, size=count) * 1000 + rng.integers(0, 3, size=count)
    histories.append(("milliseconds", at(rows(count), 1_700_000_000_000 + np.cumsum(millis))))
    return histories


def time_pair(shape, rng):
    """The same items in the same order, at two different sets of timestamps."""
    count = min(shape.maxlen, 12)
    row_list = history_of_length(count, shape.items, rng)
    regular = [(row, T0 + 3600 * k) for k, row in enumerate(row_list)]
    stamps = T0 + np.cumsum(rng.choice([1, 5, 600, 86400, 30 * 86400], size=count))
    irregular = [(row, int(stamp)) for row, stamp in zip(row_list, stamps)]
    return ("same_items_hourly", regular), ("same_items_irregular", irregular)


# ----------------------------------------------------------------------------------------------
# seqrec

def catalog(shape, seed):
    """ids[row] for rows 0..items (ids[0] is the padding row). With item ids: raw integer ids
    renumbered as cleanAndsort does (the iteration order of a Python set), written to the file
    the README's one line writes."""
    if not shape.item_ids:
        return ["[PAD]"] + [str(row) for row in range(1, shape.items + 1)], None
    rng = np.random.default_rng(seed)
    raw = [int(item) for item in rng.choice(np.arange(1, 10**6), size=shape.items, replace=False)]
    item_map = reference.item_map_of(raw)
    ids = ["[PAD]"] + [None] * shape.items
    for item, row in item_map.items():
        ids[row] = str(item)
    return ids, item_map


def convert_command(seqrec, checkpoint, out, shape, activation, item_ids_file, raw_scores=True):
    command = [seqrec, "convert", "--from", "tisasrec", checkpoint, "--out", out]
    if raw_scores:
        command += ["--score", "raw"]
    if item_ids_file:
        command += ["--item-ids", item_ids_file]
    if shape.pass_heads:
        command += ["--heads", str(shape.heads)]
    if shape.pass_max_len:
        command += ["--max-len", str(shape.maxlen)]
    if shape.pass_time_span:
        command += ["--time-span", str(shape.time_span)]
    if activation:
        command += ["--ffn-activation", activation]
    return command


def request_json(history, ids, k):
    interactions = [{"item_id": ids[row], "timestamp": int(stamp)} for row, stamp in history]
    return json.dumps({"user_interactions": interactions, "k": k, "recommend_seen": True})


def recommend_all(seqrec, model_file, history, ids):
    return run([seqrec, "recommend", "--model", model_file, "--max-k", str(len(ids) - 1)],
               request_json(history, ids, len(ids) - 1))


def check_history(results, seqrec, converted, ids, history, expected, line):
    response = recommend_all(seqrec, converted, history, ids)
    if response.returncode != 0:
        results.record(False, f"{line} recommend exit {response.returncode}: {one_line(response.stderr)}")
        return
    max_delta, top_ok, problem = compare(response.stdout, expected, ids)
    if problem:
        results.record(False, f"{line} {problem}")
        return
    ok = max_delta <= SCORE_TOLERANCE and top_ok
    results.record(ok, f"{line} max|delta|={max_delta:.2e} top{TOP_N}={'ok' if top_ok else 'DIFFERENT'}")


def convert(results, command, converted, line):
    conversion = run(command)
    if conversion.returncode != 0 or not os.path.exists(converted):
        results.record(False, f"{line} convert exit {conversion.returncode}: {one_line(conversion.stderr)}"
                              f" -- {' '.join(command[1:])}")
        return False
    return True


def check_pipeline(results):
    """Checks of the reference pipeline itself, on hand-computed values."""
    half_even = reference.normalized_history([(k + 1, T0 + o) for k, o in enumerate([0, 2, 5, 7, 9, 11, 13, 16, 18, 21])])
    results.record([t for _, t in half_even] == [1, 2, 3, 5, 5, 7, 7, 9, 10, 11],
                   f"pipeline: scale 2, (t - t_min)/2 = k + 0.5 rounds half to even: {[t for _, t in half_even]}")
    ties = reference.normalized_history([(1, 50), (2, 10), (3, 50), (4, 10), (5, 30)])
    results.record(ties == [(2, 1), (4, 1), (5, 2), (1, 3), (3, 3)],
                   f"pipeline: stable sort, scale 20 from the smallest non-zero gap: {ties}")
    whole = reference.normalized_history([(1, 0), (2, 3), (3, 300), (4, 600)])
    seq, matrix = reference.window(whole[-2:], 4, 150)
    results.record(seq[0].tolist() == [0, 0, 3, 4] and matrix[0].tolist() == [
        [0, 0, 101, 150], [0, 0, 101, 150], [101, 101, 0, 100], [150, 150, 100, 0]],
        f"pipeline: t' from the whole history (scale 3), padded slots at time 0, clamp at time_span: "
        f"{seq[0].tolist()} {matrix[0].tolist()}")
    one = reference.model_inputs([(7, 123)], 3, 5)
    results.record(one[0][0].tolist() == [0, 0, 7] and one[1][0].tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]],
                   f"pipeline: a single item is at t' = 1: {one[1][0].tolist()}")


def check_time_sensitive(results, model, pair, label):
    """A check of the test itself: the reference must react to the timestamps alone."""
    (_, first), (_, second) = pair
    delta = float(np.max(np.abs(reference.predict_all(model, first) - reference.predict_all(model, second))))
    results.record(delta > 1e-3, f"{label} reference is time-sensitive: same items at other times "
                                 f"move the logits by {delta:.3g}")


def check_generation(results, seqrec, workdir, generation):
    for index, shape in enumerate(SHAPES):
        label = f"{generation:8s} {shape.name:26s}"
        case_dir = os.path.join(workdir, generation, shape.name)
        shutil.rmtree(case_dir, ignore_errors=True)
        os.makedirs(case_dir)
        model = trained_looking_model(generation, shape, seed=300 + index)
        checkpoint = reference.save_checkpoint(model, case_dir, num_epochs=5)

        ids, item_map = catalog(shape, seed=400 + index)
        item_ids_file = None
        if item_map is not None:
            item_ids_file = os.path.join(case_dir, "item_ids.txt")
            reference.write_item_ids(item_map, item_ids_file)
        pass_activation = shape.pass_activation or generation not in ACTIVATION_DETECTABLE
        activation = ACTIVATION[generation] if pass_activation else None

        converted = os.path.join(case_dir, "model.seqrec")
        command = convert_command(seqrec, checkpoint, converted, shape, activation, item_ids_file)
        if not convert(results, command, converted, label):
            continue

        rng = np.random.default_rng(500 + index)
        histories = test_histories(shape, rng)
        pair = time_pair(shape, rng)
        check_time_sensitive(results, model, pair, label)
        for name, history in histories + list(pair):
            expected = reference.predict_all(model, history)
            check_history(results, seqrec, converted, ids, history, expected,
                          f"{label} {name:20s} n={len(history):3d}")

        if index == 1:
            check_default_score(results, seqrec, case_dir, shape, model, checkpoint, activation,
                                item_ids_file, ids, histories[1:3], label)


def check_default_score(results, seqrec, case_dir, shape, model, checkpoint, activation, item_ids_file,
                        ids, histories, label):
    """Without --score the API reports sigmoid(logit) (TiSASRec.pytorch trains with BCE)."""
    converted = os.path.join(case_dir, "model_default_score.seqrec")
    command = convert_command(seqrec, checkpoint, converted, shape, activation, item_ids_file, raw_scores=False)
    if not convert(results, command, converted, f"{label} default score"):
        return
    for name, history in histories:
        logits = torch.from_numpy(reference.predict_all(model, history)).float()
        expected = torch.sigmoid(logits).double().numpy()
        check_history(results, seqrec, converted, ids, history, expected,
                      f"{label} {name:20s} score=sigmoid")


# ----------------------------------------------------------------------------------------------
# The published ml-1m checkpoint (read from $SEQREC_PUBLISHED_CHECKPOINTS, never copied)

def check_published(results, seqrec, workdir):
    """Returns False when the case was skipped (no published checkpoint on this machine)."""
    if not PUBLISHED_ROOT:
        print(f"SKIP published checkpoint: {PUBLISHED_ENV} is not set (set it to a directory "
              f"containing tisasrec-ml1m/{PUBLISHED_NAME})")
        return False
    if not os.path.isdir(PUBLISHED_DIR):
        print(f"SKIP published checkpoint: {PUBLISHED_ENV}={PUBLISHED_ROOT} has no tisasrec-ml1m/ directory")
        return False
    checkpoint = os.path.join(PUBLISHED_DIR, PUBLISHED_NAME)
    if not os.path.isfile(checkpoint):
        results.record(False, f"published: {checkpoint} missing from an existing {PUBLISHED_DIR}")
        return True
    p = PUBLISHED
    label = f"{'published':8s} {'ml-1m 9ddc21e':26s}"
    state_dict = torch.load(checkpoint, map_location="cpu")
    model = reference.build_model("2020-09", p["items"], p["hidden"], p["heads"], p["blocks"], p["maxlen"],
                                  p["time_span"])
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        results.record(False, f"{label} the 2020-09 reference does not load it: {one_line(str(error))}")
        return
    model.eval()
    relu_model = reference.build_model("2020-10", p["items"], p["hidden"], p["heads"], p["blocks"], p["maxlen"],
                                       p["time_span"])
    relu_model.load_state_dict(state_dict, strict=True)
    relu_model.eval()

    case_dir = os.path.join(workdir, "published")
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    # The real ids are ml-1m movie ids renumbered by cleanAndsort's set, which needs their data
    # file; stand-in raw ids through the same renumbering test the mapping just as well.
    shape = Shape("published", hidden=p["hidden"], heads=p["heads"], maxlen=p["maxlen"], blocks=p["blocks"],
                  items=p["items"], time_span=p["time_span"], pass_heads=False, pass_max_len=False,
                  pass_time_span=False, pass_activation=False, item_ids=True)
    ids, item_map = catalog(shape, seed=600)
    item_ids_file = os.path.join(case_dir, "item_ids.txt")
    reference.write_item_ids(item_map, item_ids_file)

    rng = np.random.default_rng(601)
    histories = []
    for length in (1, 7, 60, 200, 450):
        # ml-1m-like: seconds in 2000-2003, bursts of ratings (ties, seconds apart) and long pauses.
        gaps = rng.choice([0, 1, 2, 5, 40, 300, 3600, 86400, 30 * 86400], size=length,
                          p=[.1, .15, .1, .15, .2, .1, .1, .05, .05])
        rows = history_of_length(length, p["items"], rng)
        histories.append((f"ml1m_like_{length}", [(row, int(956_703_932 + s)) for row, s in zip(rows, np.cumsum(gaps))]))
    pair = time_pair(shape, rng)
    check_time_sensitive(results, model, pair, label)

    expected_of = {name: reference.predict_all(model, history) for name, history in histories + list(pair)}
    relu_delta = max(float(np.max(np.abs(expected_of[name] - reference.predict_all(relu_model, history))))
                     for name, history in histories[1:3])
    results.record(relu_delta > 1e-3, f"{label} reference: a ReLU in the FFN would move its logits by "
                                      f"{relu_delta:.3g} (--ffn-activation matters)")
    finite = all(np.all(np.isfinite(expected)) and np.std(expected[1:]) > 0.1 for expected in expected_of.values())
    results.record(finite, f"{label} reference logits finite and spread")

    converted = os.path.join(case_dir, "model.seqrec")
    command = convert_command(seqrec, checkpoint, converted, shape, "none", item_ids_file)
    if convert(results, command, converted, label):
        for name, history in histories + list(pair):
            check_history(results, seqrec, converted, ids, history, expected_of[name],
                          f"{label} {name:20s} n={len(history):3d}")

    # With no flag but the score: heads and maxlen from the file name, time_span from
    # time_matrix_V_emb, no activation because time_matrix_K_emb has item_num+1 rows.
    converted = os.path.join(case_dir, "model_detected.seqrec")
    command = convert_command(seqrec, checkpoint, converted, shape, None, item_ids_file)
    if convert(results, command, converted, f"{label} detected"):
        name, history = histories[2]
        check_history(results, seqrec, converted, ids, history, expected_of[name],
                      f"{label} {name:20s} detected settings")


# ----------------------------------------------------------------------------------------------
# Malformed checkpoints

def check_refused(results, seqrec, workdir, shape, label, write_checkpoint, must_mention):
    """A malformed checkpoint: non-zero exit, exactly one stderr line mentioning each of
    `must_mention` (case-insensitive), and nothing but the checkpoint left in its folder."""
    case_dir = os.path.join(workdir, "errors", label)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    checkpoint = os.path.join(case_dir, reference.checkpoint_name(
        reference.model_args(hidden_units=shape.hidden, num_heads=shape.heads, num_blocks=shape.blocks,
                             maxlen=shape.maxlen, time_span=shape.time_span), 5))
    write_checkpoint(checkpoint)
    out = os.path.join(case_dir, "model.seqrec")
    conversion = run(convert_command(seqrec, checkpoint, out, shape, "relu", None))

    leftovers = sorted(set(os.listdir(case_dir)) - {os.path.basename(checkpoint)})
    record_refusal(results, f"{'errors':8s} {label:26s}", conversion, must_mention, leftovers)


def check_errors(results, seqrec, workdir):
    shape = ERROR_SHAPE
    model = trained_looking_model("current", shape, seed=700)
    state = model.state_dict()
    last_block = shape.blocks - 1

    def truncated(path):
        torch.save(state, path)
        size = os.path.getsize(path)
        with open(path, "r+b") as file:
            file.truncate(size // 2)

    def without(key):
        def write(path):
            torch.save({name: value for name, value in state.items() if name != key}, path)
        return write

    wrong_shape_key = "abs_pos_V_emb.weight"
    def wrong_shape(path):
        broken = dict(state)
        broken[wrong_shape_key] = torch.randn(shape.maxlen - 1, shape.hidden)  # [maxlen, d] expected
        torch.save(broken, path)

    conv_key = f"forward_layers.{last_block}.conv2.bias"
    time_key = "time_matrix_V_emb.weight"
    check_refused(results, seqrec, workdir, shape, "truncated", truncated, [os.path.basename(
        reference.checkpoint_name(model.args, 5))])
    check_refused(results, seqrec, workdir, shape, "missing_conv_bias", without(conv_key), [conv_key])
    check_refused(results, seqrec, workdir, shape, "missing_time_table", without(time_key), [time_key])
    check_refused(results, seqrec, workdir, shape, "wrong_shape", wrong_shape, [wrong_shape_key])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True, help="path to the seqrec binary")
    parser.add_argument("--workdir", required=True, help="scratch folder for checkpoints and models")
    parser.add_argument("--case", default="all", choices=list(CASES) + ["all"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    seqrec = seqrec_binary(args.seqrec, args.workdir)
    if seqrec is None:
        return 1

    results = Results()
    check_pipeline(results)
    published_skipped = False
    for case in (CASES if args.case == "all" else [args.case]):
        if case in ACTIVATION:
            check_generation(results, seqrec, args.workdir, case)
        elif case == "published":
            published_skipped = check_published(results, seqrec, args.workdir) is False
        else:
            check_errors(results, seqrec, args.workdir)
    print(f"{results.passed} passed, {results.failed} failed")
    if results.failed:
        return 1
    # Asked for the published case alone, and it could not run: a skip, not a pass.
    return 77 if args.case == "published" and published_skipped else 0


if __name__ == "__main__":
    sys.exit(main())
