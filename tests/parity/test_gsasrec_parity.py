#!/usr/bin/python3
"""Parity test: `seqrec convert --from gsasrec` + `seqrec recommend` against gSASRec-pytorch.

For each model generation gSASRec-pytorch has saved checkpoints in (FFN with or without ReLU,
separate or tied output embeddings), this builds the model with the real torch.nn layers
(tests/parity/gsasrec_reference.py), gives it trained-looking weights (torch's default init,
as gSASRec-pytorch has no init of its own; random LayerNorm affines and biases; a few Adam
steps of its gBCE loss), saves `model.state_dict()` under train_gsasrec.py's file name
(colons and dots included; one checkpoint with the cuda:0 storage location a GPU-trained one
has), writes an item-id file, converts it with seqrec and compares every item's score from
`seqrec recommend` with the reference logits (max |delta| <= 1e-4, same top-10 except between
exact ties) for histories shorter than, exactly, and longer than L, with repeated items, with
1 to 4 heads. The `errors` case checks that broken checkpoints and flags are refused with one
stderr line naming the problem and no output file.

The item-id file has num_items + 1 lines: line r is the raw id of embedding row r for
r = 1..num_items; line 0 (row 0, which gSASRec never uses) is ignored; the padding row
num_items + 1 is not listed. Without --item-ids, row r has id r (gSASRec-pytorch's data
files use the rows themselves as ids).

Every expected value is computed by PyTorch at test time.

Usage (CTest runs one case per test):
  /usr/bin/python3 tests/parity/test_gsasrec_parity.py --seqrec build/seqrec --workdir DIR
      [--case relu|no_ffn_relu|tied|tied_no_ffn_relu|errors|all]
Exit status: 0 all passed, 1 any failure, 77 skipped (no torch).
"""

import argparse
import dataclasses
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
import gsasrec_reference as gr  # noqa: E402  (needs the path above)
from parity_common import (SCORE_TOLERANCE, TOP_N, Results, compare, finish, history_of_length, one_line,  # noqa: E402
                           recommend_all, record_refusal, run, seqrec_binary)

MODEL_CASES = ("relu", "no_ffn_relu", "tied", "tied_no_ffn_relu")

# The test's case -> the converter's --variant (None: leave the flag out, the default).
# Tied and separate output tables are told apart by the converter from the state_dict
# (output_embedding.weight present or not), so the tied cases need no flag of their own.
CONVERTER_VARIANT = {
    "relu": None,
    "no_ffn_relu": "no_ffn_relu",
    "tied": None,
    "tied_no_ffn_relu": "no_ffn_relu",
}

# What `score` reports without --score. gSASRec trains a per-item binary classifier (gBCE is
# BCE with a transformed positive logit), so sigmoid(logit); see docs/sources/gsasrec.md.
DEFAULT_SCORE = "sigmoid"

# gSASRec checkpoints carry no head count: the converter must be told (docs/sources/gsasrec.md).
HEADS_FLAG_REQUIRED = True

GBCE_T = 0.75


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    d: int
    heads: int
    maxlen: int
    blocks: int
    items: int          # num_items: rows 1..items are items
    negs: int = 16      # negs_per_pos for the few training steps (and the file name)
    # Line 0 of the item-id file ("[PAD]", "" or any text: it is ignored); None: no --item-ids.
    line0: object = "[PAD]"
    storage_location: object = None   # "cuda:0": saved as from a GPU
    # Input embeddings (item and position tables) times this before training: small-variance
    # LayerNorm inputs, where LayerNorm's eps (1e-5) visibly moves the scores.
    input_scale: float = 1.0


SHAPES = [
    Shape("d64_h1_L50_b2", d=64, heads=1, maxlen=50, blocks=2, items=300, storage_location="cuda:0"),
    Shape("d48_h4_L20_b2", d=48, heads=4, maxlen=20, blocks=2, items=500, line0=""),
    Shape("d32_h2_L8_b3", d=32, heads=2, maxlen=8, blocks=3, items=97, line0=None),
    Shape("d48_h3_L12_b1_small_inputs", d=48, heads=3, maxlen=12, blocks=1, items=150, input_scale=0.02),
]
# The shipped ML-1M configuration (config_ml1m.py: d 128, 1 head, L 200, 2 blocks; 3416 items).
ML1M_SHAPE = Shape("ml1m_d128_h1_L200_b2", d=128, heads=1, maxlen=200, blocks=2, items=3416, negs=256)
ERRORS_SHAPE = Shape("d32_h2_L8_b2", d=32, heads=2, maxlen=8, blocks=2, items=60)


def shapes_for(case):
    return SHAPES + [ML1M_SHAPE] if case == "relu" else SHAPES


# ---- models, checkpoints and item ids -----------------------------------------------------

def trained_looking_model(case, shape, seed):
    """torch's default init (gSASRec-pytorch has none: embeddings N(0, 1), Linear uniform),
    LayerNorm affines and biases made non-trivial (1/0 would hide mapping mistakes), then a few
    Adam steps (its lr 1e-3) of train_gsasrec.py's gBCE loss on random sequences, dropout on."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = gr.build_model(case, shape.items, shape.d, shape.heads, shape.blocks, shape.maxlen, dropout_rate=0.5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.25 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
        model.item_embedding.weight.mul_(shape.input_scale)
        model.position_embedding.weight.mul_(shape.input_scale)
    optimizer = torch.optim.Adam(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(3):
        lengths = rng.integers(2, 2 * shape.maxlen + 2, size=8)
        histories = [rng.integers(1, shape.items + 1, size=length) for length in lengths]
        positives, negatives = gr.training_batch(histories, shape.maxlen, shape.items, shape.negs, generator)
        loss = gr.gbce_loss(model, positives, negatives, shape.negs, GBCE_T)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def checkpoint_name(shape):
    return gr.checkpoint_name(dataset_name="synthetic", step=300, gbce_t=GBCE_T, negs_per_pos=shape.negs,
                              embedding_dim=shape.d, dropout_rate=0.5, metric=0.1617283950617284)


def raw_ids(shape, seed):
    """ids[r] = the raw id of row r (ids[0] is row 0's line, ignored). With an item-id file:
    distinct integers in no particular order, as a dataset's own ids would be; without one,
    the rows themselves."""
    if shape.line0 is None:
        return ["[PAD]"] + [str(row) for row in range(1, shape.items + 1)]
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 20 * shape.items), size=shape.items, replace=False)
    return [shape.line0] + [str(int(item)) for item in ids]


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))


@dataclasses.dataclass
class Case:
    case: str
    shape: Shape
    model: object
    ids: list
    dir: str
    checkpoint: str
    item_ids: object   # path or None


def make_case(workdir, case, shape, seed, subdir=None):
    case_dir = os.path.join(workdir, subdir or case, shape.name)
    shutil.rmtree(case_dir, ignore_errors=True)
    # train_gsasrec.py writes into models/.
    os.makedirs(os.path.join(case_dir, "models"))
    model = trained_looking_model(case, shape, seed)
    checkpoint = os.path.join(case_dir, "models", checkpoint_name(shape))
    gr.save_checkpoint(model, checkpoint, storage_location=shape.storage_location)
    ids = raw_ids(shape, seed)
    item_ids = None
    if shape.line0 is not None:
        item_ids = os.path.join(case_dir, "item_ids.txt")
        write_lines(item_ids, ids)
    return Case(case, shape, model, ids, case_dir, checkpoint, item_ids)


def convert_command(seqrec, case, out, score="raw", heads=True, max_len=True, variant=True, extra=()):
    command = [seqrec, "convert", "--from", "gsasrec", case.checkpoint, "--out", out]
    if heads:
        command += ["--heads", str(case.shape.heads)]
    if max_len:
        command += ["--max-len", str(case.shape.maxlen)]
    if variant and CONVERTER_VARIANT[case.case]:
        command += ["--variant", CONVERTER_VARIANT[case.case]]
    if case.item_ids:
        command += ["--item-ids", case.item_ids]
    if score:
        command += ["--score", score]
    return command + list(extra)


# ---- requests and comparison --------------------------------------------------------------

def histories_for(shape, seed):
    """Lengths 1, 2, L-1, L, L+1, 3L (random rows with repeats), and one item five times."""
    rng = np.random.default_rng(seed)
    L = shape.maxlen
    histories = [history_of_length(length, shape.items, rng) for length in (1, 2, L - 1, L, L + 1, 3 * L)]
    histories.append([int(rng.integers(1, shape.items + 1))] * 5)
    return histories


def check_scores(results, seqrec, label, model_file, case, histories, expected_fn):
    for history in histories:
        expected = expected_fn(history)
        response = recommend_all(seqrec, model_file, history, case.ids)
        line = f"{label:52s} history={len(history):4d}"
        if response.returncode != 0:
            results.record(False, f"{line} recommend exit {response.returncode}: {one_line(response.stderr)}")
            continue
        max_delta, top_ok, problem = compare(response.stdout, expected, case.ids)
        if problem:
            results.record(False, f"{line} {problem}")
            continue
        ok = max_delta <= SCORE_TOLERANCE and top_ok
        results.record(ok, f"{line} max|delta|={max_delta:.2e} top{TOP_N}={'ok' if top_ok else 'DIFFERENT'}")


def raw_scores(case):
    return lambda history: gr.score_history(case.model, history)


def default_scores(case):
    """DEFAULT_SCORE of the float32 logits (float32 sigmoid: saturated scores tie exactly, and
    compare() lets exact ties swap)."""
    def expected(history):
        logits = torch.from_numpy(gr.score_history(case.model, history)).float()
        if DEFAULT_SCORE == "sigmoid":
            return torch.sigmoid(logits).double().numpy()
        return logits.double().numpy()
    return expected


def check_case(results, seqrec, workdir, case_name):
    for index, shape in enumerate(shapes_for(case_name)):
        case = make_case(workdir, case_name, shape, seed=500 + 10 * index + MODEL_CASES.index(case_name))
        label = f"{case_name}/{shape.name}"
        converted = os.path.join(case.dir, "model.seqrec")
        conversion = run(convert_command(seqrec, case, converted))
        if conversion.returncode != 0 or not os.path.exists(converted):
            results.record(False, f"{label} convert exit {conversion.returncode}: {one_line(conversion.stderr)}")
            continue
        histories = histories_for(shape, index)
        check_scores(results, seqrec, label + " raw", converted, case, histories, raw_scores(case))

        if index == 0:
            default = os.path.join(case.dir, "model-default-score.seqrec")
            conversion = run(convert_command(seqrec, case, default, score=None))
            if conversion.returncode != 0 or not os.path.exists(default):
                results.record(False, f"{label} convert (default --score) exit {conversion.returncode}: "
                                      f"{one_line(conversion.stderr)}")
                continue
            check_scores(results, seqrec, f"{label} default score ({DEFAULT_SCORE})", default, case,
                         [histories[1], histories[4]], default_scores(case))


# ---- refused checkpoints and flags --------------------------------------------------------

def check_refused(results, label, command, case_dir, out, must_mention):
    """Non-zero exit, exactly one stderr line mentioning each of `must_mention`
    (case-insensitive), and no output file."""
    result = run(command)
    leftovers = [name for name in os.listdir(case_dir) if name.startswith(os.path.basename(out))]
    record_refusal(results, f"error:{label:28s}", result, must_mention, leftovers)


def check_errors(results, seqrec, workdir):
    shape = ERRORS_SHAPE
    good = make_case(workdir, "relu", shape, seed=900, subdir="errors_source")
    state = good.model.state_dict()
    d, items, last_block = shape.d, shape.items, shape.blocks - 1
    errors_dir = os.path.join(workdir, "errors")
    shutil.rmtree(errors_dir, ignore_errors=True)
    os.makedirs(errors_dir)

    def variant(name, tensors=None, write=None, item_ids=None):
        """A copy of the good case whose checkpoint (in its own folder, under the trainer's
        file name) holds `tensors`, or is written by `write(path)`."""
        folder = os.path.join(errors_dir, name)
        os.makedirs(folder)
        path = os.path.join(folder, checkpoint_name(shape))
        if write:
            write(path)
        else:
            torch.save(tensors if tensors is not None else state, path)
        return dataclasses.replace(good, checkpoint=path, dir=folder, item_ids=item_ids or good.item_ids)

    def refused(label, case, must_mention, **kwargs):
        out = os.path.join(case.dir, "model.seqrec")
        check_refused(results, label, convert_command(seqrec, case, out, **kwargs), case.dir, out, must_mention)

    def truncated(path):
        torch.save(state, path)
        size = os.path.getsize(path)
        with open(path, "r+b") as file:
            file.truncate(size // 2)
    refused("truncated", variant("truncated", write=truncated), [checkpoint_name(shape)])

    missing_key = f"transformer_blocks.{last_block}.dense2.bias"
    refused("missing_key", variant("missing_key", {k: v for k, v in state.items() if k != missing_key}),
            [missing_key])

    # --heads 5 does not divide d = 32 (gSASRec-pytorch itself fails on uneven head chunks).
    refused("heads_not_dividing_d", variant("heads_not_dividing_d"), ["heads", "5"],
            heads=False, extra=("--heads", "5"))

    if HEADS_FLAG_REQUIRED:
        refused("no_heads_flag", variant("no_heads_flag"), ["--heads"], heads=False)

    wrong_key = "transformer_blocks.0.dense1.weight"
    refused("wrong_shape", variant("wrong_shape", {**state, wrong_key: torch.randn(d, d + 1)}), [wrong_key])

    # One output row short of item_embedding's num_items + 2.
    refused("output_rows", variant("output_rows", {**state, "output_embedding.weight": torch.randn(items + 1, d)}),
            ["output_embedding.weight"])

    # --max-len must be the position table's row count (the trainer's sequence_length).
    refused("max_len_mismatch", variant("max_len_mismatch"), ["max-len"],
            max_len=False, extra=("--max-len", str(shape.maxlen + 1)))

    nan_key = "transformer_blocks.0.multihead_attention.key_proj.weight"
    with_nan = {key: value.clone() for key, value in state.items()}
    with_nan[nan_key][d // 2, d // 3] = float("nan")
    refused("nan_weight", variant("nan_weight", with_nan), [nan_key, "nan"])

    # The padding row num_items + 1 listed too: one line too many.
    long_ids = os.path.join(errors_dir, "item_ids_with_padding_row.txt")
    write_lines(long_ids, good.ids + ["[PAD]"])
    refused("item_ids_line_count", variant("item_ids_line_count", item_ids=long_ids),
            [os.path.basename(long_ids)])

    refused("unknown_variant", variant("unknown_variant"), ["variant", "gelu"], extra=("--variant", "gelu"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True, help="path to the seqrec binary")
    parser.add_argument("--workdir", required=True, help="scratch folder for checkpoints and models")
    cases = list(MODEL_CASES) + ["errors"]
    parser.add_argument("--case", default="all", choices=cases + ["all"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    seqrec = seqrec_binary(args.seqrec, args.workdir)
    if seqrec is None:
        return 1

    results = Results()
    for case in (cases if args.case == "all" else [args.case]):
        if case == "errors":
            check_errors(results, seqrec, args.workdir)
        else:
            check_case(results, seqrec, args.workdir, case)
    return finish(results)


if __name__ == "__main__":
    sys.exit(main())
