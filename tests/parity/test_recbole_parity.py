#!/usr/bin/python3
"""Parity test: `seqrec convert --from recbole|safetensors` + `seqrec recommend` against RecBole.

For RecBole's SASRec and the three BERT4Rec layouts this builds the model from reference
modules written to the letter of RecBole's source (tests/parity/recbole_reference.py), gives it
trained-looking weights (RecBole's init, random LayerNorm affines and biases, a few Adam steps of
its own loss), saves it the way RecBole's trainer does (a dict with the pickled Config object,
a torch.device and enums inside, optimizer state; pickle protocol 4), writes the item-id file
RecBole's dataset.field2id_token['item_id'] would give (row 0 "[PAD]", non-numeric tokens),
converts it, and compares every item's score from `seqrec recommend` with `full_sort_predict`
(max |delta| <= 1e-4, same top-10 except between exact ties) for histories shorter than, equal
to and longer than L, with 1, 2 and 4 heads and gelu / relu. Softmax scores (the CE default)
are compared with torch.softmax over every catalog row.

The `safetensors` family checks that .seqrec -> `seqrec export --safetensors` -> `seqrec convert
--from safetensors` gives bit-identical responses, that a safetensors file written by plain
Python under the README's names and metadata matches RecBole's scores, and that malformed
safetensors files are refused. The `errors` family checks RecBole checkpoints that must be
refused: each with non-zero exit, one stderr line naming the key / line / flag, no output file.

Every expected value is computed by PyTorch at test time.

Usage (CTest runs one family per test):
  /usr/bin/python3 tests/parity/test_recbole_parity.py --seqrec build/seqrec --workdir DIR
      [--family sasrec|bert4rec|bert4rec_v11|bert4rec_v10|errors|safetensors|all]
Exit status: 0 all passed, 1 any failure, 77 skipped (no torch).
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as error:
    print(f"SKIPPED: PyTorch/numpy not importable by {sys.executable} ({error})")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recbole_reference as rb  # noqa: E402  (needs the path above)
from parity_common import (SCORE_TOLERANCE, TOP_N, Results, compare, finish, history_of_length, one_line,  # noqa: E402
                           recommend_all, record_refusal, run, seqrec_binary)

MODEL_FAMILIES = ("sasrec", "bert4rec", "bert4rec_v11", "bert4rec_v10")


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    maxlen: int
    layers: int
    items: int        # RecBole's n_items: catalog rows including [PAD]
    act: str
    loss: str
    # False: save a bare state_dict (no config): the converter must take flags.
    with_config: bool = True


SHAPES = [
    Shape("d64_h2_L20_b2_gelu_CE", hidden=64, heads=2, maxlen=20, layers=2, items=301, act="gelu", loss="CE"),
    Shape("d32_h4_L8_b1_relu_BPR", hidden=32, heads=4, maxlen=8, layers=1, items=150, act="relu", loss="BPR"),
    Shape("d48_h1_L12_b3_gelu_noconfig", hidden=48, heads=1, maxlen=12, layers=3, items=97, act="gelu", loss="CE",
          with_config=False),
]


# ---- models, checkpoints and item ids -----------------------------------------------------

def item_tokens(items, seed):
    """RecBole's field2id_token['item_id']: "[PAD]", then the dataset's own tokens (here
    non-numeric and in no particular order, as remapping makes them)."""
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(np.arange(1000, 1000 + 5 * items))[: items - 1]
    formats = ("i{}", "B00{}X", "item-{}", "{}")
    return ["[PAD]"] + [formats[k % len(formats)].format(int(n)) for k, n in enumerate(numbers)]


def training_batch(family, model, shape, rng, batch=16):
    """One batch of RecBole's training input for `family`."""
    L, n = shape.maxlen, shape.items
    lengths = rng.integers(1, L + 1, size=batch)
    seqs = np.zeros((batch, L), dtype=np.int64)
    for b, length in enumerate(lengths):
        seqs[b, :length] = rng.integers(1, n, size=length)
    if family == "sasrec":
        interaction = {model.ITEM_SEQ: torch.tensor(seqs), model.ITEM_SEQ_LEN: torch.tensor(lengths),
                       model.POS_ITEM_ID: torch.tensor(rng.integers(1, n, size=batch))}
        if shape.loss == "BPR":
            interaction[model.NEG_ITEM_ID] = torch.tensor(rng.integers(1, n, size=batch))
        return interaction
    # BERT4Rec: mask ~20% of each sequence's items (at least one), as RecBole's dataloader does.
    mask_len = max(1, int(0.2 * L))
    masked = seqs.copy()
    pos_items = np.zeros((batch, mask_len), dtype=np.int64)
    mask_index = np.zeros((batch, mask_len), dtype=np.int64)
    for b, length in enumerate(lengths):
        chosen = rng.choice(length, size=min(mask_len, length), replace=False)
        for k, slot in enumerate(sorted(chosen)):
            pos_items[b, k] = seqs[b, slot]
            mask_index[b, k] = slot
            masked[b, slot] = model.mask_token
    return {model.MASK_ITEM_SEQ: torch.tensor(masked), model.POS_ITEMS: torch.tensor(pos_items),
            model.MASK_INDEX: torch.tensor(mask_index)}


def trained_looking_model(family, shape, seed):
    """RecBole's model and init, then random LayerNorm affines and biases (their 1 / 0 init
    would hide mapping mistakes) and a few Adam steps of the model's own loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = rb.make_config(family, shape.heads, shape.hidden, 2 * shape.hidden + 8, shape.layers,
                            shape.maxlen, shape.act, shape.loss)
    model = rb.build_model(family, config, shape.items)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "output_ln" in name:
                if name.endswith(".weight"):
                    param.copy_(1.0 + 0.25 * torch.randn_like(param))
                else:
                    param.copy_(0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif "embedding" in name:
                param.mul_(10.0)  # 0.02-std embeddings give near-uniform scores; trained ones are not
            elif param.dim() == 2:
                # Linear layers at unit gain (std 1/sqrt(fan_in)): with RecBole's 0.02 init the
                # attention and FFN branches would barely move the residual stream, and a wrong
                # activation or head mapping could hide under the tolerance.
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    model.train()
    for _ in range(3):
        loss = model.calculate_loss(training_batch(family, model, shape, rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return config, model, optimizer


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))


@dataclasses.dataclass
class Case:
    family: str
    shape: Shape
    config: object
    model: object
    optimizer: object
    ids: list
    dir: str
    checkpoint: str
    item_ids: str


def make_case(workdir, family, shape, seed, subdir=None):
    case_dir = os.path.join(workdir, subdir or family, shape.name)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    config, model, optimizer = trained_looking_model(family, shape, seed)
    checkpoint = os.path.join(case_dir, f"{config.model}-{shape.name}.pth")
    if shape.with_config:
        rb.save_checkpoint(checkpoint, config, model, optimizer)
    else:
        torch.save(model.state_dict(), checkpoint, pickle_protocol=4)
    ids = item_tokens(shape.items, seed)
    item_ids = os.path.join(case_dir, "item_ids.txt")
    write_lines(item_ids, ids)
    return Case(family, shape, config, model, optimizer, ids, case_dir, checkpoint, item_ids)


def convert_command(seqrec, case, out, score="raw", extra=()):
    command = [seqrec, "convert", "--from", "recbole", case.checkpoint, "--item-ids", case.item_ids, "--out", out]
    if score:
        command += ["--score", score]
    if not case.shape.with_config:
        # What the config would have said; BERT4Rec <= 1.1 also needs L (its position table is ambiguous).
        command += ["--heads", str(case.shape.heads), "--activation", case.shape.act, "--ln-eps", "1e-12",
                    "--model", "sasrec" if case.family == "sasrec" else "bert4rec"]
        if case.family in ("bert4rec_v11", "bert4rec_v10"):
            command += ["--max-len", str(case.shape.maxlen)]
    return command + list(extra)


# ---- requests and comparison --------------------------------------------------------------

def check_scores(results, seqrec, label, model_file, case, histories, expected_fn):
    for history in histories:
        expected = expected_fn(history)
        response = recommend_all(seqrec, model_file, history, case.ids)
        line = f"{label:58s} history={len(history):3d}"
        if response.returncode != 0:
            results.record(False, f"{line} recommend exit {response.returncode}: {one_line(response.stderr)}")
            continue
        max_delta, top_ok, problem = compare(response.stdout, expected, case.ids)
        if problem:
            results.record(False, f"{line} {problem}")
            continue
        ok = max_delta <= SCORE_TOLERANCE and top_ok
        results.record(ok, f"{line} max|delta|={max_delta:.2e} top{TOP_N}={'ok' if top_ok else 'DIFFERENT'}")


def histories_for(shape, seed):
    rng = np.random.default_rng(seed)
    L = shape.maxlen
    return [history_of_length(length, shape.items - 1, rng) for length in (1, 2, L - 1, L, L + 1, 3 * L)]


def raw_scores(case):
    return lambda history: rb.full_sort_scores(case.model, history, case.shape.maxlen).double().numpy()


def check_family(results, seqrec, workdir, family):
    for index, shape in enumerate(SHAPES):
        case = make_case(workdir, family, shape, seed=300 + 10 * index + MODEL_FAMILIES.index(family))
        label = f"{family}/{shape.name}"
        converted = os.path.join(case.dir, "model.seqrec")
        conversion = run(convert_command(seqrec, case, converted))
        source = "config" if shape.with_config else "flags"
        if conversion.returncode != 0 or not os.path.exists(converted):
            results.record(False, f"{label} convert (hyper-parameters from {source}) exit {conversion.returncode}: "
                                  f"{one_line(conversion.stderr)}")
            continue
        check_scores(results, seqrec, label + " raw", converted, case, histories_for(shape, index), raw_scores(case))

        # The default score: softmax over every catalog row for CE, raw logits for BPR; without
        # a config there is no loss_type to tell, so --score must be given.
        default = os.path.join(case.dir, "model-default-score.seqrec")
        if not shape.with_config:
            check_refused(results, f"{label} no config, no --score", convert_command(seqrec, case, default, score=None),
                          case.dir, default, ["loss_type", "--score"])
            continue
        conversion = run(convert_command(seqrec, case, default, score=None))
        if conversion.returncode != 0:
            results.record(False, f"{label} convert (default --score) exit {conversion.returncode}: "
                                  f"{one_line(conversion.stderr)}")
            continue
        if shape.loss == "CE":
            expected_fn = lambda history: torch.softmax(  # noqa: E731
                rb.full_sort_scores(case.model, history, shape.maxlen).double(), dim=-1).numpy()
        else:
            expected_fn = raw_scores(case)
        histories = histories_for(shape, 100 + index)
        check_scores(results, seqrec, f"{label} default score ({'softmax' if shape.loss == 'CE' else 'raw'})",
                     default, case, [histories[1], histories[4]], expected_fn)


# ---- malformed RecBole input --------------------------------------------------------------

def check_refused(results, label, command, case_dir, out, must_mention):
    """Non-zero exit, exactly one stderr line mentioning each of `must_mention`
    (case-insensitive), and no output file."""
    result = run(command)
    leftovers = [name for name in os.listdir(case_dir) if name.startswith(os.path.basename(out))]
    record_refusal(results, f"error:{label:34s}", result, must_mention, leftovers)


def check_errors(results, seqrec, workdir):
    shape = Shape("d32_h2_L8_b2", hidden=32, heads=2, maxlen=8, layers=2, items=60, act="gelu", loss="CE")
    sasrec = make_case(workdir, "sasrec", shape, seed=900)
    bert = make_case(workdir, "bert4rec", shape, seed=901)
    bert_v11 = make_case(workdir, "bert4rec_v11", shape, seed=902)
    errors_dir = os.path.join(workdir, "errors")
    shutil.rmtree(errors_dir, ignore_errors=True)
    os.makedirs(errors_dir)

    def variant(name, case, state=None, config=None, item_ids=None):
        """A copy of `case` with its checkpoint saved from `state` / `config`."""
        path = os.path.join(errors_dir, name + ".pth")
        rb.save_checkpoint(path, config if config is not None else case.config,
                           _StateOnly(state if state is not None else case.model.state_dict()), case.optimizer)
        return dataclasses.replace(case, checkpoint=path, item_ids=item_ids or case.item_ids, dir=errors_dir)

    def refused(label, case, must_mention, score="raw", extra=()):
        out = os.path.join(errors_dir, label + ".seqrec")
        check_refused(results, label, convert_command(seqrec, case, out, score=score, extra=extra), errors_dir, out,
                      must_mention)

    state = sasrec.model.state_dict()
    missing_key = "trm_encoder.layer.1.feed_forward.dense_2.bias"
    refused("missing_key", variant("missing_key", sasrec, {k: v for k, v in state.items() if k != missing_key}),
            [missing_key])
    wrong_key = "trm_encoder.layer.0.multi_head_attention.key.weight"
    broken = dict(state)
    broken[wrong_key] = torch.randn(shape.hidden, shape.hidden + 1)
    refused("wrong_shape", variant("wrong_shape", sasrec, broken), [wrong_key, "[32, 33]", "[32, 32]"])
    broken = {k: v.clone() for k, v in state.items()}
    broken["trm_encoder.layer.0.feed_forward.dense_1.weight"][3, 5] = float("nan")
    refused("nan_weight", variant("nan_weight", sasrec, broken), ["dense_1.weight", "nan"])
    bert_state = bert.model.state_dict()
    refused("bert4rec_missing_output_ln",
            variant("bert_no_ln", bert, {k: v for k, v in bert_state.items() if k != "output_ln.bias"}),
            ["output_ln.bias"])
    broken = dict(bert_state)
    broken["output_bias"] = torch.zeros(shape.items + 1)
    refused("bert4rec_output_bias_shape", variant("bert_bias", bert, broken), ["output_bias", "[61]", "[60]"])
    broken = dict(state)
    broken["extra.weight"] = torch.zeros(2)
    refused("unexpected_key", variant("unexpected_key", sasrec, broken), ["extra.weight"])

    # Item-id files: one line short, one too many, a duplicate id.
    short = os.path.join(errors_dir, "ids_short.txt")
    write_lines(short, sasrec.ids[:-1])
    refused("item_ids_one_short", dataclasses.replace(sasrec, item_ids=short), [short, "59 lines", "expected 60"])
    long = os.path.join(errors_dir, "ids_long.txt")
    write_lines(long, sasrec.ids + ["extra"])
    refused("item_ids_one_long", dataclasses.replace(sasrec, item_ids=long), [long, "expected 60"])
    duplicate = os.path.join(errors_dir, "ids_duplicate.txt")
    write_lines(duplicate, sasrec.ids[:7] + [sasrec.ids[3]] + sasrec.ids[8:])
    refused("item_ids_duplicate", dataclasses.replace(sasrec, item_ids=duplicate), ["line 7", sasrec.ids[3]])
    # BERT4Rec's file has n lines, not n+1 (the [MASK] row is not an item).
    bert_long = os.path.join(errors_dir, "bert_ids_long.txt")
    write_lines(bert_long, bert.ids + ["[MASK]"])
    refused("bert4rec_item_ids_with_mask", dataclasses.replace(bert, item_ids=bert_long), ["expected 60"])
    no_ids = os.path.join(errors_dir, "no_ids.seqrec")
    check_refused(results, "no_item_ids", [seqrec, "convert", "--from", "recbole", sasrec.checkpoint, "--out", no_ids],
                  errors_dir, no_ids, ["--item-ids"])

    # Configs: unreadable, or without a hyper-parameter (→ the flag is named).
    def config_variant(name, case, edit):
        config = rb.make_config(case.family, shape.heads, shape.hidden, 2 * shape.hidden + 8, shape.layers,
                                shape.maxlen, shape.act, shape.loss)
        edit(config)
        return variant(name, case, config=config)

    refused("config_final_dict_not_a_dict",
            config_variant("cfg_not_dict", sasrec, lambda c: setattr(c, "final_config_dict", ["n_heads", 2])),
            ["final_config_dict", "list", "--model"])
    refused("config_n_heads_wrong_type",
            config_variant("cfg_heads_str", sasrec, lambda c: c.final_config_dict.update(n_heads="two")),
            ["n_heads", "str 'two'", "--heads"])
    refused("config_without_n_heads",
            config_variant("cfg_no_heads", sasrec, lambda c: c.final_config_dict.pop("n_heads")),
            ["n_heads", "--heads"])
    refused("config_without_hidden_act",
            config_variant("cfg_no_act", sasrec, lambda c: c.final_config_dict.pop("hidden_act")),
            ["hidden_act", "--activation"])
    refused("config_unknown_hidden_act",
            config_variant("cfg_bad_act", sasrec, lambda c: c.final_config_dict.update(hidden_act="mish")),
            ["hidden_act", "mish", "--activation"])
    refused("config_without_layer_norm_eps",
            config_variant("cfg_no_eps", sasrec, lambda c: c.final_config_dict.pop("layer_norm_eps")),
            ["layer_norm_eps", "--ln-eps"])
    refused("config_without_loss_type",
            config_variant("cfg_no_loss", sasrec, lambda c: c.final_config_dict.pop("loss_type")),
            ["loss_type", "--score"], score=None)
    refused("config_unsupported_model",
            config_variant("cfg_gru", sasrec, lambda c: c.final_config_dict.update(model="GRU4Rec")),
            ["GRU4Rec", "SASRec|BERT4Rec"])
    refused("config_max_len_mismatch",
            config_variant("cfg_len", sasrec, lambda c: c.final_config_dict.update(MAX_ITEM_LIST_LENGTH=9)),
            ["position_embedding.weight", "[8, 32]", "[9, 32]"])
    refused("bert4rec_v11_without_max_len",
            config_variant("cfg_v11_no_len", bert_v11, lambda c: c.final_config_dict.pop("MAX_ITEM_LIST_LENGTH")),
            ["position_embedding", "--max-len"])
    no_config = dataclasses.replace(sasrec, checkpoint=os.path.join(errors_dir, "bare_state_dict.pth"))
    torch.save(sasrec.model.state_dict(), no_config.checkpoint)
    refused("bare_state_dict_without_flags", no_config, ["no config", "--model"])
    refused("bare_state_dict_only_model_flag", no_config, ["n_heads", "--heads"], extra=("--model", "sasrec"))
    refused("flag_for_another_source", sasrec, ["--variant", "pmixer"], extra=("--variant", "post_ln"))
    truncated = os.path.join(errors_dir, "truncated.pth")
    with open(sasrec.checkpoint, "rb") as file:
        data = file.read()
    with open(truncated, "wb") as file:
        file.write(data[: len(data) // 2])
    refused("truncated_checkpoint", dataclasses.replace(sasrec, checkpoint=truncated), ["truncated.pth"])

    # A flag wins over an unreadable config value: the same checkpoint converts with --heads.
    case = config_variant("cfg_heads_str_flag", sasrec, lambda c: c.final_config_dict.update(n_heads="two"))
    out = os.path.join(errors_dir, "flag_over_config.seqrec")
    result = run(convert_command(seqrec, case, out, extra=("--heads", str(shape.heads))))
    results.record(result.returncode == 0, f"{'flag --heads overrides a bad config n_heads':46s} exit "
                                           f"{result.returncode} {one_line(result.stderr)}")
    if result.returncode == 0:
        check_scores(results, seqrec, "sasrec flag-over-config", out, sasrec, histories_for(shape, 5)[2:4],
                     raw_scores(sasrec))


class _StateOnly:
    """Stands for a model in save_checkpoint when the state_dict is edited."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state

    def other_parameter(self):
        return {}


# ---- safetensors ----------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata, header_override=None, truncate=None):
    """A safetensors file by hand (no safetensors package): what another trainer would write."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, array) in tensors.items():
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = header_override if header_override is not None else json.dumps(header)
    encoded = text.encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    data = struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)
    with open(path, "wb") as file:
        file.write(data[:truncate] if truncate else data)


def canonical_tensors(model, family, n_layers):
    """The reference model's weights under seqrec's canonical names (README, safetensors)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    out = {"embedding/item/weight": sd["item_embedding.weight"],
           "embedding/position/weight": sd["position_embedding.weight"],
           "embedding/norm/weight": sd["LayerNorm.weight"], "embedding/norm/bias": sd["LayerNorm.bias"]}
    for i in range(n_layers):
        src, dst = f"trm_encoder.layer.{i}.", f"encoder/layer_{i}/"
        for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("dense", "out"), ("LayerNorm", "norm")):
            for p in ("weight", "bias"):
                out[f"{dst}attention/{b}/{p}"] = sd[f"{src}multi_head_attention.{a}.{p}"]
        for a, b in (("dense_1", "inner"), ("dense_2", "outer"), ("LayerNorm", "norm")):
            for p in ("weight", "bias"):
                out[f"{dst}ffn/{b}/{p}"] = sd[f"{src}feed_forward.{a}.{p}"]
    if family == "bert4rec":
        out.update({"head/dense/weight": sd["output_ffn.weight"], "head/dense/bias": sd["output_ffn.bias"],
                    "head/norm/weight": sd["output_ln.weight"], "head/norm/bias": sd["output_ln.bias"],
                    "output/bias": sd["output_bias"]})
    return {name: ("F32", np.ascontiguousarray(array)) for name, array in out.items()}


def readme_metadata(family, shape, ids):
    bert = family == "bert4rec"
    return {"block": "post_ln", "attention": "bidirectional" if bert else "causal", "mask_padded_keys": "true",
            "zero_padded_rows": "false", "embed_scale": "false", "embed_norm": "true", "positions": "slot_index",
            "padding": "right", "activation": shape.act, "final_norm": "false",
            "readout": "mask_token_drop_first" if bert else "last_slot", "head": "true" if bert else "false",
            "output_bias": "true" if bert else "false", "ln_eps": "1e-12", "score": "raw",
            "max_len": str(shape.maxlen), "d": str(shape.hidden), "heads": str(shape.heads),
            "ffn_dim": str(2 * shape.hidden + 8), "n_layers": str(shape.layers), "n_items": str(shape.items),
            "catalog": json.dumps(ids)}


def check_safetensors(results, seqrec, workdir):
    st_dir = os.path.join(workdir, "safetensors")
    shutil.rmtree(st_dir, ignore_errors=True)
    os.makedirs(st_dir)

    # 1. Round trip for every family: .seqrec -> export -> convert -> identical responses.
    for family_index, family in enumerate(MODEL_FAMILIES):
        shape = SHAPES[family_index % 2]
        case = make_case(workdir, family, shape, seed=700 + family_index, subdir="safetensors_roundtrip_" + family)
        first = os.path.join(case.dir, "model.seqrec")
        exported = os.path.join(case.dir, "model.safetensors")
        second = os.path.join(case.dir, "roundtrip.seqrec")
        steps = [convert_command(seqrec, case, first, score=None),
                 [seqrec, "export", first, "--safetensors", exported],
                 [seqrec, "convert", "--from", "safetensors", exported, "--out", second]]
        failed = None
        for step in steps:
            result = run(step)
            if result.returncode != 0:
                failed = f"{' '.join(step[1:3])} exit {result.returncode}: {one_line(result.stderr)}"
                break
        if failed:
            results.record(False, f"roundtrip {family}: {failed}")
            continue
        identical, detail = True, ""
        for history in histories_for(shape, 50 + family_index):
            a = recommend_all(seqrec, first, history, case.ids)
            b = recommend_all(seqrec, second, history, case.ids)
            if a.returncode != 0 or a.stdout != b.stdout:
                identical, detail = False, f"history={len(history)} differs: {one_line(a.stderr + b.stderr)}"
                break
        results.record(identical, f"roundtrip {family:14s} .seqrec -> safetensors -> .seqrec: "
                                  f"{'bit-identical responses' if identical else detail}")
        inspect = run([seqrec, "inspect", second])
        results.record(inspect.returncode == 0 and "safetensors" in inspect.stdout,
                       f"roundtrip {family:14s} inspect: {one_line(inspect.stdout)[:120]}")

    # 2. A file written by plain Python under the README's names and metadata ("any other trainer").
    for family in ("sasrec", "bert4rec"):
        shape = SHAPES[0] if family == "sasrec" else SHAPES[1]
        case = make_case(workdir, family, shape, seed=800 + len(family), subdir="safetensors_" + family)
        path = os.path.join(case.dir, "python.safetensors")
        write_safetensors(path, canonical_tensors(case.model, family, shape.layers), readme_metadata(family, shape, case.ids))
        out = os.path.join(case.dir, "python.seqrec")
        result = run([seqrec, "convert", "--from", "safetensors", path, "--out", out])
        if result.returncode != 0:
            results.record(False, f"python-written safetensors {family}: convert exit {result.returncode}: "
                                  f"{one_line(result.stderr)}")
            continue
        check_scores(results, seqrec, f"python-written safetensors {family}", out, case,
                     histories_for(shape, 60)[1:5], raw_scores(case))

    # 3. Malformed safetensors files.
    shape = SHAPES[1]
    case = make_case(workdir, "sasrec", shape, seed=850, subdir="safetensors_errors")
    good_tensors = canonical_tensors(case.model, "sasrec", shape.layers)
    good_meta = readme_metadata("sasrec", shape, case.ids)

    def refused(label, must_mention, tensors=None, metadata=None, extra=(), **kwargs):
        path = os.path.join(st_dir, label + ".safetensors")
        write_safetensors(path, tensors if tensors is not None else good_tensors,
                          metadata if metadata is not None else good_meta, **kwargs)
        out = os.path.join(st_dir, label + ".seqrec")
        check_refused(results, "safetensors_" + label,
                      [seqrec, "convert", "--from", "safetensors", path, "--out", out] + list(extra), st_dir, out,
                      must_mention)

    missing = "encoder/layer_0/ffn/outer/bias"
    refused("missing_tensor", [missing], tensors={k: v for k, v in good_tensors.items() if k != missing})
    wrong = dict(good_tensors)
    wrong["encoder/layer_0/attention/v/weight"] = ("F32", np.zeros((32, 31), dtype=np.float32))
    refused("wrong_shape", ["encoder/layer_0/attention/v/weight", "[32, 31]", "[32, 32]"], tensors=wrong)
    extra = dict(good_tensors)
    extra["encoder/final_norm/weight"] = ("F32", np.ones(32, dtype=np.float32))
    refused("unexpected_tensor", ["encoder/final_norm/weight"], tensors=extra)
    refused("missing_metadata_key", ["readout"], metadata={k: v for k, v in good_meta.items() if k != "readout"})
    refused("bad_enum", ["activation", "mish", "relu|gelu"], metadata={**good_meta, "activation": "mish"})
    refused("bad_bool", ["embed_norm", "yes", "true|false"], metadata={**good_meta, "embed_norm": "yes"})
    refused("bad_int", ["heads", "2.5"], metadata={**good_meta, "heads": "2.5"})
    refused("heads_not_dividing_d", ["heads", "5"], metadata={**good_meta, "heads": "5"})
    refused("catalog_too_short", ["catalog", "149 ids", "150"], metadata={**good_meta, "catalog": json.dumps(case.ids[:-1])})
    refused("no_catalog", ["catalog", "--item-ids"], metadata={k: v for k, v in good_meta.items() if k != "catalog"})
    refused("metadata_not_string", ["__metadata__", "d"], header_override=json.dumps({"__metadata__": {"d": 32}}))
    refused("unsupported_dtype", ["I64", "F32|F16|BF16|F64"],
            tensors={**good_tensors, "embedding/norm/bias": ("I64", np.zeros(32, dtype=np.int64))})
    refused("truncated", ["past the end"], truncate=-100)
    refused("header_too_long", ["header length"], truncate=20)
    refused("not_json", ["not valid JSON"], header_override="{\"a\": [1, 2")
    inf_tensors = dict(good_tensors)
    inf_array = np.array(good_tensors["encoder/layer_0/ffn/inner/weight"][1])
    inf_array[2, 3] = np.inf
    inf_tensors["encoder/layer_0/ffn/inner/weight"] = ("F32", inf_array)
    refused("inf_weight", ["encoder/layer_0/ffn/inner/weight", "Inf"], tensors=inf_tensors)
    refused("flag_not_used", ["--heads", "__metadata__"], extra=("--heads", "2"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqrec", required=True, help="path to the seqrec binary")
    parser.add_argument("--workdir", required=True, help="scratch folder for checkpoints and models")
    families = list(MODEL_FAMILIES) + ["errors", "safetensors"]
    parser.add_argument("--family", default="all", choices=families + ["all"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    seqrec = seqrec_binary(args.seqrec, args.workdir)
    if seqrec is None:
        return 1

    results = Results()
    for family in (families if args.family == "all" else [args.family]):
        if family == "errors":
            check_errors(results, seqrec, args.workdir)
        elif family == "safetensors":
            check_safetensors(results, seqrec, args.workdir)
        else:
            check_family(results, seqrec, args.workdir, family)
    return finish(results)


if __name__ == "__main__":
    sys.exit(main())
