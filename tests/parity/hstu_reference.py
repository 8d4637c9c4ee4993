"""Reference HSTU modules that mirror generative-recommenders' research code, and its trainer's
checkpoint layout.

A test reference written for seqrec (github: facebookresearch/generative-recommenders, read at
2e81fab, 2025-06-25; the code is unchanged in substance since the initial commit 9afe62c,
2024-04-17, where it lived at the repository root instead of generative_recommenders/research/).
It reproduces the evaluation forward pass with the same class and attribute names and the same
module nesting, so `state_dict()` has exactly the keys their trainer saves:

  modeling/sequential/hstu.py      RelativeBucketedTimeAndPositionBasedBias, the attention of
                                   _hstu_attention_maybe_from_cache, SequentialTransductionUnitJagged,
                                   HSTUJagged, HSTU (+ the `_attn_mask` buffer)
  modeling/sequential/embedding_modules.py           LocalEmbeddingModule
  modeling/sequential/input_features_preprocessors.py
                                   LearnablePositionalEmbeddingInputFeaturesPreprocessor
  modeling/sequential/output_postprocessors.py       L2NormEmbeddingPostprocessor
  rails/similarities/dot_product_similarity_fn.py    DotProductSimilarity (no weights)
  modeling/sequential/autoregressive_losses.py       NegativesSampler L2 normalisation of
                                   item embeddings (item_l2_norm)
  modeling/sequential/features.py  movielens_seq_features_from_row: gr_output_length + 1 zero
                                   slots appended; the target's timestamp put in slot `length`
  data/dataset.py                  DatasetV2(chronological=True): oldest first, the most recent
                                   max_sequence_length items, right-padded with 0
  data/eval.py, rails/indexing/mips_top_k.py
                                   eval: model.encode(...) . L2-normalised item embeddings
  trainer/train.py                 train_fn: how the modules are built; the model is always
                                   wrapped in DistributedDataParallel (keys "module.…"); AdamW;
                                   torch.save({"epoch", "model_state_dict",
                                   "optimizer_state_dict"}, f"./ckpts/{model_desc}_ep{epoch}")

fbgemm's jagged operators (asynchronous_complete_cumsum, jagged_to_padded_dense,
dense_to_jagged) are replaced by the exact dense equivalents below (pure indexing, no
arithmetic). The KV-cache path (delta_x_offsets / cache) and the "softmax_rel_bias"
normalisation are not used by their evaluation and are not reproduced.

`scores_for_history` is what seqrec must reproduce: every embedding row's score for one user
history [(row, timestamp), ...] when the next item happens at `now`. `spec_scores` recomputes
the same from the bare state_dict, one user at a time, the way docs/sources/hstu.md tells the C++
engine to; `python3 hstu_reference.py` checks that the two agree.
"""

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

# hstu.py: HSTU.__init__ builds each layer's RelativeBucketedTimeAndPositionBasedBias with these.
NUM_BUCKETS = 128
BUCKET_LOG_DIVISOR = 0.301
# SequentialTransductionUnitJagged's default `epsilon` (both layer norms; no affine weights).
LAYER_NORM_EPS = 1e-6
# train.py: L2NormEmbeddingPostprocessor(eps=1e-6) for the user side; gin train_fn.l2_norm_eps
# (default 1e-6, 1e-6 in every config) for the item side.
L2_NORM_EPS = 1e-6
# gin train_fn defaults that shape the model or its scores.
DEFAULT_GR_OUTPUT_LENGTH = 10
DEFAULT_TEMPERATURE = 0.05


# ---- fbgemm jagged operators, dense ------------------------------------------------------

def complete_cumsum(lengths):
    """torch.ops.fbgemm.asynchronous_complete_cumsum: [B] -> [B + 1], starting at 0."""
    return torch.cat([torch.zeros(1, dtype=lengths.dtype), torch.cumsum(lengths, dim=0)])


def jagged_to_padded_dense(values, offsets, max_length, padding_value=0.0):
    """[sum_b n_b, D] -> [B, max_length, D]; rows past n_b are padding_value (rows past
    max_length are dropped)."""
    batch = offsets.numel() - 1
    out = values.new_full((batch, max_length, values.size(-1)), padding_value)
    for b in range(batch):
        start, end = int(offsets[b]), int(offsets[b + 1])
        n = min(end - start, max_length)
        out[b, :n] = values[start:start + n]
    return out


def dense_to_jagged(dense, offsets):
    """[B, N, D] -> [sum_b n_b, D]: the first n_b rows of each user."""
    batch = offsets.numel() - 1
    return torch.cat([dense[b, : int(offsets[b + 1] - offsets[b])] for b in range(batch)], dim=0)


# ---- rails/similarities, modeling/sequential/*_modules ------------------------------------

class DotProductSimilarity(torch.nn.Module):
    """No weights; (B, D) x (1, X, D) -> (B, X)."""

    def forward(self, query_embeddings, item_embeddings, **kwargs):
        return torch.mm(query_embeddings, item_embeddings.squeeze(0).t()), {}


class LocalEmbeddingModule(torch.nn.Module):
    def __init__(self, num_items, item_embedding_dim):
        super().__init__()
        self._item_embedding_dim = item_embedding_dim
        # Row 0 is padding (padding_idx only freezes its gradient: their truncated-normal init
        # fills it like every other row, so it is not zero in a real checkpoint).
        self._item_emb = torch.nn.Embedding(num_items + 1, item_embedding_dim, padding_idx=0)
        truncated_normal_(self._item_emb.weight.data, mean=0.0, std=0.02)

    def get_item_embeddings(self, item_ids):
        return self._item_emb(item_ids)

    @property
    def item_embedding_dim(self):
        return self._item_embedding_dim


class LearnablePositionalEmbeddingInputFeaturesPreprocessor(torch.nn.Module):
    """item embedding * sqrt(D) + position embedding of the slot index (0 = oldest kept item),
    dropout, then rows whose id is 0 set to zero."""

    def __init__(self, max_sequence_len, embedding_dim, dropout_rate):
        super().__init__()
        self._embedding_dim = embedding_dim
        self._pos_emb = torch.nn.Embedding(max_sequence_len, self._embedding_dim)
        self._dropout_rate = dropout_rate
        self._emb_dropout = torch.nn.Dropout(p=dropout_rate)
        truncated_normal_(self._pos_emb.weight.data, mean=0.0, std=math.sqrt(1.0 / self._embedding_dim))

    def forward(self, past_lengths, past_ids, past_embeddings, past_payloads):
        batch, slots = past_ids.size()
        positions = torch.arange(slots).unsqueeze(0).repeat(batch, 1)
        user_embeddings = past_embeddings * (self._embedding_dim ** 0.5) + self._pos_emb(positions)
        user_embeddings = self._emb_dropout(user_embeddings)
        valid_mask = (past_ids != 0).unsqueeze(-1).float()
        user_embeddings *= valid_mask
        return past_lengths, user_embeddings, valid_mask


class L2NormEmbeddingPostprocessor(torch.nn.Module):
    def __init__(self, embedding_dim, eps=L2_NORM_EPS):
        super().__init__()
        self._embedding_dim = embedding_dim
        self._eps = eps

    def forward(self, output_embeddings):
        output_embeddings = output_embeddings[..., : self._embedding_dim]
        return output_embeddings / torch.clamp(
            torch.linalg.norm(output_embeddings, ord=None, dim=-1, keepdim=True), min=self._eps)


class LayerNormEmbeddingPostprocessor(torch.nn.Module):
    """train_fn.user_embedding_norm = "layer_norm" (no config uses it)."""

    def __init__(self, embedding_dim, eps=L2_NORM_EPS):
        super().__init__()
        self._embedding_dim = embedding_dim
        self._eps = eps

    def forward(self, output_embeddings):
        output_embeddings = output_embeddings[..., : self._embedding_dim]
        return F.layer_norm(output_embeddings, normalized_shape=(self._embedding_dim,), eps=self._eps)


def truncated_normal_(x, mean, std):
    """modeling/initialization.py's truncated_normal: each value the first of 4 normal draws
    inside (-2, 2) (the first draw when none is), times std, plus mean."""
    with torch.no_grad():
        draws = x.new_empty(x.shape + (4,)).normal_()
        inside = (draws < 2) & (draws > -2)
        first = inside.max(-1, keepdim=True)[1]
        x.copy_(draws.gather(-1, first).squeeze(-1))
        x.mul_(std).add_(mean)
        return x


# ---- modeling/sequential/hstu.py -----------------------------------------------------------

def log_bucket(gaps):
    """HSTU's bucketization_fn: (log(max(|gap|, 1)) / 0.301) truncated to int64, computed as
    torch computes it: |gap| int64 -> float32, float32 log, float32 division."""
    return (torch.log(torch.abs(gaps).clamp(min=1)) / BUCKET_LOG_DIVISOR).long()


class RelativeBucketedTimeAndPositionBasedBias(torch.nn.Module):
    """bias[b, i, j] = _pos_w[N - 1 + j - i] + _ts_w[clamp(bucket(t[b, i + 1] - t[b, j]), 0, 128)]
    with N the padded length (max_sequence_length + gr_output_length + 1) and t[b, N] := t[b, N - 1].
    Query slot i is biased by the gap between the NEXT slot's timestamp and key j's: for the
    last real item that is the target's (at eval) — the time of the recommendation."""

    def __init__(self, max_seq_len, num_buckets, bucketization_fn):
        super().__init__()
        self._max_seq_len = max_seq_len
        self._ts_w = torch.nn.Parameter(torch.empty(num_buckets + 1).normal_(mean=0, std=0.02))
        self._pos_w = torch.nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(mean=0, std=0.02))
        self._num_buckets = num_buckets
        self._bucketization_fn = bucketization_fn

    def forward(self, all_timestamps):
        batch = all_timestamps.size(0)
        n = self._max_seq_len
        # Their pad/repeat/reshape construction selects exactly these entries (checked by
        # _check_position_bias_construction below).
        query = torch.arange(n).unsqueeze(1)
        key = torch.arange(n).unsqueeze(0)
        rel_pos_bias = self._pos_w[n - 1 + key - query].unsqueeze(0)  # [1, N, N]

        next_timestamps = torch.cat([all_timestamps[:, 1:], all_timestamps[:, n - 1:n]], dim=1)
        buckets = torch.clamp(
            self._bucketization_fn(next_timestamps.unsqueeze(2) - all_timestamps.unsqueeze(1)),
            min=0, max=self._num_buckets).detach()
        rel_ts_bias = torch.index_select(self._ts_w, dim=0, index=buckets.view(-1)).view(batch, n, n)
        return rel_pos_bias + rel_ts_bias


def hstu_attention(num_heads, attention_dim, linear_dim, q, k, v, x_offsets, all_timestamps,
                   invalid_attn_mask, rel_attn_bias):
    """_hstu_attention_maybe_from_cache without a cache: silu(q.k + bias) / N, causal, times v."""
    batch = x_offsets.size(0) - 1
    n = invalid_attn_mask.size(-1)
    padded_q = jagged_to_padded_dense(q, x_offsets, n)
    padded_k = jagged_to_padded_dense(k, x_offsets, n)
    qk_attn = torch.einsum("bnhd,bmhd->bhnm",
                           padded_q.view(batch, n, num_heads, attention_dim),
                           padded_k.view(batch, n, num_heads, attention_dim))
    if all_timestamps is not None:
        qk_attn = qk_attn + rel_attn_bias(all_timestamps).unsqueeze(1)
    qk_attn = F.silu(qk_attn) / n
    qk_attn = qk_attn * invalid_attn_mask.unsqueeze(0).unsqueeze(0)
    padded_v = jagged_to_padded_dense(v, x_offsets, n).reshape(batch, n, num_heads, linear_dim)
    attn_output = torch.einsum("bhnm,bmhd->bnhd", qk_attn, padded_v).reshape(batch, n, num_heads * linear_dim)
    return dense_to_jagged(attn_output, x_offsets), padded_q, padded_k


class SequentialTransductionUnitJagged(torch.nn.Module):
    def __init__(self, embedding_dim, linear_hidden_dim, attention_dim, dropout_ratio, attn_dropout_ratio,
                 num_heads, linear_activation, relative_attention_bias_module=None,
                 normalization="rel_bias", linear_config="uvqk", concat_ua=False, epsilon=LAYER_NORM_EPS):
        super().__init__()
        self._embedding_dim = embedding_dim
        self._linear_dim = linear_hidden_dim
        self._attention_dim = attention_dim
        self._dropout_ratio = dropout_ratio
        self._attn_dropout_ratio = attn_dropout_ratio
        self._num_heads = num_heads
        # Assigned before _uvqk as in the source; state_dict lists own parameters first anyway.
        self._rel_attn_bias = relative_attention_bias_module
        self._normalization = normalization
        self._linear_config = linear_config
        if linear_config != "uvqk":
            raise ValueError(f"Unknown linear_config {linear_config}")
        # One [D, 2*H*dv + 2*H*dqk] matrix used as x @ _uvqk (not a Linear: no transpose, no bias).
        self._uvqk = torch.nn.Parameter(torch.empty(
            (embedding_dim, linear_hidden_dim * 2 * num_heads + attention_dim * num_heads * 2)).normal_(mean=0, std=0.02))
        self._linear_activation = linear_activation
        self._concat_ua = concat_ua
        self._o = torch.nn.Linear(in_features=linear_hidden_dim * num_heads * (3 if concat_ua else 1),
                                  out_features=embedding_dim)
        torch.nn.init.xavier_uniform_(self._o.weight)
        self._eps = epsilon

    def _norm_input(self, x):
        return F.layer_norm(x, normalized_shape=[self._embedding_dim], eps=self._eps)

    def _norm_attn_output(self, x):
        return F.layer_norm(x, normalized_shape=[self._linear_dim * self._num_heads], eps=self._eps)

    def forward(self, x, x_offsets, all_timestamps, invalid_attn_mask):
        """x: jagged [sum_b n_b, D] -> the same shape."""
        normed_x = self._norm_input(x)
        batched_mm_output = torch.mm(normed_x, self._uvqk)
        if self._linear_activation == "silu":
            batched_mm_output = F.silu(batched_mm_output)
        elif self._linear_activation != "none":
            raise ValueError(f"Unknown linear_activation {self._linear_activation}")
        hv = self._linear_dim * self._num_heads
        hqk = self._attention_dim * self._num_heads
        u, v, q, k = torch.split(batched_mm_output, [hv, hv, hqk, hqk], dim=1)

        if self._normalization not in ("rel_bias", "hstu_rel_bias"):
            raise ValueError(f"normalization {self._normalization} is not reproduced")
        attn_output, _, _ = hstu_attention(self._num_heads, self._attention_dim, self._linear_dim, q, k, v,
                                           x_offsets, all_timestamps, invalid_attn_mask, self._rel_attn_bias)
        if self._concat_ua:
            a = self._norm_attn_output(attn_output)
            o_input = torch.cat([u, a, u * a], dim=-1)
        else:
            o_input = u * self._norm_attn_output(attn_output)
        return self._o(F.dropout(o_input, p=self._dropout_ratio, training=self.training)) + x


class HSTUJagged(torch.nn.Module):
    def __init__(self, modules, autocast_dtype=None):
        super().__init__()
        self._attention_layers = torch.nn.ModuleList(modules=modules)
        self._autocast_dtype = autocast_dtype

    def forward(self, x, x_offsets, all_timestamps, invalid_attn_mask):
        """x: dense [B, N, D] (or jagged) -> dense [B, N, D], zero past each user's length."""
        if x.dim() == 3:
            x = dense_to_jagged(x, x_offsets)
        for layer in self._attention_layers:
            x = layer(x, x_offsets, all_timestamps, invalid_attn_mask)
        return jagged_to_padded_dense(x, x_offsets, invalid_attn_mask.size(1))


class HSTU(torch.nn.Module):
    """max_sequence_len = train_fn.max_sequence_length (L); max_output_len = gr_output_length + 1.
    The padded length N = L + gr_output_length + 1 sizes the mask, the position table (built by
    the caller, see build_model) and every layer's relative bias."""

    def __init__(self, max_sequence_len, max_output_len, embedding_dim, num_blocks, num_heads, linear_dim,
                 attention_dim, normalization, linear_config, linear_activation, linear_dropout_rate,
                 attn_dropout_rate, embedding_module, similarity_module, input_features_preproc_module,
                 output_postproc_module, enable_relative_attention_bias=True, concat_ua=False):
        super().__init__()
        # SequentialEncoderWithLearnedSimilarityModule.__init__ registers this first.
        self._ndp_module = similarity_module
        self._embedding_dim = embedding_dim
        self._item_embedding_dim = embedding_module.item_embedding_dim
        self._max_sequence_length = max_sequence_len
        self._embedding_module = embedding_module
        self._input_features_preproc = input_features_preproc_module
        self._output_postproc = output_postproc_module
        self._num_blocks = num_blocks
        self._num_heads = num_heads
        self._dqk = attention_dim
        self._dv = linear_dim
        self._linear_activation = linear_activation
        self._linear_dropout_rate = linear_dropout_rate
        self._attn_dropout_rate = attn_dropout_rate
        self._enable_relative_attention_bias = enable_relative_attention_bias
        padded_length = max_sequence_len + max_output_len
        self._hstu = HSTUJagged(modules=[
            SequentialTransductionUnitJagged(
                embedding_dim=embedding_dim, linear_hidden_dim=linear_dim, attention_dim=attention_dim,
                normalization=normalization, linear_config=linear_config, linear_activation=linear_activation,
                num_heads=num_heads,
                relative_attention_bias_module=(
                    RelativeBucketedTimeAndPositionBasedBias(
                        max_seq_len=padded_length, num_buckets=NUM_BUCKETS, bucketization_fn=log_bucket)
                    if enable_relative_attention_bias else None),
                dropout_ratio=linear_dropout_rate, attn_dropout_ratio=attn_dropout_rate, concat_ua=concat_ua)
            for _ in range(num_blocks)])
        # A persistent bool buffer: it is in the state_dict ([N, N], True above the diagonal).
        self.register_buffer("_attn_mask", torch.triu(
            torch.ones((padded_length, padded_length), dtype=torch.bool), diagonal=1))
        # HSTU.reset_params: xavier_normal_ for every parameter outside _hstu and
        # _embedding_module, i.e. the position table.
        for name, param in self.named_parameters():
            if "_hstu" not in name and "_embedding_module" not in name:
                torch.nn.init.xavier_normal_(param.data)

    def get_item_embeddings(self, item_ids):
        return self._embedding_module.get_item_embeddings(item_ids)

    def debug_str(self):
        text = (f"HSTU-b{self._num_blocks}-h{self._num_heads}-dqk{self._dqk}-dv{self._dv}"
                f"-l{self._linear_activation}d{self._linear_dropout_rate}-ad{self._attn_dropout_rate}")
        return text if self._enable_relative_attention_bias else text + "-norab"

    def generate_user_embeddings(self, past_lengths, past_ids, past_embeddings, past_payloads):
        past_lengths, user_embeddings, _ = self._input_features_preproc(
            past_lengths=past_lengths, past_ids=past_ids, past_embeddings=past_embeddings,
            past_payloads=past_payloads)
        user_embeddings = self._hstu(
            x=user_embeddings, x_offsets=complete_cumsum(past_lengths),
            all_timestamps=past_payloads.get("timestamps"),
            invalid_attn_mask=1.0 - self._attn_mask.to(user_embeddings.dtype))
        return self._output_postproc(user_embeddings)

    def forward(self, past_lengths, past_ids, past_embeddings, past_payloads):
        """[B, N, D]: every slot's (L2-normalised) output, as in training."""
        return self.generate_user_embeddings(past_lengths, past_ids, past_embeddings, past_payloads)

    def encode(self, past_lengths, past_ids, past_embeddings, past_payloads):
        """[B, D]: the output at slot past_lengths - 1 (utils.get_current_embeddings)."""
        encoded = self.generate_user_embeddings(past_lengths, past_ids, past_embeddings, past_payloads)
        return encoded[torch.arange(encoded.size(0)), past_lengths - 1, :]


# ---- trainer/train.py: building, naming, saving -------------------------------------------

def build_model(max_item_id, item_embedding_dim=50, num_blocks=2, num_heads=1, dqk=64, dv=64,
                max_sequence_length=200, gr_output_length=DEFAULT_GR_OUTPUT_LENGTH, dropout_rate=0.2,
                linear_dropout_rate=0.0, attn_dropout_rate=0.0, linear_activation="silu", concat_ua=False):
    """train_fn with embedding_module_type "local", interaction_module_type "DotProduct",
    user_embedding_norm "l2_norm", main_module "HSTU" (defaults: gin's hstu_encoder and
    train_fn defaults; the ml-1m/ml-20m configs override some, see docs/sources/hstu.md).
    max_item_id: the largest item id (ml-1m: 3952), so the table has max_item_id + 1 rows."""
    embedding_module = LocalEmbeddingModule(num_items=max_item_id, item_embedding_dim=item_embedding_dim)
    output_postproc = L2NormEmbeddingPostprocessor(embedding_dim=item_embedding_dim, eps=1e-6)
    input_preproc = LearnablePositionalEmbeddingInputFeaturesPreprocessor(
        max_sequence_len=max_sequence_length + gr_output_length + 1, embedding_dim=item_embedding_dim,
        dropout_rate=dropout_rate)
    return HSTU(
        max_sequence_len=max_sequence_length, max_output_len=gr_output_length + 1,
        embedding_dim=item_embedding_dim, num_blocks=num_blocks, num_heads=num_heads, linear_dim=dv,
        attention_dim=dqk, normalization="rel_bias", linear_config="uvqk", linear_activation=linear_activation,
        linear_dropout_rate=linear_dropout_rate, attn_dropout_rate=attn_dropout_rate,
        embedding_module=embedding_module, similarity_module=DotProductSimilarity(),
        input_features_preproc_module=input_preproc, output_postproc_module=output_postproc,
        enable_relative_attention_bias=True, concat_ua=concat_ua)


def make_optimizer(model, learning_rate=1e-3, weight_decay=0.0):
    """train.py's AdamW (betas (0.9, 0.98)); weight_decay 0 in every HSTU config."""
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=weight_decay)


class DistributedDataParallelStandIn(torch.nn.Module):
    """What DistributedDataParallel contributes to a state_dict: the model as child `module`
    (keys "module.<key>", _metadata entries "module", "module.<child>", ...). train.py always
    wraps the model, even on one GPU, so every checkpoint of their trainer has the prefix."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def save_checkpoint(model, optimizer, epoch, path, ddp=False):
    """train.py's torch.save({"epoch", "model_state_dict", "optimizer_state_dict"}, path).
    ddp=True: keys "module.…", exactly as their trainer writes them; ddp=False: the same
    without the prefix (a model saved outside their trainer)."""
    holder = DistributedDataParallelStandIn(model) if ddp else model
    torch.save({"epoch": epoch, "model_state_dict": holder.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, path)


def trainer_checkpoint_name(model, dataset_name="ml-1m", max_sequence_length=200, epoch=100,
                            temperature=DEFAULT_TEMPERATURE, num_negatives=128, l2_norm_eps=1e-6,
                            batch_size=128, learning_rate=1e-3, weight_decay=0, date="2024-04-17"):
    """f"{dataset}-l{L}/{model_desc}_ep{epoch}" as train.py names it for the HSTU configs
    (DotProduct similarity, local sampling with item_l2_norm, sampled softmax, one GPU, tf32 on).
    The name carries b{blocks}-h{heads}-dqk{dqk}-dv{dv}; it has no file extension."""
    return (f"{dataset_name}-l{max_sequence_length}/{model.debug_str()}_DotProduct_local-l2-eps{l2_norm_eps}"
            f"_ssl-t{temperature}-n{num_negatives}-b{batch_size}-lr{learning_rate}-wu0-wd{weight_decay}"
            f"-{date}_ep{epoch}")


# ---- evaluation path: one user ------------------------------------------------------------

def eval_features(history, now, max_sequence_length, gr_output_length=DEFAULT_GR_OUTPUT_LENGTH):
    """DatasetV2 (chronological) + movielens_seq_features_from_row for one user.

    history: [(row, timestamp), ...] oldest first (ties in the given order); now: the next
    item's timestamp. Returns (past_lengths [1], past_ids [1, N], timestamps [1, N]) with
    N = L + gr_output_length + 1: the most recent L items in slots 0..n-1 (oldest first), zeros
    after, and `now` in slot n."""
    kept = list(history)[-max_sequence_length:]
    n = len(kept)
    if n == 0:
        raise ValueError("their eval needs at least one past item (past_lengths > 0)")
    slots = max_sequence_length + gr_output_length + 1
    past_ids = torch.zeros((1, slots), dtype=torch.int64)
    timestamps = torch.zeros((1, slots), dtype=torch.int64)
    past_ids[0, :n] = torch.tensor([int(row) for row, _ in kept], dtype=torch.int64)
    timestamps[0, :n] = torch.tensor([int(ts) for _, ts in kept], dtype=torch.int64)
    timestamps[0, n] = int(now)
    return torch.tensor([n], dtype=torch.int64), past_ids, timestamps


def normalized_item_embeddings(model, rows=None, eps=L2_NORM_EPS):
    """The eval candidates: item_emb(rows) / max(||.||, eps) (NegativesSampler with
    item_l2_norm=True). rows=None: every embedding row."""
    weight = model._embedding_module._item_emb.weight
    table = weight if rows is None else weight[torch.as_tensor(rows, dtype=torch.int64)]
    return table / torch.clamp(torch.linalg.norm(table, ord=2, dim=-1, keepdim=True), min=eps)


def scores_for_history(model, history, now, max_sequence_length, gr_output_length=DEFAULT_GR_OUTPUT_LENGTH,
                       score="raw", temperature=DEFAULT_TEMPERATURE, item_rows=None):
    """Every embedding row's score (numpy float64, index = row) for one user, as their eval
    computes it: the L2-normalised encode() output . the L2-normalised item embedding (a cosine).

    score="softmax": softmax(cosine / temperature) over `item_rows` (the rows that are items;
    default: every row but 0); rows that are not items get 0. This is seqrec's choice of a
    probability: their training loss is a sampled softmax at that temperature over items."""
    model.eval()
    with torch.no_grad():
        past_lengths, past_ids, timestamps = eval_features(history, now, max_sequence_length, gr_output_length)
        query = model.encode(past_lengths=past_lengths, past_ids=past_ids,
                             past_embeddings=model.get_item_embeddings(past_ids),
                             past_payloads={"timestamps": timestamps})
        cosine = torch.mm(query, normalized_item_embeddings(model).t())[0].double().numpy()
    if score == "raw":
        return cosine
    if score != "softmax":
        raise ValueError(f"score {score}")
    rows = np.arange(1, cosine.size) if item_rows is None else np.asarray(item_rows)
    out = np.zeros_like(cosine)
    out[rows] = torch.softmax(torch.from_numpy(cosine[rows] / temperature), dim=0).numpy()
    return out


# ---- the per-user algorithm of docs/sources/hstu.md, from the bare state_dict ----------------------

def spec_scores(state_dict, history, now, max_len, heads):
    """docs/sources/hstu.md's forward pass, one user, only the n real slots, from a model_state_dict
    (with or without "module."). Independent of the modules above; float32 like the C++."""
    sd = {(key[len("module."):] if key.startswith("module.") else key): value.detach().float()
          for key, value in state_dict.items()}
    item_emb = sd["_embedding_module._item_emb.weight"]
    pos_emb = sd["_input_features_preproc._pos_emb.weight"]
    d = item_emb.shape[1]
    padded = pos_emb.shape[0]                      # N = L + gr_output_length + 1
    blocks = 0
    while f"_hstu._attention_layers.{blocks}._uvqk" in sd:
        blocks += 1
    kept = list(history)[-max_len:]
    n = len(kept)
    rows = torch.tensor([r for r, _ in kept], dtype=torch.int64)
    ts = [int(t) for _, t in kept]
    query_ts = ts[1:] + [int(now)]                 # slot i is biased from the next slot's time
    gaps = torch.tensor([[query_ts[i] - ts[j] for j in range(n)] for i in range(n)], dtype=torch.int64)
    buckets = log_bucket(gaps).clamp(0, NUM_BUCKETS)
    causal = torch.tril(torch.ones(n, n))
    rel_pos = torch.arange(n).unsqueeze(0) - torch.arange(n).unsqueeze(1)   # j - i

    x = item_emb[rows] * (d ** 0.5) + pos_emb[:n]
    for b in range(blocks):
        p = f"_hstu._attention_layers.{b}."
        uvqk, o_w, o_b = sd[p + "_uvqk"], sd[p + "_o.weight"], sd[p + "_o.bias"]
        ts_w, pos_w = sd[p + "_rel_attn_bias._ts_w"], sd[p + "_rel_attn_bias._pos_w"]
        hv = o_w.shape[1]
        hqk = (uvqk.shape[1] - 2 * hv) // 2
        dv, dqk = hv // heads, hqk // heads
        h = F.layer_norm(x, [d], eps=LAYER_NORM_EPS)
        m = F.silu(h @ uvqk)
        u, v, q, k = m[:, :hv], m[:, hv:2 * hv], m[:, 2 * hv:2 * hv + hqk], m[:, 2 * hv + hqk:]
        bias = pos_w[padded - 1 + rel_pos] + ts_w[buckets]
        out = torch.empty(n, hv)
        for head in range(heads):
            qh, kh = q[:, head * dqk:(head + 1) * dqk], k[:, head * dqk:(head + 1) * dqk]
            a = F.silu(qh @ kh.t() + bias) / padded * causal
            out[:, head * dv:(head + 1) * dv] = a @ v[:, head * dv:(head + 1) * dv]
        y = u * F.layer_norm(out, [hv], eps=LAYER_NORM_EPS)
        x = y @ o_w.t() + o_b + x
    z = x[n - 1]
    z = z / torch.clamp(torch.linalg.norm(z), min=L2_NORM_EPS)
    items = item_emb / torch.clamp(torch.linalg.norm(item_emb, dim=-1, keepdim=True), min=L2_NORM_EPS)
    return (items @ z).double().numpy()


# ---- self-check ---------------------------------------------------------------------------

def _check_position_bias_construction(n, pos_w):
    """Their construction, rebuilt from its description (pad by N zeros, repeat N times, drop
    the last N, view [N, 3N-2], keep the middle N columns), against pos_w[N-1+j-i]."""
    t = F.pad(pos_w[: 2 * n - 1], [0, n]).repeat(n)
    t = t[:-n].reshape(1, n, 3 * n - 2)
    r = (2 * n - 1) // 2
    theirs = t[:, :, r:-r]
    mine = pos_w[n - 1 + torch.arange(n).unsqueeze(0) - torch.arange(n).unsqueeze(1)].unsqueeze(0)
    return torch.equal(theirs, mine)


def _self_check():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for n in (2, 5, 21, 211):  # N = 1 cannot occur (N >= gr_output_length + 2)
        assert _check_position_bias_construction(n, torch.randn(2 * n - 1)), n
    model = build_model(max_item_id=40, item_embedding_dim=16, num_blocks=3, num_heads=2, dqk=5, dv=7,
                        max_sequence_length=9, gr_output_length=3)
    with torch.no_grad():
        for layer in model._hstu._attention_layers:
            layer._rel_attn_bias._ts_w.normal_(0, 1.0)
            layer._rel_attn_bias._pos_w.normal_(0, 1.0)
            layer._uvqk.normal_(0, 0.4)
    model.eval()
    rng = np.random.default_rng(0)
    worst = 0.0
    for length in (1, 2, 8, 9, 10, 25):
        rows = rng.integers(1, 41, size=length)
        times = np.cumsum(rng.integers(0, 10 ** rng.integers(0, 8, size=length) + 1))
        history = list(zip(rows.tolist(), times.tolist()))
        now = int(times[-1]) + int(rng.integers(0, 10 ** 6))
        a = scores_for_history(model, history, now, 9, 3)
        for ddp in (False, True):
            holder = DistributedDataParallelStandIn(model) if ddp else model
            b = spec_scores(holder.state_dict(), history, now, 9, 2)
            worst = max(worst, float(np.max(np.abs(a - b))))
    print(f"module path vs per-user spec: max |delta| = {worst:.2e}")
    assert worst < 1e-5
    # A batch of users through their batched path equals one user at a time.
    histories = [[(3, 10), (4, 20)], [(5, 1), (6, 2), (7, 3), (8, 1000)], [(9, 5)]]
    nows = [25, 5000, 5]
    feats = [eval_features(h, t, 9, 3) for h, t in zip(histories, nows)]
    lengths = torch.cat([f[0] for f in feats])
    ids = torch.cat([f[1] for f in feats])
    stamps = torch.cat([f[2] for f in feats])
    with torch.no_grad():
        batched = model.encode(lengths, ids, model.get_item_embeddings(ids), {"timestamps": stamps})
        for b, (h, t) in enumerate(zip(histories, nows)):
            single = model.encode(*feats[b][:2], model.get_item_embeddings(feats[b][1]), {"timestamps": feats[b][2]})
            assert torch.allclose(batched[b], single[0], atol=1e-6)
    print("batched encode == per-user encode; position-bias construction ok")
    print("state_dict keys:", list(model.state_dict())[:8], "...")


if __name__ == "__main__":
    _self_check()
    sys.exit(0)
