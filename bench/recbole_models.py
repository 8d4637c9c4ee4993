"""The RecBole workloads of bench/workloads.py (`recbole`, `bert4rec`, `catalog1m`), built on
tests/parity/recbole_reference.py: RecBole's own SASRec / BERT4Rec (>= 1.2) modules, its
Config and its trainer's checkpoint layout, converted by `seqrec convert --from recbole`.

The scoring forward is full_sort_predict's, with reconstruct_test_data's per-row Python loop
written as one scatter so that it traces (the same [MASK] placement): right-padded item_seq
[B, L] and item_seq_len [B] -> scores over every item row [B, n_items].
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "parity"))
import recbole_reference as rb  # noqa: E402


def _family(w):
    return "bert4rec" if w.source == "recbole_bert4rec" else "sasrec"


def _config(w):
    return rb.make_config(_family(w), n_heads=w.heads, hidden_size=w.d, inner_size=w.ffn, n_layers=w.blocks,
                          max_len=w.max_len, hidden_act=w.activation, loss_type="CE")


class RecboleScoring(torch.nn.Module):
    def __init__(self, model, family, config):
        super().__init__()
        self.model = model
        self.family = family
        self.config = config
        # SequentialRecommender.get_attention_mask with its 0 / -10000 as float32 tensors: torch
        # 1.13's exporter types torch.where(bool, 0.0, -10000.0) as double, which ONNX Runtime
        # refuses (MatMul bound to double and float). Same values, eager and exported alike.
        zero = torch.tensor(0.0)
        masked = torch.tensor(-10000.0)

        def get_attention_mask(item_seq, bidirectional=False):
            attention_mask = item_seq != 0
            extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
            if not bidirectional:
                extended_attention_mask = torch.tril(extended_attention_mask.expand((-1, -1, item_seq.size(-1), -1)))
            return torch.where(extended_attention_mask, zero, masked)

        model.get_attention_mask = get_attention_mask

    def forward(self, item_seq, item_seq_len):
        m = self.model
        if self.family == "sasrec":
            seq_output = m.forward(item_seq, item_seq_len)
            return torch.matmul(seq_output, m.item_embedding.weight.transpose(0, 1))
        # BERT4Rec.reconstruct_test_data: append a padding slot, put [MASK] at slot len, drop slot 0.
        padded = torch.cat((item_seq, torch.zeros_like(item_seq[:, :1])), dim=-1)
        padded = padded.scatter(1, item_seq_len.unsqueeze(1), torch.full_like(item_seq[:, :1], m.mask_token))
        seq_output = m.forward(padded[:, 1:])
        seq_output = m.gather_indexes(seq_output, item_seq_len - 1)
        test_items_emb = m.item_embedding.weight[: m.n_items]
        return torch.matmul(seq_output, test_items_emb.transpose(0, 1)) + m.output_bias


def build_scoring(w, seed, trained_looking):
    config = _config(w)
    model = rb.build_model(_family(w), config, w.items + 1)
    trained_looking(model, seed)
    return RecboleScoring(model, _family(w), config).eval()


def save_checkpoint(w, scoring, folder):
    path = os.path.join(folder, f"{'BERT4Rec' if _family(w) == 'bert4rec' else 'SASRec'}-bench.pth")
    optimizer = torch.optim.Adam(scoring.model.parameters(), lr=0.001)
    rb.save_checkpoint(path, scoring.config, scoring.model, optimizer)
    with open(os.path.join(folder, "item_ids.txt"), "w") as f:
        f.write("[PAD]\n" + "".join(f"{r}\n" for r in range(1, w.items + 1)))
    return path


def load_scoring(w, checkpoint):
    state = torch.load(checkpoint)
    config = _config(w)
    model = rb.build_model(_family(w), config, w.items + 1)
    model.load_state_dict(state["state_dict"])
    return RecboleScoring(model, _family(w), config).eval()


def convert_command(w, seqrec, checkpoint, out):
    return [seqrec, "convert", "--from", "recbole", checkpoint, "--out", out, "--score", "raw",
            "--item-ids", os.path.join(os.path.dirname(checkpoint), "item_ids.txt")]


def model_inputs(w, histories):
    """RecBole's test input: the most recent L items, right padded, and their count."""
    seqs = np.zeros((len(histories), w.max_len), dtype=np.int64)
    lens = np.zeros(len(histories), dtype=np.int64)
    for i, h in enumerate(histories):
        window = h[-w.max_len:]
        seqs[i, :len(window)] = window
        lens[i] = len(window)
    return {"item_seq": seqs, "item_seq_len": lens}
