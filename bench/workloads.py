"""The reference workloads of docs/performance.md, for bench/compare.py and
bench/http_bench.py: how each model is made (train-free, fixed seed), saved, converted and
exported to ONNX; the request sets; and the useful-FLOP count of one request. The models
that read time (`tisasrec`, `hstu`, `hstu-large`) are built in bench/newer_models.py, the
RecBole ones in bench/recbole_models.py.

Everything here runs under /usr/bin/python3 (Debian's python3-torch 1.13 and numpy).

A prepared workload folder holds:
  checkpoint file    what the source framework saves (torch.save of its state_dict / checkpoint)
  model.seqrec       `seqrec convert` of it
  model.onnx         torch.onnx.export of the scoring forward (opset 14, dynamic batch):
                     the source model's own encoder, then logits over every catalog row
  onnx_failed.txt    instead of model.onnx when torch.onnx.export failed: why (compare.py then
                     shows no ONNX Runtime column for the workload)
  sets/NAME.txt      one request per line, the history's item ids (seqrec_timing); for the
                     models that read time `ID@TIMESTAMP` tokens, and for HSTU ` now=T` last
  sets/NAME.*.bin    the same requests as the model's input tensors, little-endian, row-major
  sets/NAME.json     {"n": requests, "inputs": [{"name", "dtype", "shape", "file"}],
                      "lengths": [history length of each request]}
"""

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "parity"))
import sasrec_pytorch  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import newer_models  # noqa: E402  (bench/, on the path above)

RECBOLE_REFERENCE = os.path.join(REPO, "tests", "parity", "recbole_reference.py")
SEED = 20240601
FORMAT_VERSION = "4"  # bump when the files a workload folder holds change meaning


class NotAvailable(Exception):
    """A workload whose source model or converter this checkout does not have yet."""


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    source: str          # pmixer | recbole_sasrec | recbole_bert4rec | tisasrec | hstu
    d: int
    max_len: int         # L
    heads: int
    blocks: int
    ffn: int             # 0: no FFN (HSTU)
    items: int           # real catalog items (rows 1..items; row 0 is padding)
    activation: str      # relu | gelu | none (TiSASRec's FFN) | silu (HSTU)
    requests: int        # size of the main request set
    quick_requests: int  # ... with --quick
    # Only for the models that read time (None elsewhere, and then left out of the stamp):
    time_span: int = None         # TiSASRec: intervals clamp here
    attention_dim: int = None     # HSTU: dqk per head
    linear_dim: int = None        # HSTU: dv per head
    gr_output_length: int = None  # HSTU: padded length N = L + this + 1

    @property
    def bidirectional(self):
        return self.source == "recbole_bert4rec"

    @property
    def timed(self):
        """Its requests carry timestamps (bench/newer_models.py)."""
        return self.source in ("tisasrec", "hstu")


WORKLOADS = {
    w.name: w for w in [
        Workload("ml1m", "pmixer", d=50, max_len=200, heads=1, blocks=2, ffn=50, items=3416,
                 activation="relu", requests=512, quick_requests=128),
        Workload("recbole", "recbole_sasrec", d=64, max_len=50, heads=2, blocks=2, ffn=256, items=10000,
                 activation="gelu", requests=512, quick_requests=128),
        Workload("bert4rec", "recbole_bert4rec", d=64, max_len=50, heads=2, blocks=2, ffn=256, items=10000,
                 activation="gelu", requests=512, quick_requests=128),
        Workload("catalog1m", "recbole_sasrec", d=64, max_len=50, heads=2, blocks=2, ffn=256, items=1_000_000,
                 activation="gelu", requests=128, quick_requests=64),
        # The same encoder over 10M items: a 2.56 GB fp32 item table, past ONNX's 2 GB protobuf
        # limit (torch.onnx.export then writes the weights as external data beside model.onnx).
        Workload("catalog10m", "recbole_sasrec", d=64, max_len=50, heads=2, blocks=2, ffn=256, items=10_000_000,
                 activation="gelu", requests=64, quick_requests=32),
        # TiSASRec.pytorch on ml-1m as its README trains it (maxlen 200, 2 blocks, 1 head, d 50,
        # time_span 256), in the code generation of the published checkpoint (9ddc21e): no FFN
        # activation. 256 requests: each one's relation matrix is an L x L input of the peers.
        Workload("tisasrec", "tisasrec", d=50, max_len=200, heads=1, blocks=2, ffn=50, items=3416,
                 activation="none", requests=256, quick_requests=64, time_span=256),
        # generative-recommenders' configs/ml-1m/hstu-sampled-softmax-n128-large-final.gin
        # (N = 200 + 10 + 1); ml-1m's 3,706 rated movies (newer_models.py: catalog sizes).
        Workload("hstu", "hstu", d=50, max_len=200, heads=2, blocks=8, ffn=0, items=3706, activation="silu",
                 requests=512, quick_requests=128, attention_dim=25, linear_dim=25, gr_output_length=10),
        # configs/ml-20m/hstu-sampled-softmax-n128-large-final.gin; ml-20m's 26,744 rated movies.
        Workload("hstu-large", "hstu", d=256, max_len=200, heads=8, blocks=16, ffn=0, items=26744,
                 activation="silu", requests=128, quick_requests=32, attention_dim=32, linear_dim=32,
                 gr_output_length=10),
    ]
}


# ---- useful FLOPs ---------------------------------------------------------------------------

def useful_flops(w, history_length):
    """The floating-point operations one request needs, counting multiply and add as 2:

    n = min(history length, L) real slots (BERT4Rec: the same count, the [MASK] slot replacing
    the oldest item as RecBole >= 1.2 lays it out). Per block, with d the width, f the FFN width:
      K and V projections for all n slots                    2 · 2·n·d²
      Q projection, output projection and FFN for the query rows:
          every block but the last: all n rows; the last block: the read-out slot only
                                                              rows · (2·d² + 2·d² + 4·d·f)
      scores q·k and the weighted sum p·v over the keys each query row sees:
          causal: the lower triangle, n(n+1)/2 pairs; bidirectional: n² pairs;
          the last block: n pairs (one query)                 pairs · 4·d  (all heads: h·d_h = d)
    then BERT4Rec's head (dense d×d) when there is one. The catalog scoring counts nothing:
    seqrec ranks small batches and large catalogs by an int8 pre-scan plus the exact fp32
    rescoring of a few rows (kernels/quantized_scan.h), so the full product's 2·d per item
    is not work it does, and counting it would flatter the FLOP rate (catalog1m: ~100% of the
    sgemm limit). Padded slots, LayerNorm, softmax, activations, embedding gathers and top-k
    count nothing either (they are O(n·d) or O(items)).
    tisasrec, hstu, hstu-large: newer_models.useful_flops (its docstring has their count)."""
    if w.timed:
        return newer_models.useful_flops(w, history_length)
    n = min(history_length, w.max_len)  # BERT4Rec (RecBole >= 1.2): [MASK] appended, oldest dropped
    d, f = w.d, w.ffn
    total = 0
    for block in range(w.blocks):
        last = block == w.blocks - 1
        rows = 1 if last else n
        total += 4 * n * d * d                       # K, V
        total += rows * (4 * d * d + 4 * d * f)      # Q + output projection, FFN
        if last:
            pairs = n
        elif w.bidirectional:
            pairs = n * n
        else:
            pairs = n * (n + 1) // 2
        total += 4 * pairs * d
    if w.bidirectional:
        total += 2 * d * d
    return total


# ---- models ---------------------------------------------------------------------------------

def _trained_looking(model, seed):
    """SASRec.pytorch's init (xavier_normal_ on matrices), random LayerNorm affines and biases
    (the defaults 1/0 would be unusually easy), padding rows zero."""
    torch.manual_seed(seed)
    for param in model.parameters():
        if param.dim() >= 2:
            torch.nn.init.xavier_normal_(param.data)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and name.endswith("weight"):  # LayerNorm gammas
                param.copy_(1.0 + 0.25 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    model.eval()
    return model


class PmixerScoring(torch.nn.Module):
    """SASRec.pytorch's encoder (its own log2feats and layers) and its predict's scoring
    over every catalog row: left-padded item rows [B, L] -> logits [B, items + 1]. `_embed`
    is SASRec.pytorch's, written with tensor ops instead of numpy so that it traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        d = model.item_emb.embedding_dim
        scale = d ** 0.5

        def embed(log_seqs):
            seqs = model.item_emb(log_seqs) * scale
            length = log_seqs.shape[1]
            poss = torch.arange(1, length + 1, dtype=torch.long).unsqueeze(0) * (log_seqs != 0)
            seqs = seqs + model.pos_emb(poss)
            return model.emb_dropout(seqs)

        model._embed = embed

    def forward(self, log_seqs):
        feats = self.model.log2feats(log_seqs)
        return torch.matmul(feats[:, -1, :], self.model.item_emb.weight.t())


def _recbole_module():
    """bench/recbole_models.py: the RecBole workloads, on tests/parity/recbole_reference.py."""
    if not os.path.exists(RECBOLE_REFERENCE):
        raise NotAvailable("needs tests/parity/recbole_reference.py and `seqrec convert --from recbole` "
                           "(being written; not in this checkout yet)")
    import recbole_models  # noqa: E402  (bench/ is on sys.path: this file's folder)
    return recbole_models


def build_model(w):
    """The source model with trained-looking weights, wrapped as a scoring module."""
    if w.timed:
        return newer_models.build_scoring(w, SEED)
    if w.source == "pmixer":
        model = sasrec_pytorch.build_model("post_ln", w.items, w.d, w.heads, w.blocks, w.max_len)
        _trained_looking(model, SEED)
        with torch.no_grad():
            model.item_emb.weight[0].zero_()
            model.pos_emb.weight[0].zero_()
        return PmixerScoring(model).eval()
    return _recbole_module().build_scoring(w, SEED, _trained_looking)


def save_checkpoint(w, scoring, folder):
    """Saves the source's checkpoint; returns its path."""
    if w.timed:
        return newer_models.save_checkpoint(w, scoring, folder)
    if w.source == "pmixer":
        name = (f"SASRec.epoch=1.lr=0.001.layer={w.blocks}.head={w.heads}"
                f".hidden={w.d}.maxlen={w.max_len}.pth")
        path = os.path.join(folder, name)
        torch.save(scoring.model.state_dict(), path)
        return path
    return _recbole_module().save_checkpoint(w, scoring, folder)


def convert_command(w, seqrec, checkpoint, out):
    if w.timed:
        return newer_models.convert_command(w, seqrec, checkpoint, out)
    if w.source == "pmixer":
        return [seqrec, "convert", "--from", "pmixer", checkpoint, "--out", out, "--variant", "post_ln",
                "--score", "raw"]
    return _recbole_module().convert_command(w, seqrec, checkpoint, out)


# ---- inputs ---------------------------------------------------------------------------------

def model_inputs(w, histories):
    """The source model's input tensors for a list of histories: {name: int64 array}."""
    if w.timed:
        return newer_models.model_inputs(w, histories)
    if w.source == "pmixer":
        seqs = np.stack([sasrec_pytorch.left_padded_window(h, w.max_len) for h in histories]).astype(np.int64)
        return {"log_seqs": seqs}
    return _recbole_module().model_inputs(w, histories)


def random_histories(w, count, seed, length=None):
    """Histories of random length 1..2L (or exactly `length`), item rows 1..items (the models
    that read time: newer_models.TimedHistory, with timestamps and `now`)."""
    if w.timed:
        return newer_models.random_histories(w, count, seed, length)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = length if length else int(rng.integers(1, 2 * w.max_len + 1))
        out.append([int(x) for x in rng.integers(1, w.items + 1, size=n)])
    return out


def request_sets(w, quick):
    """name -> histories. `main` is the table's request mix; ml1m also has the two fixed-length
    sets of the history-length target (10 vs 200 items), hstu-large the full-length set of its
    FLOP-limit target."""
    sets = {"main": random_histories(w, w.quick_requests if quick else w.requests, SEED + 1)}
    if w.name == "ml1m":
        count = 32 if quick else 64
        sets["len10"] = random_histories(w, count, SEED + 2, length=10)
        sets["len200"] = random_histories(w, count, SEED + 3, length=200)
    if w.name == "hstu-large":
        sets["len200"] = random_histories(w, 8 if quick else 16, SEED + 3, length=200)
    return sets


def request_line(w, history):
    """One line of a seqrec_timing request file."""
    if w.timed:
        return newer_models.request_line(w, history)
    return " ".join(str(x) for x in history)


def write_set(folder, name, w, histories):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".txt"), "w") as f:
        for h in histories:
            f.write(request_line(w, h) + "\n")
    inputs = []
    for key, array in model_inputs(w, histories).items():
        array = np.ascontiguousarray(array.astype(np.int64))
        file = f"{name}.{key}.bin"
        array.tofile(os.path.join(folder, file))
        inputs.append({"name": key, "dtype": "int64", "shape": list(array.shape), "file": file})
    meta = {"n": len(histories), "inputs": inputs, "lengths": [len(h) for h in histories]}
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(meta, f)


def load_set_inputs(folder, name):
    """{input name: int64 array [N, ...]} as written by write_set."""
    with open(os.path.join(folder, name + ".json")) as f:
        meta = json.load(f)
    return {i["name"]: np.fromfile(os.path.join(folder, i["file"]), dtype=np.int64).reshape(i["shape"])
            for i in meta["inputs"]}, meta


# ---- preparing a workload folder ----------------------------------------------------------------

def _stamp(w, quick):
    fields = {k: v for k, v in dataclasses.asdict(w).items() if v is not None}  # as before the time fields
    text = json.dumps([fields, quick, SEED, FORMAT_VERSION, torch.__version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def export_onnx(w, scoring, example_inputs, folder, log):
    """torch.onnx.export of the scoring forward to FOLDER/model.onnx; when it fails, the reason
    goes to FOLDER/onnx_failed.txt instead (one line) and the run goes on without ONNX Runtime."""
    onnx_file = os.path.join(folder, "model.onnx")
    failed_file = os.path.join(folder, "onnx_failed.txt")
    for stale in (onnx_file, failed_file):
        if os.path.exists(stale):
            os.remove(stale)
    example = {k: torch.from_numpy(v) for k, v in example_inputs.items()}
    names = list(example)
    # Past 2 GB of weights (catalog10m) torch 1.13's per-node ONNX shape inference serialises
    # the whole graph, weights included, once per node: hours. Without it the export takes
    # a minute, writes the weights as external data beside model.onnx (the 2 GB protobuf
    # limit), and ONNX Runtime infers the shapes itself at load.
    large = sum(p.numel() * p.element_size() for p in scoring.parameters()) >= 2**31
    export = (functools.partial(torch.onnx.utils._export, onnx_shape_inference=False) if large
              else torch.onnx.export)
    try:
        with torch.no_grad():
            export(scoring, tuple(example[k] for k in names), onnx_file,
                              opset_version=14, input_names=names, output_names=["logits"],
                              dynamic_axes={**{k: {0: "batch"} for k in names}, "logits": {0: "batch"}},
                              do_constant_folding=True)
    except Exception as error:  # recorded, not fatal: the other two systems still run
        why = " ".join(f"torch.onnx.export failed: {type(error).__name__}: {error}".split())[:500]
        log(f"[{w.name}] {why}")
        if os.path.exists(onnx_file):
            os.remove(onnx_file)
        with open(failed_file, "w") as f:
            f.write(why + "\n")


def onnx_failure(folder):
    """Why the workload has no ONNX export (None when it has one)."""
    path = os.path.join(folder, "onnx_failed.txt")
    return open(path).read().strip() if os.path.exists(path) else None


def prepare(w, workdir, seqrec, quick, log=print):
    """Makes (or reuses, when the same stamp is there) the model, its ONNX export and the
    request sets; always re-converts with the given seqrec binary. Returns the folder."""
    folder = os.path.join(workdir, w.name + ("-quick" if quick else ""))
    stamp_file = os.path.join(folder, "stamp")
    stamp = _stamp(w, quick)
    checkpoint_info = os.path.join(folder, "checkpoint.txt")
    fresh = not (os.path.exists(stamp_file) and open(stamp_file).read() == stamp)
    if fresh:
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(stamp_file):
            os.remove(stamp_file)
        log(f"[{w.name}] building the model ({w.items:,} items) with trained-looking random weights")
        torch.set_num_threads(2)
        scoring = build_model(w)
        checkpoint = save_checkpoint(w, scoring, folder)
        with open(checkpoint_info, "w") as f:
            f.write(checkpoint)
        log(f"[{w.name}] exporting ONNX (opset 14, dynamic batch)")
        sets = request_sets(w, quick)
        export_onnx(w, scoring, model_inputs(w, sets["main"][:2]), folder, log)
        for name, histories in sets.items():
            write_set(os.path.join(folder, "sets"), name, w, histories)
        with open(stamp_file, "w") as f:
            f.write(stamp)
    checkpoint = open(checkpoint_info).read()
    out = os.path.join(folder, "model.seqrec")
    result = subprocess.run(convert_command(w, seqrec, checkpoint, out), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"[{w.name}] seqrec convert failed: {result.stderr.strip()}")
    return folder


def set_names(folder):
    return sorted(f[:-5] for f in os.listdir(os.path.join(folder, "sets")) if f.endswith(".json"))


def set_lengths(folder, name):
    with open(os.path.join(folder, "sets", name + ".json")) as f:
        return json.load(f)["lengths"]


def gflop_per_set(w, folder, name):
    return sum(useful_flops(w, n) for n in set_lengths(folder, name)) / 1e9


def scoring_module_from_folder(w, folder):
    """The scoring module with the saved weights (what the PyTorch peer runs)."""
    checkpoint = open(os.path.join(folder, "checkpoint.txt")).read()
    if w.timed:
        return newer_models.load_scoring(w, checkpoint)
    if w.source == "pmixer":
        model = sasrec_pytorch.build_model("post_ln", w.items, w.d, w.heads, w.blocks, w.max_len)
        model.load_state_dict(torch.load(checkpoint))
        return PmixerScoring(model).eval()
    return _recbole_module().load_scoring(w, checkpoint)


if __name__ == "__main__":
    for w in WORKLOADS.values():
        print(f"{w.name:10s} useful MFLOP: len 1 {useful_flops(w, 1)/1e6:7.2f}   len 10 {useful_flops(w, 10)/1e6:7.2f}"
              f"   len L {useful_flops(w, w.max_len)/1e6:7.2f}")
