#!/usr/bin/python3
"""Parity test: `seqrec convert --from pmixer` + `seqrec recommend` against SASRec.pytorch.

For every model generation SASRec.pytorch has saved checkpoints in, this builds the model with
the real torch.nn layers (tests/parity/sasrec_pytorch.py), gives it trained-looking weights,
saves `model.state_dict()` under SASRec.pytorch's file name, converts it with seqrec, sends
histories of several lengths through `seqrec recommend`, and compares every item's score with
`model.predict` (max |delta| <= 1e-4, same top-10 except between exact ties). It also checks
that malformed checkpoints are refused with one line naming the problem and leave no output.

Every expected value is computed by PyTorch at test time.

Usage (CTest runs one variant per test):
  /usr/bin/python3 tests/parity/test_pmixer_parity.py --seqrec build/seqrec --workdir DIR
      [--variant pre_ln|post_ln|original|original_legacy|all]
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
import sasrec_pytorch  # noqa: E402  (needs the path above)
from parity_common import (SCORE_TOLERANCE, TOP_N, Results, compare, finish, history_of_length, one_line,  # noqa: E402
                           recommend_all, record_refusal, run, seqrec_binary)


# The test's variant name -> the converter's --variant. Both "original" layouts share one flag;
# the converter tells them apart by the position table ([L+1, d] vs [L, d], with maxlen= in the
# file name).
CONVERTER_VARIANT = {
    "pre_ln": "pre_ln",
    "post_ln": "post_ln",
    "original": "original",
    "original_legacy": "original",
}


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    maxlen: int
    blocks: int
    items: int
    # False: leave --heads out so the converter must read head=N from the file name.
    pass_heads_flag: bool


SHAPES = [
    Shape("d50_h1_L200_b2", hidden=50, heads=1, maxlen=200, blocks=2, items=300, pass_heads_flag=False),
    Shape("d64_h2_L50_b3", hidden=64, heads=2, maxlen=50, blocks=3, items=500, pass_heads_flag=False),
    Shape("d32_h4_L16_b1", hidden=32, heads=4, maxlen=16, blocks=1, items=120, pass_heads_flag=True),
]
# Where an old main.py ran xavier_normal_ over every parameter without zeroing row 0 afterwards,
# padding_idx froze a non-zero padding row; those checkpoints exist for the original layouts.
XAVIER_PADDING_ROWS_SHAPE = SHAPES[2]
XAVIER_PADDING_ROWS_VARIANTS = ("original", "original_legacy")


def checkpoint_name(shape, epochs=5, lr=0.001):
    """SASRec.pytorch's main.py file name; the converter reads head= (and maxlen=) from it."""
    return (f"SASRec.epoch={epochs}.lr={lr}.layer={shape.blocks}.head={shape.heads}"
            f".hidden={shape.hidden}.maxlen={shape.maxlen}.pth")


def trained_looking_model(variant, shape, seed, zero_padding_rows=True):
    """A model whose every parameter is non-trivial: SASRec.pytorch's init, random LayerNorm
    affines and biases (their defaults 1/0 would hide mapping mistakes), then a few Adam steps
    of SASRec's BCE training on random sequences."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = sasrec_pytorch.build_model(variant, shape.items, shape.hidden, shape.heads,
                                       shape.blocks, shape.maxlen)

    # main.py's init: xavier_normal_ where it applies (matrices), silently skipped elsewhere.
    for param in model.parameters():
        if param.dim() >= 2:
            torch.nn.init.xavier_normal_(param.data)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.25 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
        if zero_padding_rows:
            # What current main.py does after init; padding_idx keeps these rows at zero.
            model.item_emb.weight[0].zero_()
            if model.pos_emb.padding_idx == 0:
                model.pos_emb.weight[0].zero_()

    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.98))
    bce = torch.nn.BCEWithLogitsLoss()
    model.train()
    batch = 8
    for _ in range(4):
        lengths = rng.integers(2, 2 * shape.maxlen, size=batch)
        histories = [rng.integers(1, shape.items + 1, size=length) for length in lengths]
        seq = np.stack([sasrec_pytorch.left_padded_window(h[:-1], shape.maxlen) for h in histories])
        pos = np.stack([sasrec_pytorch.left_padded_window(h[1:], shape.maxlen) for h in histories])
        neg = np.where(pos != 0, rng.integers(1, shape.items + 1, size=pos.shape), 0)
        pos_logits, neg_logits = model(None, seq, pos, neg)
        where = np.where(pos != 0)
        loss = bce(pos_logits[where], torch.ones_like(pos_logits[where]))
        loss = loss + bce(neg_logits[where], torch.zeros_like(neg_logits[where]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def convert_command(seqrec, checkpoint, out, variant, shape, pass_heads_flag):
    command = [seqrec, "convert", "--from", "pmixer", checkpoint, "--out", out,
               "--variant", CONVERTER_VARIANT[variant], "--score", "raw"]
    if pass_heads_flag:
        command += ["--heads", str(shape.heads)]
    return command


def reference_scores(model, history, maxlen, items):
    """Row r's logit at index r (index 0, the padding row, is never ranked)."""
    log_seqs = sasrec_pytorch.left_padded_window(history, maxlen)[np.newaxis, :]
    with torch.no_grad():
        logits = model.predict(None, log_seqs, np.arange(1, items + 1))
    return np.concatenate([[0.0], logits[0].double().numpy()])


def row_ids(items):
    """Without --item-ids, row r has id r."""
    return ["[PAD]"] + [str(row) for row in range(1, items + 1)]


def check_recommendations(results, seqrec, workdir, variant, shape, model, label):
    """Convert the saved checkpoint, then compare every history length's scores."""
    case_dir = os.path.join(workdir, label)
    checkpoint = os.path.join(case_dir, checkpoint_name(shape))
    converted = os.path.join(case_dir, "model.seqrec")
    conversion = run(convert_command(seqrec, checkpoint, converted, variant, shape, shape.pass_heads_flag))
    heads_source = "--heads" if shape.pass_heads_flag else "file name"
    if conversion.returncode != 0 or not os.path.exists(converted):
        results.record(False, f"{variant:15s} {label:28s} convert (heads from {heads_source}) exit "
                              f"{conversion.returncode}: {one_line(conversion.stderr)}")
        return

    rng = np.random.default_rng(shape.maxlen * 1000 + shape.items)
    L = shape.maxlen
    for length in (1, 2, L - 1, L, L + 1, 3 * L):
        history = history_of_length(length, shape.items, rng)
        expected = reference_scores(model, history, L, shape.items)
        response = recommend_all(seqrec, converted, history, row_ids(shape.items))
        line = f"{variant:15s} {label:28s} history={length:4d}"
        if response.returncode != 0:
            results.record(False, f"{line} recommend exit {response.returncode}: {one_line(response.stderr)}")
            continue
        max_delta, top_ok, problem = compare(response.stdout, expected, row_ids(shape.items))
        if problem:
            results.record(False, f"{line} {problem}")
            continue
        ok = max_delta <= SCORE_TOLERANCE and top_ok
        results.record(ok, f"{line} max|delta|={max_delta:.2e} top{TOP_N}={'ok' if top_ok else 'DIFFERENT'}")


def save_case(workdir, label, shape, state_dict):
    case_dir = os.path.join(workdir, label)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    torch.save(state_dict, os.path.join(case_dir, checkpoint_name(shape)))
    return case_dir


def check_refused(results, seqrec, workdir, variant, shape, label, write_checkpoint, must_mention):
    """A malformed checkpoint: non-zero exit, exactly one stderr line mentioning each of
    `must_mention` (case-insensitive), and nothing but the checkpoint left in its folder."""
    case_dir = os.path.join(workdir, "errors", label)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    checkpoint = os.path.join(case_dir, checkpoint_name(shape))
    write_checkpoint(checkpoint)
    out = os.path.join(case_dir, "model.seqrec")
    conversion = run(convert_command(seqrec, checkpoint, out, variant, shape, True))

    leftovers = sorted(set(os.listdir(case_dir)) - {os.path.basename(checkpoint)})
    record_refusal(results, f"{variant:15s} error:{label:22s}", conversion, must_mention, leftovers)


def check_malformed_checkpoints(results, seqrec, workdir, variant, shape, model):
    state = model.state_dict()
    d = shape.hidden
    last_block = shape.blocks - 1

    wrong_shape_key = "attention_layers.0.in_proj_weight"
    def wrong_shape(path):
        broken = dict(state)
        broken[wrong_shape_key] = torch.randn(2 * d, d)  # [3d, d] expected
        torch.save(broken, path)

    missing_key = f"forward_layers.{last_block}.conv2.bias"
    def missing(path):
        torch.save({key: value for key, value in state.items() if key != missing_key}, path)

    truncated_name = checkpoint_name(shape)
    def truncated(path):
        torch.save(state, path)
        size = os.path.getsize(path)
        with open(path, "r+b") as file:
            file.truncate(size // 2)

    nan_key = "forward_layers.0.conv1.weight"
    def with_nan(path):
        broken = {key: value.clone() for key, value in state.items()}
        broken[nan_key][d // 2, d // 3, 0] = float("nan")
        torch.save(broken, path)

    check_refused(results, seqrec, workdir, variant, shape, "wrong_shape", wrong_shape, [wrong_shape_key])
    check_refused(results, seqrec, workdir, variant, shape, "missing_key", missing, [missing_key])
    check_refused(results, seqrec, workdir, variant, shape, "truncated", truncated, [truncated_name])
    check_refused(results, seqrec, workdir, variant, shape, "nan_weight", with_nan, [nan_key, "nan"])


def check_variant(results, seqrec, workdir, variant):
    variant_dir = os.path.join(workdir, variant)
    for index, shape in enumerate(SHAPES):
        model = trained_looking_model(variant, shape, seed=100 + index)
        save_case(variant_dir, shape.name, shape, model.state_dict())
        check_recommendations(results, seqrec, variant_dir, variant, shape, model, shape.name)
        if shape is XAVIER_PADDING_ROWS_SHAPE:
            check_malformed_checkpoints(results, seqrec, variant_dir, variant, shape, model)

    if variant in XAVIER_PADDING_ROWS_VARIANTS:
        shape = XAVIER_PADDING_ROWS_SHAPE
        model = trained_looking_model(variant, shape, seed=200, zero_padding_rows=False)
        assert model.item_emb.weight[0].abs().sum() > 0
        label = shape.name + "_xavier_pad_rows"
        save_case(variant_dir, label, shape, model.state_dict())
        check_recommendations(results, seqrec, variant_dir, variant, shape, model, label)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True, help="path to the seqrec binary")
    parser.add_argument("--workdir", required=True, help="scratch folder for checkpoints and models")
    parser.add_argument("--variant", default="all", choices=sorted(CONVERTER_VARIANT) + ["all"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    seqrec = seqrec_binary(args.seqrec, args.workdir)
    if seqrec is None:
        return 1

    results = Results()
    variants = list(CONVERTER_VARIANT) if args.variant == "all" else [args.variant]
    for variant in variants:
        check_variant(results, seqrec, args.workdir, variant)
    return finish(results)


if __name__ == "__main__":
    sys.exit(main())
