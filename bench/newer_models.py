"""The time-aware workloads of bench/workloads.py (`tisasrec`, `hstu`, `hstu-large`), built on the
parity references tests/parity/tisasrec_reference.py (pmixer/TiSASRec.pytorch, to the letter)
and tests/parity/hstu_reference.py (facebookresearch/generative-recommenders' research HSTU),
saved as their trainers save and converted by `seqrec convert --from tisasrec|hstu`.

A history here is a TimedHistory: [(item row, unix seconds), ...] oldest first, plus `now` (the
time the recommendation is for; HSTU reads it as the next item's timestamp, TiSASRec ignores
it). seqrec_timing reads one per line as `ROW@TIMESTAMP ...` followed by ` now=T` for HSTU.

The scoring forwards (what PyTorch runs and torch.onnx.export traces):
  tisasrec  log_seqs [B, L] (left padded) and time_matrices [B, L, L] (utils.py's computeRePos,
            over the whole history's normalised times: the source computes both in numpy
            before model.predict, so the peers get them ready-made) -> logits over every row.
            seq2feats written with tensor ops where the source uses numpy (positions by
            np.tile, torch.LongTensor of numpy arrays), which tracing would freeze to the
            example's batch; every layer is the model's own module. In the attention's forward
            (otherwise line for line the source's) the heads are put back side by side with
            reshape/permute instead of torch.cat(torch.split(outputs, batch, dim=0), dim=2):
            the traced Split keeps the example's batch as a constant, and ONNX Runtime then
            refuses every other batch size. Same values.
  hstu      past_ids [B, N], past_timestamps [B, N] (now in slot n), past_lengths [B] (their
            eval features, N = L + gr_output_length + 1) -> cosine of encode() with every
            L2-normalised item row (their eval's ranking), the normalised table made once.
            The reference's stand-ins for fbgemm's jagged operators loop over the batch in
            Python (int(offsets[b])), which tracing would freeze to the example's batch and
            lengths: they are replaced here by one mask-indexing op each (the same values), and
            the time buckets take log of a float32 copy of |gap| (torch's own conversion of
            an int64 log; ONNX has no integer Log). Everything else is the reference's code.

Catalog sizes: TiSASRec ml-1m 3,416 items (the published checkpoint's item_num). HSTU keeps raw
MovieLens ids as embedding rows (ml-1m: 3,953 rows, 3,883 of them movies in movies.dat; ml-20m:
131,263 rows, 27,278 movies), and their eval ranks every movie. Here the rows are re-indexed to
the movies that have ratings, every row an item: ml-1m 3,706, ml-20m 26,744. Scoring then covers
~4% (ml-1m) / ~2% (ml-20m) fewer rows than their eval; the rows that are not movies are never
scored by anyone, they only cost memory.
"""

import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "parity"))
import hstu_reference as hstu_ref  # noqa: E402
import tisasrec_reference as tisasrec_ref  # noqa: E402

# ml-1m's first rating (2000-04-25): histories' timestamps start near it.
BASE_TIMESTAMP = 956_703_932
# Gaps between consecutive ratings, seconds, and how often each occurs: MovieLens users rate in
# bursts (ties and seconds apart), with pauses of hours to months between sessions.
GAPS = np.array([0, 1, 2, 5, 40, 300, 3600, 86400, 30 * 86400])
GAP_WEIGHTS = np.array([.1, .15, .1, .15, .2, .1, .1, .05, .05])
# The published TiSASRec ml-1m checkpoint's code generation (9ddc21e): no FFN activation.
TISASREC_GENERATION = "2020-09"
TISASREC_EPOCHS = 601  # only in the file name


class TimedHistory(list):
    """[(row, timestamp), ...] oldest first, and the time the recommendation is for."""

    def __init__(self, pairs, now):
        super().__init__(pairs)
        self.now = now


def random_histories(w, count, seed, length=None):
    """Histories of random length 1..2L (or exactly `length`), item rows 1..items, ml-1m-like
    second timestamps; `now` a further gap after the last one."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = length if length else int(rng.integers(1, 2 * w.max_len + 1))
        rows = rng.integers(1, w.items + 1, size=n)
        gaps = rng.choice(GAPS, size=n + 1, p=GAP_WEIGHTS)
        gaps[0] = 0
        times = BASE_TIMESTAMP + np.cumsum(gaps)
        out.append(TimedHistory([(int(r), int(t)) for r, t in zip(rows, times[:n])], int(times[n])))
    return out


def request_line(w, history):
    """seqrec_timing's request line: ROW@TIMESTAMP ... [now=T]."""
    line = " ".join(f"{row}@{stamp}" for row, stamp in history)
    return line + (f" now={history.now}" if w.source == "hstu" else "")


# ---- TiSASRec ---------------------------------------------------------------------------------

def _time_aware_attention_forward(self, queries, keys, time_mask, attn_mask, time_matrix_K, time_matrix_V,
                                  abs_pos_K, abs_pos_V):
    """tisasrec_reference.TimeAwareMultiHeadAttention.forward, but for its last line (see the
    module docstring)."""
    Q, K, V = self.Q_w(queries), self.K_w(keys), self.V_w(keys)

    Q_, K_, V_ = self._heads(Q, 2), self._heads(K, 2), self._heads(V, 2)
    time_matrix_K_ = self._heads(time_matrix_K, 3)
    time_matrix_V_ = self._heads(time_matrix_V, 3)
    abs_pos_K_ = self._heads(abs_pos_K, 2)
    abs_pos_V_ = self._heads(abs_pos_V, 2)

    attn_weights = Q_.matmul(torch.transpose(K_, 1, 2))
    attn_weights += Q_.matmul(torch.transpose(abs_pos_K_, 1, 2))
    attn_weights += time_matrix_K_.matmul(Q_.unsqueeze(-1)).squeeze(-1)
    attn_weights = attn_weights / (K_.shape[-1] ** 0.5)

    if self.query_mask_by_repeat:
        time_mask = time_mask.unsqueeze(-1).repeat(self.head_num, 1, 1)
        time_mask = time_mask.expand(-1, -1, attn_weights.shape[-1])
    else:
        time_mask = time_mask.unsqueeze(-1).expand(attn_weights.shape[0], -1, attn_weights.shape[-1])
    attn_mask = attn_mask.unsqueeze(0).expand(attn_weights.shape[0], -1, -1)
    paddings = (torch.ones(attn_weights.shape) * tisasrec_ref.MASK_VALUE).to(self.dev)
    attn_weights = torch.where(time_mask, paddings, attn_weights)
    attn_weights = torch.where(attn_mask, paddings, attn_weights)

    attn_weights = self.softmax(attn_weights)
    attn_weights = self.dropout(attn_weights)

    outputs = attn_weights.matmul(V_)
    outputs += attn_weights.matmul(abs_pos_V_)
    outputs += attn_weights.unsqueeze(2).matmul(time_matrix_V_).reshape(outputs.shape)

    # (h*N, T, d/h) -> (N, T, d), head k at columns k*d/h: the source's cat(split(., N, 0), 2).
    slots = outputs.shape[1]
    outputs = outputs.reshape(self.head_num, -1, slots, self.head_size).permute(1, 2, 0, 3)
    return outputs.reshape(-1, slots, self.head_num * self.head_size)


class TisasrecScoring(torch.nn.Module):
    """TiSASRec.pytorch's seq2feats + predict over every catalog row, with tensor ops where the
    source uses numpy (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for layer in model.attention_layers:
            layer.forward = types.MethodType(_time_aware_attention_forward, layer)

    def forward(self, log_seqs, time_matrices):
        m = self.model
        seqs = m.item_emb(log_seqs)
        seqs = seqs * m.item_emb.embedding_dim ** 0.5
        seqs = m.item_emb_dropout(seqs)

        positions = torch.arange(log_seqs.shape[1]).unsqueeze(0).expand_as(log_seqs)  # np.tile
        abs_pos_K = m.abs_pos_K_emb_dropout(m.abs_pos_K_emb(positions))
        abs_pos_V = m.abs_pos_V_emb_dropout(m.abs_pos_V_emb(positions))

        time_matrix_K = m.time_matrix_K_dropout(m.time_matrix_K_emb(time_matrices))
        time_matrix_V = m.time_matrix_V_dropout(m.time_matrix_V_emb(time_matrices))

        timeline_mask = log_seqs == 0
        seqs = seqs * ~timeline_mask.unsqueeze(-1)

        tl = seqs.shape[1]
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool))

        for i in range(len(m.attention_layers)):
            Q = m.attention_layernorms[i](seqs)
            mha_outputs = m.attention_layers[i](Q, seqs, timeline_mask, attention_mask,
                                                time_matrix_K, time_matrix_V, abs_pos_K, abs_pos_V)
            seqs = Q + mha_outputs
            seqs = m.forward_layernorms[i](seqs)
            seqs = m.forward_layers[i](seqs)
            seqs = seqs * ~timeline_mask.unsqueeze(-1)

        log_feats = m.last_layernorm(seqs)
        # predict(): item_emb(every row) . the last slot's features
        return torch.matmul(log_feats[:, -1, :], m.item_emb.weight.t())


def _tisasrec_model(w):
    return tisasrec_ref.build_model(TISASREC_GENERATION, w.items, w.d, w.heads, w.blocks, w.max_len, w.time_span)


def _tisasrec_trained_looking(model, seed):
    """The 2020-09 code's init (PyTorch defaults: N(0, 1) embeddings, brought to the published
    checkpoint's row norms as tests/parity/test_tisasrec_parity.py does), random LayerNorm
    affines and biases."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for table, scale in ((model.item_emb, 0.7), (model.abs_pos_K_emb, 0.45), (model.abs_pos_V_emb, 0.45),
                             (model.time_matrix_K_emb, 0.2), (model.time_matrix_V_emb, 0.3)):
            table.weight.mul_(scale)
        for name, param in model.named_parameters():
            if "layernorm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.25 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    model.eval()
    return model


# ---- HSTU -------------------------------------------------------------------------------------

def _valid_slots(offsets, max_length):
    """[B, max_length]: slot p of user b holds one of its n_b rows (offsets: complete cumsum)."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.arange(max_length).unsqueeze(0) < lengths.unsqueeze(1)


def _jagged_to_padded_dense(values, offsets, max_length, padding_value=0.0):
    valid = _valid_slots(offsets, max_length)
    out = values.new_full((valid.size(0), max_length, values.size(-1)), padding_value)
    return out.masked_scatter(valid.unsqueeze(-1), values)


def _dense_to_jagged(dense, offsets):
    return dense[_valid_slots(offsets, dense.size(1))]


def _log_bucket(gaps):
    """hstu_reference.log_bucket with torch's int64 -> float32 conversion written out."""
    return (torch.log(torch.abs(gaps).clamp(min=1).float()) / hstu_ref.BUCKET_LOG_DIVISOR).long()


# hstu_attention and HSTUJagged.forward look these up in the reference module at call time.
hstu_ref.jagged_to_padded_dense = _jagged_to_padded_dense
hstu_ref.dense_to_jagged = _dense_to_jagged


class HstuScoring(torch.nn.Module):
    """Their eval: encode() (L2-normalised) . every L2-normalised item row."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for layer in model._hstu._attention_layers:
            layer._rel_attn_bias._bucketization_fn = _log_bucket
        with torch.no_grad():
            items = hstu_ref.normalized_item_embeddings(model)
        self.register_buffer("items_t", items.t().contiguous(), persistent=False)

    def forward(self, past_ids, past_timestamps, past_lengths):
        m = self.model
        query = m.encode(past_lengths=past_lengths, past_ids=past_ids,
                         past_embeddings=m.get_item_embeddings(past_ids),
                         past_payloads={"timestamps": past_timestamps})
        return torch.matmul(query, self.items_t)


def _hstu_model(w):
    return hstu_ref.build_model(max_item_id=w.items, item_embedding_dim=w.d, num_blocks=w.blocks, num_heads=w.heads,
                                dqk=w.attention_dim, dv=w.linear_dim, max_sequence_length=w.max_len,
                                gr_output_length=w.gr_output_length, dropout_rate=0.2, linear_dropout_rate=0.2)


def _hstu_trained_looking(model, w):
    """Their init, then the spreads tests/parity/test_hstu_parity.py gives a trained-looking
    model (item norms that vary, biases that matter), without its training steps."""
    with torch.no_grad():
        table = model._embedding_module._item_emb.weight
        table.mul_(torch.exp(0.7 * torch.randn(table.size(0), 1)) * 20.0)
        for layer in model._hstu._attention_layers:
            layer._rel_attn_bias._ts_w.normal_(0, 0.7)
            layer._rel_attn_bias._pos_w.normal_(0, 0.7)
            layer._uvqk.normal_(0, 1.5 / w.d ** 0.5)
            layer._o.bias.normal_(0, 0.1)
    model.eval()
    return model


# ---- the interface bench/workloads.py calls -----------------------------------------------------

def build_scoring(w, seed):
    torch.manual_seed(seed)
    if w.source == "tisasrec":
        return TisasrecScoring(_tisasrec_trained_looking(_tisasrec_model(w), seed)).eval()
    return HstuScoring(_hstu_trained_looking(_hstu_model(w), w)).eval()


def save_checkpoint(w, scoring, folder):
    if w.source == "tisasrec":
        return tisasrec_ref.save_checkpoint(scoring.model, folder, num_epochs=TISASREC_EPOCHS)
    model = scoring.model
    # train.py's file (no extension; the name spells b/h/dqk/dv), keys "module." (DDP).
    name = os.path.basename(hstu_ref.trainer_checkpoint_name(
        model, dataset_name="ml-1m" if w.items < 10_000 else "ml-20m", max_sequence_length=w.max_len))
    path = os.path.join(folder, name)
    hstu_ref.save_checkpoint(model, hstu_ref.make_optimizer(model), 100, path, ddp=True)
    # One line per embedding row: row 0 (padding) is not an item, row r is the item "r".
    with open(os.path.join(folder, "item_ids.txt"), "w") as f:
        f.write("\n" + "".join(f"{r}\n" for r in range(1, w.items + 1)))
    return path


def load_scoring(w, checkpoint):
    if w.source == "tisasrec":
        model = _tisasrec_model(w)
        model.load_state_dict(torch.load(checkpoint))
        return TisasrecScoring(model.eval()).eval()
    model = _hstu_model(w)
    state = torch.load(checkpoint)["model_state_dict"]
    model.load_state_dict({k[len("module."):]: v for k, v in state.items()})
    return HstuScoring(model.eval()).eval()


def convert_command(w, seqrec, checkpoint, out):
    if w.source == "tisasrec":
        # heads and maxlen from main.py's file name, time_span from time_matrix_V_emb.
        return [seqrec, "convert", "--from", "tisasrec", checkpoint, "--out", out, "--score", "raw",
                "--ffn-activation", w.activation]
    return [seqrec, "convert", "--from", "hstu", checkpoint, "--out", out, "--score", "raw",
            "--item-ids", os.path.join(os.path.dirname(checkpoint), "item_ids.txt"), "--heads", str(w.heads),
            "--max-len", str(w.max_len), "--attention-dim", str(w.attention_dim), "--linear-dim", str(w.linear_dim)]


def model_inputs(w, histories):
    """The source pipeline's input tensors for each history, stacked: {name: int64 array}."""
    if w.source == "tisasrec":
        pairs = [tisasrec_ref.model_inputs(list(h), w.max_len, w.time_span) for h in histories]
        return {"log_seqs": np.concatenate([p[0] for p in pairs]).astype(np.int64),
                "time_matrices": np.concatenate([p[1] for p in pairs]).astype(np.int64)}
    features = [hstu_ref.eval_features(list(h), h.now, w.max_len, w.gr_output_length) for h in histories]
    return {"past_ids": torch.cat([f[1] for f in features]).numpy(),
            "past_timestamps": torch.cat([f[2] for f in features]).numpy(),
            "past_lengths": torch.cat([f[0] for f in features]).numpy()}


# ---- useful FLOPs -------------------------------------------------------------------------------

def useful_flops(w, history_length):
    """One request's floating-point operations (multiply and add counted as 2), n = min(history
    length, L). As bench/workloads.py counts SASRec: the work the source's arithmetic needs for
    the real slots, causal; the last block only for the read-out slot; LayerNorm, softmax/SiLU,
    activations, bias and table adds, gathers and top-k count nothing.

    tisasrec, per block (d wide, h·d_h = d, no output projection, FFN two d x d convolutions):
      K, V for the n real slots                          2 · 2·n·d²  (a padded slot's key is the bias)
      Q and the FFN for the query rows (n, or 1 in the last block)   rows · (2·d² + 4·d²)
      each query row at window slot s sees every slot 0..s, padded keys included (the source does
      not mask them): per real key q·(K+P^K) + q·T^K[r_ij] + a·(V+P^V) + a·T^V[r_ij] = 8·d;
      per padded key q·(b_k+P^K_j) + a·(b_v+P^V_j) = 4·d, their time row being one shared
      T[min(t'_i, span)] (+4·d per query row). The catalog scoring counts nothing, as for SASRec
      (int8 pre-scan plus exact rescoring, kernels/quantized_scan.h).
    hstu, per block (C = 2·H·(dqk + dv) projection columns):
      u, v, q, k projection                              2·n·d·C (last block: v, k for n rows, u, q for 1)
      SiLU attention over the causal pairs of the real slots, per head   pairs · 2·(dqk + dv)
          (n(n+1)/2 pairs; the last block n). The source's dense einsum over the padded N x N
          (N = L + 11) and its masked half are not useful work.
      output projection                                  rows · 2·H·dv·d
    then the scoring of every item row (2·d per item; the brief's choice: it is ~0.5% of the
    total for both HSTU shapes)."""
    n = min(history_length, w.max_len)
    d = w.d
    total = 0
    if w.source == "tisasrec":
        padded = w.max_len - n
        for block in range(w.blocks):
            last = block == w.blocks - 1
            total += 4 * n * d * d
            queries = range(n - 1, n) if last else range(n)  # query row i sits at slot padded + i
            total += len(queries) * 6 * d * d
            for i in queries:
                total += 8 * d * (i + 1) + 4 * d * padded + (4 * d if padded else 0)
        return total
    hv, hqk = w.heads * w.linear_dim, w.heads * w.attention_dim
    for block in range(w.blocks):
        last = block == w.blocks - 1
        if last:
            total += 2 * n * d * (hv + hqk) + 2 * d * (hv + hqk)
            pairs, rows = n, 1
        else:
            total += 2 * n * d * 2 * (hv + hqk)
            pairs, rows = n * (n + 1) // 2, n
        total += pairs * 2 * (hqk + hv)
        total += rows * 2 * hv * d
    return total + 2 * d * w.items
