"""Reference gSASRec modules that mirror gSASRec-pytorch (github: asash/gSASRec-pytorch).

A test reference written for seqrec. It reproduces, operation by operation, the model in
gSASRec-pytorch's gsasrec.py and transformer_decoder.py with the real torch.nn layers and the
same class and attribute names (GSASRec, TransformerBlock, MultiHeadAttention), so
`state_dict()` has exactly gSASRec-pytorch's keys, and `save_checkpoint` writes the file its
train_gsasrec.py writes (`torch.save(model.state_dict(), "models/gsasrec-...pt")`).

The code generations that change what a saved checkpoint computes (commits of
asash/gSASRec-pytorch; the specification with line references is docs/sources/gsasrec.md):

  027f3f1  2023-09-05 18:34  first version: FFN dense2(dense1(x)) with no activation; scores
                             from item_embedding (tied); no output_embedding in the state_dict
  0a26f3d  2023-09-06 13:21  separate output_embedding [num_items+2, d], used for training
                             logits and for scoring, unless GSASRec(reuse_item_embeddings=True)
                             (train_gsasrec.py's build_model never passes the config's flag, so
                             the trainer always makes the separate table)
  ea49313  2023-09-15 10:11  ReLU between dense1 and dense2 (HEAD since)

Nothing else that reaches a saved checkpoint or the evaluation scores has changed; the
weights cannot tell the ReLU generations apart (seqrec: `--variant no_ffn_relu`), the
output table's presence tells tied from separate.

The model, as gSASRec-pytorch computes it in eval mode (dropout is the identity):
  input       [B, L] item rows: 1..num_items are items, num_items+1 is padding (left
              padded); 0 is never an input (items are numbered from 1)
  embedding   item_embedding(input) + position_embedding(arange(L)) (0-based slot index for
              every slot, padded or not); no sqrt(d) scaling; then multiplied by the
              non-padding mask (padded rows become exact zeros)
  block       q = first_norm(x); a = Attn(queries=q, keys=x) (K and V from the un-normalised x);
              h = second_norm(a + q); x = (h + dense2(act(dense1(h)))) * mask
              with act = ReLU (>= ea49313) or the identity (before)
  attention   Q, K, V = query_proj(q), key_proj(x), val_proj(x), each a full [d, d] Linear;
              head i takes features [i*d/h, (i+1)*d/h); scores / sqrt(d/h); keys whose block
              input row is all zeros (the padded ones) and keys after the query set to -inf;
              softmax; NaN (rows with no allowed key) -> 0; rows whose normalised query is all
              zeros -> 0; no output projection: the heads' outputs are concatenated
  final       seq_norm(x); LayerNorm eps is torch's default 1e-5 everywhere
  scoring     the last slot's vector . get_output_embeddings().weight (all num_items+2 rows);
              columns 0 and num_items+1.. set to -inf (and, with filter_rated, the history)
"""

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as fn

# torch.nn.LayerNorm's default; gSASRec-pytorch never passes eps.
LAYER_NORM_EPS = 1e-5

# variant name -> (ReLU in the FFN, reuse_item_embeddings)
#   relu              HEAD (ea49313 on), the trainer's model: separate output table
#   no_ffn_relu       0a26f3d .. d481f53 (2023-09-06 13:21 .. 2023-09-15 10:11)
#   tied              HEAD code with GSASRec(..., reuse_item_embeddings=True) built by hand
#   tied_no_ffn_relu  027f3f1 .. 1a0ba5e (2023-09-05 18:34 .. 2023-09-06 13:21)
VARIANTS = {
    "relu": (True, False),
    "no_ffn_relu": (False, False),
    "tied": (True, True),
    "tied_no_ffn_relu": (False, True),
}


# ---- transformer_decoder.py ----------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """SASRec's attention: one [d, d] Linear each for Q, K and V (the heads are contiguous
    feature slices of it), no output projection, key and query masks derived from the data."""

    def __init__(self, dim, num_heads, dropout_rate=0.5):
        super(MultiHeadAttention, self).__init__()
        self.num_heads = num_heads
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.val_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout_rate)

    def _heads_into_batch(self, x):
        # [B, S, d] -> [h*B, S, d/h]: head i's slice of every sequence at batch index i*B + b.
        return torch.cat(x.chunk(self.num_heads, dim=2), dim=0)

    def _heads_into_features(self, x):
        # [h*B, S, d/h] -> [B, S, d]: the inverse, heads side by side in feature order.
        return torch.cat(x.chunk(self.num_heads, dim=0), dim=2)

    @staticmethod
    def _nonzero_rows(x):
        # 1.0 where a row has any non-zero entry, 0.0 where it is all zeros: [B, S].
        return torch.sign(torch.sum(torch.abs(x), dim=-1))

    def forward(self, queries, keys, causality=False):
        q_heads = self._heads_into_batch(self.query_proj(queries))
        k_heads = self._heads_into_batch(self.key_proj(keys))
        v_heads = self._heads_into_batch(self.val_proj(keys))

        weights = torch.matmul(q_heads, k_heads.transpose(1, 2))
        weights = weights / (k_heads.size(-1) ** 0.5)

        # Keys: a padded row of the block input is exactly zero.
        key_masks = self._nonzero_rows(keys).repeat(self.num_heads, 1)
        key_masks = key_masks.unsqueeze(1).repeat(1, queries.size(1), 1)
        weights = weights.masked_fill(key_masks == 0, float("-inf"))

        if causality:
            lower = torch.tril(torch.ones_like(weights[0]))
            lower = lower[None, :, :].repeat(weights.size(0), 1, 1)
            weights = weights.masked_fill(lower == 0, float("-inf"))

        weights = fn.softmax(weights, dim=-1)
        # A row with every key masked is all NaN after softmax: it becomes all zeros.
        weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)

        # Queries: tested on the *normalised* query (a padded row is first_norm's bias there).
        query_masks = self._nonzero_rows(queries).repeat(self.num_heads, 1)
        query_masks = query_masks.unsqueeze(-1).repeat(1, 1, keys.size(1))
        weights *= query_masks

        attention_weights = torch.stack(weights.chunk(self.num_heads, dim=0), dim=1)

        weights = self.dropout(weights)
        outputs = torch.matmul(weights, v_heads)
        return self._heads_into_features(outputs), attention_weights


class TransformerBlock(nn.Module):
    """q = first_norm(x); h = second_norm(q + Attn(q, x)); x = (h + FFN(h)) * mask.
    `ffn_relu` is not a gSASRec-pytorch argument: False reproduces the code before ea49313."""

    def __init__(self, dim, num_heads, hidden_dim, dropout_rate=0.5, causality=True, ffn_relu=True):
        super(TransformerBlock, self).__init__()
        self.first_norm = nn.LayerNorm(dim)
        self.second_norm = nn.LayerNorm(dim)
        self.multihead_attention = MultiHeadAttention(dim, num_heads, dropout_rate)
        self.dense1 = nn.Linear(dim, hidden_dim)
        self.dense2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout_rate)
        self.causality = causality
        self.ffn_relu = ffn_relu

    def forward(self, seq, mask=None):
        normalised = self.first_norm(seq)
        attended, attentions = self.multihead_attention(normalised, seq, self.causality)

        # The normalised query, not the block input, is the attention's residual.
        x = self.second_norm(attended + normalised)

        inner = self.dense1(x)
        if self.ffn_relu:
            inner = fn.relu(inner)
        inner = self.dropout(inner)
        x = self.dropout(self.dense2(inner)) + x

        if mask is not None:
            x *= mask
        return x, attentions


# ---- gsasrec.py ----------------------------------------------------------------------------

class GSASRec(nn.Module):
    """gSASRec-pytorch's model. `ffn_relu` is this reference's switch for the generation
    before ea49313; every other argument is theirs, with their defaults."""

    def __init__(self, num_items, sequence_length=200, embedding_dim=256, num_heads=4, num_blocks=3,
                 dropout_rate=0.5, reuse_item_embeddings=False, ffn_relu=True):
        super(GSASRec, self).__init__()
        self.num_items = num_items
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.embeddings_dropout = nn.Dropout(dropout_rate)
        self.num_heads = num_heads

        # Module creation order is the source's, so the state_dict's key order is too.
        # Rows: 0 unused (items are numbered from 1), 1..num_items items, num_items+1 padding.
        self.item_embedding = nn.Embedding(self.num_items + 2, self.embedding_dim)
        self.position_embedding = nn.Embedding(self.sequence_length, self.embedding_dim)
        # The FFN's inner size is embedding_dim (hidden_dim = embedding_dim in the source).
        self.transformer_blocks = nn.ModuleList([
            TransformerBlock(self.embedding_dim, self.num_heads, self.embedding_dim, dropout_rate,
                             ffn_relu=ffn_relu)
            for _ in range(num_blocks)
        ])
        self.seq_norm = nn.LayerNorm(self.embedding_dim)
        self.reuse_item_embeddings = reuse_item_embeddings
        if not self.reuse_item_embeddings:
            self.output_embedding = nn.Embedding(self.num_items + 2, self.embedding_dim)

    def get_output_embeddings(self):
        return self.item_embedding if self.reuse_item_embeddings else self.output_embedding

    def padding_mask(self, input):
        """[B, S, 1]: 1.0 for item slots, 0.0 for padding slots (input == num_items + 1)."""
        return (input != self.num_items + 1).float().unsqueeze(-1)

    def forward(self, input):
        """(seq_norm output [B, S, d], per-block attention weights)."""
        mask = self.padding_mask(input)
        seq = self.item_embedding(input.long())
        batch = seq.size(0)
        positions = torch.arange(seq.shape[1]).unsqueeze(0).repeat(batch, 1).to(input.device)
        seq = seq + self.position_embedding(positions)
        seq = self.embeddings_dropout(seq)
        seq *= mask

        attentions = []
        for block in self.transformer_blocks:
            seq, attention = block(seq, mask)
            attentions.append(attention)
        return self.seq_norm(seq), attentions

    def all_scores(self, input):
        """Not a gSASRec-pytorch method: the [B, num_items+2] score matrix get_predictions ranks
        (before `rated` filtering), the last slot's vector against every output row, with the
        never-recommended columns 0 and num_items+1 at -inf."""
        with torch.no_grad():
            hidden, _ = self.forward(input)
            last = hidden[:, -1, :]
            scores = torch.einsum("bd,nd->bn", last, self.get_output_embeddings().weight)
            scores[:, 0] = float("-inf")
            scores[:, self.num_items + 1:] = float("-inf")
            return scores

    def get_predictions(self, input, limit, rated=None):
        """(top item rows, their scores); `rated[i]` = rows excluded for input row i."""
        with torch.no_grad():
            scores = self.all_scores(input)
            if rated is not None:
                for i in range(len(input)):
                    for row in rated[i]:
                        scores[i, row] = float("-inf")
            top = torch.topk(scores, limit, dim=1)
            return top.indices, top.values


# ---- building, input, scores, checkpoints --------------------------------------------------

def build_model(variant, num_items, embedding_dim, num_heads, num_blocks, sequence_length, dropout_rate=0.5):
    ffn_relu, reuse = VARIANTS[variant]
    return GSASRec(num_items, sequence_length=sequence_length, embedding_dim=embedding_dim, num_heads=num_heads,
                   num_blocks=num_blocks, dropout_rate=dropout_rate, reuse_item_embeddings=reuse, ffn_relu=ffn_relu)


def model_input(history, sequence_length, num_items):
    """dataset_utils.SequenceDataset.__getitem__: the last `sequence_length` rows, left padded
    with num_items + 1 to exactly `sequence_length` slots."""
    recent = list(history)[-sequence_length:]
    return [num_items + 1] * (sequence_length - len(recent)) + [int(row) for row in recent]


def score_history(model, history):
    """Every row's raw logit for one history (row r at index r, rows 0..num_items; row 0 is
    -inf, never ranked). float32 as the model computes it, returned as float64."""
    model.eval()
    input = torch.tensor([model_input(history, model.sequence_length, model.num_items)], dtype=torch.long)
    scores = model.all_scores(input)[0, :model.num_items + 1]
    return scores.double().numpy()


def checkpoint_name(dataset_name="ml1m", step=4200, gbce_t=0.75, negs_per_pos=256, embedding_dim=128,
                    dropout_rate=0.5, metric=0.1742367219463923):
    """train_gsasrec.py's file name (since 1a0ba5e, 2023-09-06; written under models/). Before
    1a0ba5e it lacked the emb: and dropout: parts. Colons and several dots are part of it."""
    return (f"gsasrec-{dataset_name}-step:{step}-t:{gbce_t}-negs:{negs_per_pos}-emb:{embedding_dim}"
            f"-dropout:{dropout_rate}-metric:{metric}.pt")


def save_checkpoint(model, path, storage_location=None):
    """train_gsasrec.py: torch.save(model.state_dict(), model_name) (zip format, pickle
    protocol 2). `storage_location="cuda:0"` writes the location a GPU-trained model's tensors
    carry (the trainer uses cuda:0 when it can) without needing a GPU."""
    if storage_location is None:
        torch.save(model.state_dict(), path)
        return
    import torch.serialization as serialization
    original = serialization.location_tag
    serialization.location_tag = lambda storage: storage_location
    try:
        torch.save(model.state_dict(), path)
    finally:
        serialization.location_tag = original


def training_batch(histories, sequence_length, num_items, negs_per_pos, generator=None):
    """dataset_utils' training input: each history's last L+1 rows left padded with
    num_items+1 ("+1 for sequence shifting"), and torch.randint(1, num_items+1) negatives
    [B, L+1, negs] (they may hit the positive; padding is never sampled)."""
    padded = [model_input(history, sequence_length + 1, num_items) for history in histories]
    positives = torch.tensor(padded, dtype=torch.long)
    negatives = torch.randint(low=1, high=num_items + 1, size=(positives.size(0), positives.size(1), negs_per_pos),
                              generator=generator)
    return positives, negatives


def gbce_loss(model, positives, negatives, negs_per_pos, gbce_t):
    """train_gsasrec.py's loss (since 7b5d940): BCE on [gamma(s+), s-] in float64, with
    gamma(s) = log(1 / (sigmoid(s)^-beta - 1)), averaged over the non-padded input slots."""
    num_items = model.num_items
    model_input_rows = positives[:, :-1]
    hidden, _ = model(model_input_rows)
    labels = positives[:, 1:]
    negatives = negatives[:, 1:, :]
    candidates = torch.cat([labels.unsqueeze(-1), negatives], dim=-1)
    candidate_embeddings = model.get_output_embeddings()(candidates)
    mask = (model_input_rows != num_items + 1).float()
    logits = torch.einsum("bse, bsne -> bsn", hidden, candidate_embeddings)
    gt = torch.zeros_like(logits)
    gt[:, :, 0] = 1

    alpha = negs_per_pos / (num_items - 1)
    beta = alpha * ((1 - 1 / alpha) * gbce_t + 1 / alpha)
    positive_logits = logits[:, :, 0:1].to(torch.float64)
    negative_logits = logits[:, :, 1:].to(torch.float64)
    eps = 1e-10
    positive_probs = torch.clamp(torch.sigmoid(positive_logits), eps, 1 - eps)
    adjusted = torch.clamp(positive_probs.pow(-beta), 1 + eps, torch.finfo(torch.float64).max)
    to_log = torch.clamp(torch.div(1.0, adjusted - 1), eps, torch.finfo(torch.float64).max)
    logits = torch.cat([to_log.log(), negative_logits], -1)
    per_slot = fn.binary_cross_entropy_with_logits(logits, gt, reduction="none").mean(-1) * mask
    return per_slot.sum() / mask.sum()


# ---- the algorithm seqrec runs, written out (a cross-check of docs/sources/gsasrec.md) -------------

def engine_style_scores(model, history):
    """docs/sources/gsasrec.md's serving algorithm in float64 numpy, from the state_dict alone:
    only the n = min(len, L) real slots, with positions L-n .. L-1, no padded rows at all.
    Returns rows 0..num_items (row 0 = -inf), like score_history."""
    state = {key: value.detach().double().numpy() for key, value in model.state_dict().items()}
    num_items = state["item_embedding.weight"].shape[0] - 2
    L, d = state["position_embedding.weight"].shape
    heads = model.num_heads
    dh = d // heads
    n_blocks = len({key.split(".")[1] for key in state if key.startswith("transformer_blocks.")})
    ffn_relu = model.transformer_blocks[0].ffn_relu if n_blocks else True

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * state[prefix + ".weight"] + state[prefix + ".bias"]

    def linear(x, prefix):
        return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]

    rows = [int(row) for row in list(history)[-L:]]
    n = len(rows)
    x = state["item_embedding.weight"][rows] + state["position_embedding.weight"][L - n:]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(n_blocks):
        p = f"transformer_blocks.{i}."
        q = layer_norm(x, p + "first_norm")
        Q = linear(q, p + "multihead_attention.query_proj")
        K = linear(x, p + "multihead_attention.key_proj")
        V = linear(x, p + "multihead_attention.val_proj")
        attended = np.empty_like(x)
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            logits = Q[:, cols] @ K[:, cols].T / np.sqrt(dh)
            logits = np.where(causal, logits, -np.inf)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            attended[:, cols] = (weights / weights.sum(-1, keepdims=True)) @ V[:, cols]
        h_ = layer_norm(attended + q, p + "second_norm")
        inner = linear(h_, p + "dense1")
        if ffn_relu:
            inner = np.maximum(inner, 0.0)
        x = h_ + linear(inner, p + "dense2")
    final = layer_norm(x, "seq_norm")[-1] if n else state["seq_norm.bias"]
    table = state["output_embedding.weight"] if "output_embedding.weight" in state else state["item_embedding.weight"]
    scores = table[:num_items + 1] @ final
    scores[0] = -np.inf
    return scores


# ---- self-check: python3 tests/parity/gsasrec_reference.py ---------------------------------

def _expected_keys(num_blocks, tied):
    keys = ["item_embedding.weight", "position_embedding.weight"]
    for i in range(num_blocks):
        p = f"transformer_blocks.{i}."
        keys += [p + "first_norm.weight", p + "first_norm.bias", p + "second_norm.weight", p + "second_norm.bias"]
        for proj in ("query_proj", "key_proj", "val_proj"):
            keys += [p + f"multihead_attention.{proj}.weight", p + f"multihead_attention.{proj}.bias"]
        keys += [p + "dense1.weight", p + "dense1.bias", p + "dense2.weight", p + "dense2.bias"]
    keys += ["seq_norm.weight", "seq_norm.bias"]
    if not tied:
        keys.append("output_embedding.weight")
    return keys


def _self_check():
    import tempfile
    torch.set_num_threads(1)
    torch.manual_seed(0)
    N, L, d, blocks = 40, 12, 24, 2
    for variant, (ffn_relu, tied) in VARIANTS.items():
        for heads in (1, 3):
            model = build_model(variant, N, d, heads, blocks, L)
            keys = list(model.state_dict())
            assert keys == _expected_keys(blocks, tied), (variant, keys)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name.endswith("norm.weight"):
                        param.copy_(1.0 + 0.3 * torch.randn_like(param))
                    elif name.endswith("bias"):
                        param.copy_(0.2 * torch.randn_like(param))
            optimizer = torch.optim.Adam(model.parameters())
            model.train()
            for _ in range(2):
                histories = [list(np.random.default_rng(s).integers(1, N + 1, size=s % 25 + 2)) for s in range(6)]
                loss = gbce_loss(model, *training_batch(histories, L, N, 8), negs_per_pos=8, gbce_t=0.75)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with tempfile.TemporaryDirectory() as folder:
                for location in (None, "cuda:0"):
                    path = os.path.join(folder, checkpoint_name(embedding_dim=d))
                    save_checkpoint(model, path, storage_location=location)
                    loaded = build_model(variant, N, d, heads, blocks, L)
                    loaded.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
                    loaded.eval()
                    for length in (1, 5, L, 3 * L):
                        history = list(np.random.default_rng(length).integers(1, N + 1, size=length))
                        a, b = score_history(model, history), score_history(loaded, history)
                        assert np.array_equal(a, b), variant
                        c = engine_style_scores(loaded, history)
                        assert np.max(np.abs(a[1:] - c[1:])) < 1e-4, (variant, heads, length)
                        top, _ = loaded.get_predictions(
                            torch.tensor([model_input(history, L, N)]), 5)
                        assert list(top[0].numpy()) == list(np.argsort(-a, kind="stable")[:5]), variant
            # A head count that does not divide d fails in their code too (uneven chunks).
            if heads == 1:
                bad = build_model(variant, N, d, 5, blocks, L)
                try:
                    bad(torch.tensor([model_input([1, 2], L, N)]))
                    raise AssertionError("heads=5 with d=24 ran")
                except RuntimeError:
                    pass
            print(f"ok {variant:17s} heads={heads} keys={len(keys)}")


if __name__ == "__main__":
    _self_check()
