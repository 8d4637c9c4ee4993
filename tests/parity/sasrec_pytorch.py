"""Reference SASRec modules that mirror SASRec.pytorch's model.py (github: pmixer/SASRec.pytorch).

This is a test reference, written for seqrec: it reproduces the forward pass of each of the
three model.py generations with the real torch.nn layers, using the same class and attribute
names, so `state_dict()` has exactly SASRec.pytorch's keys and a checkpoint saved from here is
indistinguishable from one saved by SASRec.pytorch's main.py.

Generations (all share the same state_dict keys):
  SASRec                (2025-05 onward, python/model.py) norm_first=True -> seqrec's pre_ln,
                        False -> post_ln. pos_emb [maxlen+1, d] with padding_idx 0; padded slots
                        get position 0, real items their slot index 1..L.
  SASRecOriginal        (2024-06 .. 2025-04, model.py) "Q = LN_a(x); x = Q + MHA(Q, x, x);
                        x = LN_f(x); x = FFN(x)" where the FFN adds its own residual; positions
                        as above.
  SASRecOriginalLegacy  (2020 .. 2024-05, model.py) same block, pos_emb [maxlen, d] without a
                        padding row, positions 0..L-1 for every slot, and activations multiplied
                        by the non-padding mask after the embedding and after every block.

Every generation: item embeddings scaled by sqrt(d), causal attention mask only (padded keys are
not masked), LayerNorm eps 1e-8, left-padded input, read-out at the last slot, score = dot
product with item_emb. The FFN is conv2(ReLU(conv1(x))) with kernel-size-1 Conv1d layers.

`args` is any object with the attributes SASRec.pytorch's argparse namespace has:
hidden_units, num_heads, num_blocks, maxlen, dropout_rate, norm_first, device
(see `model_args`).
"""

import types

import numpy as np
import torch

LAYER_NORM_EPS = 1e-8


def model_args(hidden_units=50, num_heads=1, num_blocks=2, maxlen=200, dropout_rate=0.2,
               norm_first=False, device="cpu"):
    """The subset of SASRec.pytorch's command-line arguments that shapes the model."""
    return types.SimpleNamespace(hidden_units=hidden_units, num_heads=num_heads,
                                 num_blocks=num_blocks, maxlen=maxlen, dropout_rate=dropout_rate,
                                 norm_first=norm_first, device=device)


class PointWiseFeedForward(torch.nn.Module):
    """Per-position two-layer FFN as 1x1 convolutions. The original generations add the
    residual inside the module (`outputs += inputs`); the current one adds it in the block."""

    def __init__(self, hidden_units, dropout_rate, adds_residual=False):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout1 = torch.nn.Dropout(p=dropout_rate)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
        self.dropout2 = torch.nn.Dropout(p=dropout_rate)
        self.adds_residual = adds_residual

    def forward(self, inputs):
        # Conv1d wants (N, C, Length); the model keeps (N, Length, C).
        outputs = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(inputs.transpose(-1, -2))))))
        outputs = outputs.transpose(-1, -2)
        if self.adds_residual:
            outputs += inputs
        return outputs


class SASRec(torch.nn.Module):
    """Current generation (python/model.py, 2025-05 onward): pre_ln or post_ln blocks."""

    ffn_adds_residual = False

    def __init__(self, user_num, item_num, args):
        super().__init__()
        self.user_num = user_num
        self.item_num = item_num
        self.dev = args.device
        self.norm_first = args.norm_first

        # Module creation order matches the source, so state_dict key order does too.
        self.item_emb = torch.nn.Embedding(item_num + 1, args.hidden_units, padding_idx=0)
        self.pos_emb = self._make_pos_emb(args)
        self.emb_dropout = torch.nn.Dropout(p=args.dropout_rate)

        self.attention_layernorms = torch.nn.ModuleList()
        self.attention_layers = torch.nn.ModuleList()
        self.forward_layernorms = torch.nn.ModuleList()
        self.forward_layers = torch.nn.ModuleList()

        self.last_layernorm = torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS)

        for _ in range(args.num_blocks):
            self.attention_layernorms.append(torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS))
            # Positional third argument is dropout, as in the source; batch_first stays False.
            self.attention_layers.append(
                torch.nn.MultiheadAttention(args.hidden_units, args.num_heads, args.dropout_rate))
            self.forward_layernorms.append(torch.nn.LayerNorm(args.hidden_units, eps=LAYER_NORM_EPS))
            self.forward_layers.append(
                PointWiseFeedForward(args.hidden_units, args.dropout_rate, self.ffn_adds_residual))

    @staticmethod
    def _make_pos_emb(args):
        return torch.nn.Embedding(args.maxlen + 1, args.hidden_units, padding_idx=0)

    def _embed(self, log_seqs):
        """Item embedding * sqrt(d) + position embedding; padded slots get position 0."""
        log_seqs_t = torch.tensor(log_seqs, dtype=torch.long, device=self.dev)
        seqs = self.item_emb(log_seqs_t)
        seqs *= self.item_emb.embedding_dim ** 0.5
        batch, length = log_seqs.shape
        poss = torch.arange(1, length + 1, dtype=torch.long, device=self.dev).unsqueeze(0).expand(batch, -1)
        poss = poss * (log_seqs_t != 0)
        seqs += self.pos_emb(poss)
        return self.emb_dropout(seqs)

    def _causal_mask(self, length):
        # True = may not attend: everything above the diagonal.
        return ~torch.tril(torch.ones((length, length), dtype=torch.bool, device=self.dev))

    def log2feats(self, log_seqs):
        seqs = self._embed(log_seqs)
        attention_mask = self._causal_mask(seqs.shape[1])

        for i in range(len(self.attention_layers)):
            seqs = torch.transpose(seqs, 0, 1)  # MultiheadAttention wants (L, N, C)
            if self.norm_first:
                x = self.attention_layernorms[i](seqs)
                mha_outputs, _ = self.attention_layers[i](x, x, x, attn_mask=attention_mask)
                seqs = seqs + mha_outputs
                seqs = torch.transpose(seqs, 0, 1)
                seqs = seqs + self.forward_layers[i](self.forward_layernorms[i](seqs))
            else:
                mha_outputs, _ = self.attention_layers[i](seqs, seqs, seqs, attn_mask=attention_mask)
                seqs = self.attention_layernorms[i](seqs + mha_outputs)
                seqs = torch.transpose(seqs, 0, 1)
                seqs = self.forward_layernorms[i](seqs + self.forward_layers[i](seqs))

        return self.last_layernorm(seqs)

    def forward(self, user_ids, log_seqs, pos_seqs, neg_seqs):
        """Training: logits of the next item and of one sampled negative at every slot."""
        log_feats = self.log2feats(log_seqs)
        pos_embs = self.item_emb(torch.tensor(pos_seqs, dtype=torch.long, device=self.dev))
        neg_embs = self.item_emb(torch.tensor(neg_seqs, dtype=torch.long, device=self.dev))
        pos_logits = (log_feats * pos_embs).sum(dim=-1)
        neg_logits = (log_feats * neg_embs).sum(dim=-1)
        return pos_logits, neg_logits

    def predict(self, user_ids, log_seqs, item_indices):
        """Inference: (users, items) logits read out at the last (most recent) slot."""
        log_feats = self.log2feats(log_seqs)
        final_feat = log_feats[:, -1, :]
        item_embs = self.item_emb(torch.tensor(item_indices, dtype=torch.long, device=self.dev))
        return item_embs.matmul(final_feat.unsqueeze(-1)).squeeze(-1)


class SASRecOriginal(SASRec):
    """Original generation, 2024-06 .. 2025-04: positions 1..L for real items, 0 for padding."""

    ffn_adds_residual = True

    def log2feats(self, log_seqs):
        seqs = self._embed(log_seqs)
        attention_mask = self._causal_mask(seqs.shape[1])

        for i in range(len(self.attention_layers)):
            seqs = torch.transpose(seqs, 0, 1)
            # Only the query is normalised; keys and values are the block input as is.
            Q = self.attention_layernorms[i](seqs)
            mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask)
            seqs = Q + mha_outputs
            seqs = torch.transpose(seqs, 0, 1)
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)  # adds its own residual

        return self.last_layernorm(seqs)


class SASRecOriginalLegacy(SASRecOriginal):
    """Original generation before 2024-06: pos_emb [maxlen, d], positions 0..L-1 for every
    slot, padded rows zeroed after the embedding and after every block."""

    @staticmethod
    def _make_pos_emb(args):
        return torch.nn.Embedding(args.maxlen, args.hidden_units)

    def log2feats(self, log_seqs):
        seqs = self.item_emb(torch.tensor(log_seqs, dtype=torch.long, device=self.dev))
        seqs *= self.item_emb.embedding_dim ** 0.5
        positions = np.tile(np.arange(log_seqs.shape[1]), [log_seqs.shape[0], 1])
        seqs += self.pos_emb(torch.tensor(positions, dtype=torch.long, device=self.dev))
        seqs = self.emb_dropout(seqs)

        timeline_mask = torch.tensor(log_seqs == 0, dtype=torch.bool, device=self.dev)
        seqs *= ~timeline_mask.unsqueeze(-1)

        attention_mask = self._causal_mask(seqs.shape[1])

        for i in range(len(self.attention_layers)):
            seqs = torch.transpose(seqs, 0, 1)
            Q = self.attention_layernorms[i](seqs)
            # Padded keys are not masked here either: they are zero rows, but still keys.
            mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask)
            seqs = Q + mha_outputs
            seqs = torch.transpose(seqs, 0, 1)
            seqs = self.forward_layernorms[i](seqs)
            seqs = self.forward_layers[i](seqs)
            seqs *= ~timeline_mask.unsqueeze(-1)

        return self.last_layernorm(seqs)


# seqrec's `--variant` name (and the test's extra name for the legacy layout) -> reference class
# and its norm_first flag.
VARIANTS = {
    "pre_ln": (SASRec, True),
    "post_ln": (SASRec, False),
    "original": (SASRecOriginal, False),
    "original_legacy": (SASRecOriginalLegacy, False),
}


def build_model(variant, item_num, hidden_units, num_heads, num_blocks, maxlen, dropout_rate=0.2):
    model_class, norm_first = VARIANTS[variant]
    args = model_args(hidden_units=hidden_units, num_heads=num_heads, num_blocks=num_blocks,
                      maxlen=maxlen, dropout_rate=dropout_rate, norm_first=norm_first)
    return model_class(0, item_num, args)


def left_padded_window(history, maxlen):
    """The model input SASRec.pytorch's evaluate builds: the most recent `maxlen` items,
    oldest first, left-padded with 0."""
    seq = np.zeros([maxlen], dtype=np.int32)
    recent = list(history)[-maxlen:]
    if recent:
        seq[maxlen - len(recent):] = recent
    return seq
