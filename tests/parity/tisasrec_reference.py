"""Reference TiSASRec modules that mirror TiSASRec.pytorch's model.py (github: pmixer/TiSASRec.pytorch),
and the data pipeline of its utils.py that turns a user's (item, timestamp) history into the
model's two inputs.

This is a test reference, written for seqrec: it reproduces the eval-mode forward pass of each
model.py generation with the real torch.nn layers (Embedding, Linear, LayerNorm, Conv1d, Softmax)
under the same class and attribute names, so `state_dict()` has exactly TiSASRec.pytorch's keys,
in its order, and a checkpoint saved from here is indistinguishable from one its main.py saves.

Generations (model.py; the weights alone cannot tell the first two apart):
  "2020-09"  commits 54aa68f .. 9ddc21e (the published ml-1m checkpoint, 9ddc21e): the FFN has no
             activation (conv2(conv1(x))), time_matrix_K_emb has item_num+1 rows (a typo: only
             rows 0..time_span are ever looked up), the query mask is built with expand() (works
             for a batch of one user, or for one head).
  "2020-10"  c4e6230 (2020-10-10) .. 6561520^: the same with a ReLU between the convolutions.
  "current"  6561520 (2020-11-05) on: time_matrix_K_emb has time_span+1 rows; 5ab2397
             (2020-11-21) builds the query mask with repeat() (same values for one user).
             main.py since 34a04b4 (2020-11-13) initialises every matrix with xavier_uniform_,
             padding row 0 of item_emb included, so item_emb row 0 is not zero in its checkpoints.

Every generation, per block i (no positional term is added to the input; positions and time
intervals enter the attention only):
  x0 = item_emb[seq] * sqrt(d), zeroed at padded slots
  Q = attention_layernorms[i](x)                      (keys and values use x itself)
  score[i,j] = Q_i.(K_j + absK_j + timeK[r_ij]) / sqrt(d/h), -2**32+1 where j > i, and a whole row
               where slot i is padding (padded KEYS are not masked)
  out_i = sum_j softmax(score)[i,j] (V_j + absV_j + timeV[r_ij])   (no output projection)
  x = Q + out;  x = forward_layernorms[i](x);  x = x + conv2(act(conv1(x)));  x *= not-padding
then last_layernorm, read-out at the last slot, logit = item_emb[item] . h. LayerNorm eps 1e-8.

The pipeline (utils.py cleanAndsort + evaluate + computeRePos), for one user's history:
stable sort by timestamp; scale = the smallest non-zero gap between consecutive timestamps of
the whole history (1 if none); t' = int(round((t - t_min) / scale) + 1) with Python's round
(half to even); the most recent maxlen items, oldest first, left-padded with item 0 / time 0;
r_ij = min(|t'_i - t'_j|, time_span) for every pair of slots, padding included.

`args` is any object with the attributes TiSASRec.pytorch's argparse namespace has:
hidden_units, num_heads, num_blocks, maxlen, time_span, dropout_rate, device (see `model_args`).
"""

import os
import types

import numpy as np
import torch

LAYER_NORM_EPS = 1e-8
# The value model.py puts at masked scores: a Python int, -4294967295, which becomes the float32
# -4294967296.0 once multiplied into torch.ones (float32). exp() of it underflows to exactly 0.
MASK_VALUE = -2**32 + 1

GENERATIONS = ("2020-09", "2020-10", "current")


def model_args(hidden_units=50, num_heads=1, num_blocks=2, maxlen=50, time_span=256,
               dropout_rate=0.2, device="cpu"):
    """The subset of TiSASRec.pytorch's command-line arguments that shapes the model
    (main.py's defaults, except maxlen which its README sets to 200 for ml-1m)."""
    return types.SimpleNamespace(hidden_units=hidden_units, num_heads=num_heads,
                                 num_blocks=num_blocks, maxlen=maxlen, time_span=time_span,
                                 dropout_rate=dropout_rate, device=device)


class PointWiseFeedForward(torch.nn.Module):
    """Per-position FFN as two d -> d Conv1d(kernel_size=1) layers that adds its own residual.
    `activation` False is the 2020-09 module (no activation at all); True adds the ReLU of
    c4e6230. ReLU has no parameters, so the keys are conv1.* and conv2.* either way."""

    def __init__(self, hidden_units, dropout_rate, activation=True):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout1 = torch.nn.Dropout(p=dropout_rate)
        if activation:
            self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout2 = torch.nn.Dropout(p=dropout_rate)
        self.activation = activation

    def forward(self, inputs):
        # Conv1d wants (N, C, Length); the model keeps (N, Length, C).
        hidden = self.dropout1(self.conv1(inputs.transpose(-1, -2)))
        if self.activation:
            hidden = self.relu(hidden)
        outputs = self.dropout2(self.conv2(hidden))
        outputs = outputs.transpose(-1, -2)
        outputs += inputs  # the residual is the FFN's input, i.e. the forward LayerNorm's output
        return outputs


class TimeAwareMultiHeadAttention(torch.nn.Module):
    """model.py's hand-written attention: Q_w/K_w/V_w (d x d, with bias), no output projection.
    Heads are cut out of the feature axis (head k owns features [k*d/h, (k+1)*d/h)) and stacked
    head-major on the batch axis, as torch.cat(torch.split(x, d/h, dim=-1), dim=0) does."""

    def __init__(self, hidden_size, head_num, dropout_rate, dev, query_mask_by_repeat=True):
        super().__init__()
        self.Q_w = torch.nn.Linear(hidden_size, hidden_size)
        self.K_w = torch.nn.Linear(hidden_size, hidden_size)
        self.V_w = torch.nn.Linear(hidden_size, hidden_size)

        self.dropout = torch.nn.Dropout(p=dropout_rate)
        self.softmax = torch.nn.Softmax(dim=-1)

        self.hidden_size = hidden_size
        self.head_num = head_num
        self.head_size = hidden_size // head_num
        self.dropout_rate = dropout_rate
        self.dev = dev
        # False: the expand() of 2020-09/2020-10, which only works for one user or one head.
        self.query_mask_by_repeat = query_mask_by_repeat

    def _heads(self, tensor, dim):
        return torch.cat(torch.split(tensor, self.head_size, dim=dim), dim=0)

    def forward(self, queries, keys, time_mask, attn_mask, time_matrix_K, time_matrix_V, abs_pos_K, abs_pos_V):
        Q, K, V = self.Q_w(queries), self.K_w(keys), self.V_w(keys)

        Q_, K_, V_ = self._heads(Q, 2), self._heads(K, 2), self._heads(V, 2)      # (h*N, T, d/h)
        time_matrix_K_ = self._heads(time_matrix_K, 3)                           # (h*N, T, T, d/h)
        time_matrix_V_ = self._heads(time_matrix_V, 3)
        abs_pos_K_ = self._heads(abs_pos_K, 2)                                   # (h*N, T, d/h)
        abs_pos_V_ = self._heads(abs_pos_V, 2)

        # score[b, i, j] = Q_i.K_j + Q_i.absK_j + timeK[r_ij].Q_i, summed in this order.
        attn_weights = Q_.matmul(torch.transpose(K_, 1, 2))
        attn_weights += Q_.matmul(torch.transpose(abs_pos_K_, 1, 2))
        attn_weights += time_matrix_K_.matmul(Q_.unsqueeze(-1)).squeeze(-1)
        attn_weights = attn_weights / (K_.shape[-1] ** 0.5)

        # time_mask is the padding mask of the QUERY slots (N, T): a padded query's whole row is
        # masked (its softmax becomes uniform over all T keys; the row is zeroed after the block
        # anyway). Padded keys are not masked. attn_mask is the causal mask (True above the diagonal).
        if self.query_mask_by_repeat:
            time_mask = time_mask.unsqueeze(-1).repeat(self.head_num, 1, 1)
            time_mask = time_mask.expand(-1, -1, attn_weights.shape[-1])
        else:
            time_mask = time_mask.unsqueeze(-1).expand(attn_weights.shape[0], -1, attn_weights.shape[-1])
        attn_mask = attn_mask.unsqueeze(0).expand(attn_weights.shape[0], -1, -1)
        paddings = (torch.ones(attn_weights.shape) * MASK_VALUE).to(self.dev)
        attn_weights = torch.where(time_mask, paddings, attn_weights)
        attn_weights = torch.where(attn_mask, paddings, attn_weights)

        attn_weights = self.softmax(attn_weights)
        attn_weights = self.dropout(attn_weights)

        outputs = attn_weights.matmul(V_)
        outputs += attn_weights.matmul(abs_pos_V_)
        # sum_j a[b, i, j] * timeV[r_ij]: (h*N, T, 1, T) @ (h*N, T, T, d/h) -> (h*N, T, 1, d/h)
        outputs += attn_weights.unsqueeze(2).matmul(time_matrix_V_).reshape(outputs.shape)

        # (h*N, T, d/h) -> (N, T, d): heads back side by side on the feature axis.
        return torch.cat(torch.split(outputs, Q.shape[0], dim=0), dim=2)


class TiSASRec(torch.nn.Module):
    """Current generation (6561520 on): ReLU FFN, time_matrix_K_emb [time_span+1, d]."""

    ffn_activation = True
    query_mask_by_repeat = True

    def __init__(self, user_num, item_num, time_num, args):
        super().__init__()
        self.user_num = user_num
        self.item_num = item_num
        self.dev = args.device
        self.args = args  # not a module or tensor: no state_dict entry

        # Module creation order matches the source, so state_dict key order does too (the
        # ModuleLists are registered before last_layernorm although filled after it).
        self.item_emb = torch.nn.Embedding(item_num + 1, args.hidden_units, padding_idx=0)
        self.item_emb_dropout = torch.nn.Dropout(p=args.dropout_rate)

        self.abs_pos_K_emb = torch.nn.Embedding(args.maxlen, args.hidden_units)
        self.abs_pos_V_emb = torch.nn.Embedding(args.maxlen, args.hidden_units)
        self.time_matrix_K_emb = torch.nn.Embedding(self._time_k_rows(item_num, args), args.hidden_units)
        self.time_matrix_V_emb = torch.nn.Embedding(args.time_span + 1, args.hidden_units)

        self.abs_pos_K_emb_dropout = torch.nn.Dropout(p=args.dropout_rate)
        self.abs_pos_V_emb_dropout = torch.nn.Dropout(p=args.dropout_rate)
        self.time_matrix_K_dropout = torch.nn.Dropout(p=args.dropout_rate)
        self.time_matrix_V_dropout = torch.nn.Dropout(p=args.dropout_rate)

        self.attention_layernorms = torch.nn.ModuleList()
        self.attention_layers = torch.nn.ModuleList()
        self.forward_layernorms = torch.nn.ModuleList()
        self.forward_layers = torch.nn.ModuleList()

        self.last_layernorm = torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS)

        for _ in range(args.num_blocks):
            self.attention_layernorms.append(torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS))
            self.attention_layers.append(TimeAwareMultiHeadAttention(
                args.hidden_units, args.num_heads, args.dropout_rate, args.device, self.query_mask_by_repeat))
            self.forward_layernorms.append(torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS))
            self.forward_layers.append(PointWiseFeedForward(args.hidden_units, args.dropout_rate, self.ffn_activation))

    @staticmethod
    def _time_k_rows(item_num, args):
        return args.time_span + 1

    def seq2feats(self, user_ids, log_seqs, time_matrices):
        """log_seqs: int array (N, T), left-padded with 0; time_matrices: int array (N, T, T)."""
        seqs = self.item_emb(torch.LongTensor(log_seqs).to(self.dev))
        seqs *= self.item_emb.embedding_dim ** 0.5
        seqs = self.item_emb_dropout(seqs)

        # Absolute positions: slot t gets row t (0..T-1) whether it holds an item or padding.
        positions = np.tile(np.array(range(log_seqs.shape[1])), [log_seqs.shape[0], 1])
        positions = torch.LongTensor(positions).to(self.dev)
        abs_pos_K = self.abs_pos_K_emb_dropout(self.abs_pos_K_emb(positions))
        abs_pos_V = self.abs_pos_V_emb_dropout(self.abs_pos_V_emb(positions))

        time_matrices = torch.LongTensor(time_matrices).to(self.dev)
        time_matrix_K = self.time_matrix_K_dropout(self.time_matrix_K_emb(time_matrices))
        time_matrix_V = self.time_matrix_V_dropout(self.time_matrix_V_emb(time_matrices))

        timeline_mask = torch.BoolTensor(log_seqs == 0).to(self.dev)
        seqs *= ~timeline_mask.unsqueeze(-1)  # padded slots start as zero rows, whatever row 0 holds

        tl = seqs.shape[1]
        attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool, device=self.dev))

        for i in range(len(self.attention_layers)):
            Q = self.attention_layernorms[i](seqs)
            mha_outputs = self.attention_layers[i](Q, seqs, timeline_mask, attention_mask,
                                                   time_matrix_K, time_matrix_V, abs_pos_K, abs_pos_V)
            seqs = Q + mha_outputs  # the residual is the normalised query, not the block input
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)  # adds its own residual
            seqs *= ~timeline_mask.unsqueeze(-1)

        return self.last_layernorm(seqs)

    def forward(self, user_ids, log_seqs, time_matrices, pos_seqs, neg_seqs):
        """Training: logits of the next item and of one sampled negative at every slot."""
        log_feats = self.seq2feats(user_ids, log_seqs, time_matrices)
        pos_embs = self.item_emb(torch.LongTensor(pos_seqs).to(self.dev))
        neg_embs = self.item_emb(torch.LongTensor(neg_seqs).to(self.dev))
        return (log_feats * pos_embs).sum(dim=-1), (log_feats * neg_embs).sum(dim=-1)

    def predict(self, user_ids, log_seqs, time_matrices, item_indices):
        """Inference (utils.evaluate): (users, items) logits read out at the last slot."""
        log_feats = self.seq2feats(user_ids, log_seqs, time_matrices)
        final_feat = log_feats[:, -1, :]
        item_embs = self.item_emb(torch.LongTensor(item_indices).to(self.dev))
        return item_embs.matmul(final_feat.unsqueeze(-1)).squeeze(-1)


class TiSASRec2020Oct(TiSASRec):
    """c4e6230 .. 6561520^: ReLU FFN, time_matrix_K_emb still [item_num+1, d], expand() mask."""

    query_mask_by_repeat = False

    @staticmethod
    def _time_k_rows(item_num, args):
        return item_num + 1


class TiSASRec2020Sep(TiSASRec2020Oct):
    """54aa68f .. 9ddc21e (the published checkpoint): no activation in the FFN."""

    ffn_activation = False


MODEL_CLASSES = {"2020-09": TiSASRec2020Sep, "2020-10": TiSASRec2020Oct, "current": TiSASRec}


def build_model(generation, item_num, hidden_units, num_heads, num_blocks, maxlen, time_span,
                dropout_rate=0.2):
    """As main.py does: TiSASRec(usernum, itemnum, itemnum, args) (time_num is unused)."""
    args = model_args(hidden_units=hidden_units, num_heads=num_heads, num_blocks=num_blocks,
                      maxlen=maxlen, time_span=time_span, dropout_rate=dropout_rate)
    return MODEL_CLASSES[generation](0, item_num, item_num, args)


def checkpoint_name(args, num_epochs, lr=0.001):
    """main.py's file name; the hyper-parameters in it are the only record of num_heads."""
    return (f"TiSASRec.epoch={num_epochs}.lr={lr}.layer={args.num_blocks}.head={args.num_heads}"
            f".hidden={args.hidden_units}.maxlen={args.maxlen}.pth")


def save_checkpoint(model, path, num_epochs=601, lr=0.001):
    """main.py's save: torch.save(model.state_dict(), os.path.join(folder, fname)). `path` is a
    folder (the file gets main.py's name) or a full file path. Returns the file written."""
    if os.path.isdir(path):
        path = os.path.join(path, checkpoint_name(model.args, num_epochs, lr))
    torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------
# The data pipeline: utils.py's data_partition/timeSlice/cleanAndsort for one user, then the
# window evaluate() builds and computeRePos.

def normalized_history(history):
    """[(item_row, timestamp), ...] in the order the interactions were recorded ->
    [(item_row, t'), ...] sorted by time, t' >= 1, as data_partition + cleanAndsort compute it
    for one user whose whole history this is.

    data_partition reads timestamps with float(); timeSlice maps each to
    int(round(float(t - global_min))) over the whole data set; cleanAndsort sorts each user's
    items by timestamp (sorted(): stable, ties keep file order), takes the user's smallest
    non-zero gap between consecutive (mapped) timestamps as the scale (1 if there is none) and
    maps t to int(round((t - user_min) / scale) + 1) (true division, round half to even).
    The global origin cancels for integer timestamps; here it is the history's own minimum."""
    if not history:
        return []
    stamps = [float(t) for _, t in history]
    origin = min(stamps)
    sliced = [(row, int(round(float(t - origin)))) for (row, _), t in zip(history, stamps)]
    ordered = sorted(zip(sliced, stamps), key=lambda pair: pair[1])
    ordered = [entry for entry, _ in ordered]
    times = [t for _, t in ordered]
    gaps = set(later - earlier for earlier, later in zip(times, times[1:]) if later - earlier != 0)
    scale = min(gaps) if gaps else 1
    user_min = min(times)
    return [(row, int(round((t - user_min) / scale) + 1)) for row, t in ordered]


def relation_matrix(time_seq, time_span):
    """computeRePos: r_ij = min(|t_i - t_j|, time_span) over every pair of slots, padding (t = 0)
    included, as an int32 (T, T) matrix."""
    t = np.asarray(time_seq, dtype=np.int64)
    return np.minimum(np.abs(t[:, None] - t[None, :]), time_span).astype(np.int32)


def window(normalized, maxlen, time_span):
    """(log_seqs (1, T), time_matrices (1, T, T)) from an already normalised history
    [(item_row, t'), ...] (oldest first): the most recent `maxlen` items, oldest first,
    left-padded with item 0 and time 0 (evaluate() fills np.int32 arrays from the end), and
    computeRePos over all T slots."""
    seq = np.zeros([maxlen], dtype=np.int32)
    time_seq = np.zeros([maxlen], dtype=np.int32)
    recent = list(normalized)[-maxlen:] if maxlen > 0 else []
    if recent:
        if max(t for _, t in recent) > np.iinfo(np.int32).max:
            raise OverflowError("a normalised time does not fit evaluate()'s np.int32 time_seq")
        seq[maxlen - len(recent):] = [row for row, _ in recent]
        time_seq[maxlen - len(recent):] = [t for _, t in recent]
    return seq[np.newaxis, :], relation_matrix(time_seq, time_span)[np.newaxis, :, :]


def model_inputs(history, maxlen, time_span):
    """The model's inputs for a history [(item_row, timestamp), ...] in recorded order: the
    whole history sets the time origin and scale, the most recent `maxlen` items are the input
    (what evaluate() builds when this history is everything the user has)."""
    return window(normalized_history(history), maxlen, time_span)


def predict_all(model, history):
    """Every row's logit for the history, as float64 with row 0 (padding) at index 0 (the padding
    row is never ranked; its entry is model.predict's too)."""
    log_seqs, time_matrices = model_inputs(history, model.args.maxlen, model.args.time_span)
    with torch.no_grad():
        logits = model.predict(None, log_seqs, time_matrices, np.arange(0, model.item_num + 1))
    return logits[0].double().numpy()


def item_map_of(raw_items_in_file_order):
    """cleanAndsort's renumbering: the raw (int) item ids collected into a Python set in the
    order data_partition met them (users in order of first appearance, each user's lines in file
    order), then row = position in the set's iteration order + 1. For ints the order is fixed
    (hash(int) == int, no randomisation) but it is the set's slot order, not sorted order, once
    ids reach the table size."""
    item_set = set()
    for item in raw_items_in_file_order:
        item_set.add(item)
    return {item: row + 1 for row, item in enumerate(item_set)}


def write_item_ids(item_map, path):
    """seqrec's --item-ids file from an item_map (raw id -> row): dicts keep insertion order and
    cleanAndsort inserted rows 1, 2, ... in order, so iterating item_map is row order; line 0
    stands for the padding row."""
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]"] + [str(item) for item in item_map]) + "\n")


def engine_style_logits(state_dict, history, num_heads, maxlen, time_span, relu):
    """The algorithm of docs/sources/tisasrec.md written in float64 numpy from the state_dict
    alone, the way an engine can run it: only the real slots are computed as queries (a padded
    query's row is zeroed after its block anyway), and every padded key is the K/V bias plus its
    own position row plus the time row min(t'_i, time_span). Returns every row's logit (row 0
    included, as predict_all). Not TiSASRec.pytorch's code: a check of the written spec."""
    w = {name: tensor.detach().double().numpy() for name, tensor in state_dict.items()}
    d = w["item_emb.weight"].shape[1]
    dh = d // num_heads
    blocks = len([name for name in w if name.startswith("attention_layers.") and name.endswith(".Q_w.weight")])

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased variance, eps inside the sqrt
        return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * w[prefix + ".weight"] + w[prefix + ".bias"]

    normalized = normalized_history(history)[-maxlen:]
    n = len(normalized)
    p = maxlen - n                                       # first real slot
    rows = np.array([row for row, _ in normalized])
    times = np.array([t for _, t in normalized], dtype=np.int64)
    rel_real = np.minimum(np.abs(times[:, None] - times[None, :]), time_span)   # (n, n)
    rel_pad = np.minimum(times, time_span)                                     # (n,) vs time 0
    abs_k, abs_v = w["abs_pos_K_emb.weight"], w["abs_pos_V_emb.weight"]
    time_k, time_v = w["time_matrix_K_emb.weight"], w["time_matrix_V_emb.weight"]

    x = w["item_emb.weight"][rows] * np.sqrt(d)          # (n, d): the real slots p..maxlen-1
    for b in range(blocks):
        att = f"attention_layers.{b}."
        q = layer_norm(x, f"attention_layernorms.{b}")
        Q = q @ w[att + "Q_w.weight"].T + w[att + "Q_w.bias"]
        K = x @ w[att + "K_w.weight"].T + w[att + "K_w.bias"]
        V = x @ w[att + "V_w.weight"].T + w[att + "V_w.bias"]
        out = np.zeros_like(x)
        for i in range(n):
            # keys: padded slots 0..p-1, then real slots p..p+i (causal)
            keys_k = np.concatenate([w[att + "K_w.bias"] + abs_k[:p] + time_k[rel_pad[i]],
                                     K[:i + 1] + abs_k[p:p + i + 1] + time_k[rel_real[i, :i + 1]]])
            keys_v = np.concatenate([w[att + "V_w.bias"] + abs_v[:p] + time_v[rel_pad[i]],
                                     V[:i + 1] + abs_v[p:p + i + 1] + time_v[rel_real[i, :i + 1]]])
            for h in range(num_heads):
                s = slice(h * dh, (h + 1) * dh)
                scores = keys_k[:, s] @ Q[i, s] / np.sqrt(dh)
                a = np.exp(scores - scores.max())
                out[i, s] = (a / a.sum()) @ keys_v[:, s]
        x = q + out
        f = layer_norm(x, f"forward_layernorms.{b}")
        hidden = f @ w[f"forward_layers.{b}.conv1.weight"][:, :, 0].T + w[f"forward_layers.{b}.conv1.bias"]
        if relu:
            hidden = np.maximum(hidden, 0.0)
        x = f + hidden @ w[f"forward_layers.{b}.conv2.weight"][:, :, 0].T + w[f"forward_layers.{b}.conv2.bias"]
    final = layer_norm(x[-1], "last_layernorm")
    return w["item_emb.weight"] @ final
