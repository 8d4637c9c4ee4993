"""An independent PyTorch/numpy implementation of `seqrec eval`'s protocol, for tests.

It shares no code with seqrec: it reads the interactions file with Python's csv module,
builds every user's sequence itself, runs the reference SASRec.pytorch modules
(tests/parity/sasrec_pytorch.py) on the checkpoint, and computes the metrics. The protocol
(README "Offline evaluation: seqrec eval", engine/evaluation.h):

- positive: rating >= threshold (or no rating column); an item is "known" when the model's
  item-id file lists it. A user's known positives in timestamp order, stable.
- fewer than 3 known positives: skipped. split last: target = last, input = all before it;
  split valid: target = second-to-last, input = all before it. Input cut to the last maxlen.
- interacted: every known item the user has any interaction with (any rating, any time).
- full: the target against every catalog row except the interacted rows other than itself.
  sampled: against the given negatives (or ones drawn with the documented generator).
- rank (0-based) = #candidates with a higher score + #candidates with an equal score and a
  lower catalog row. HR@k = rank < k, NDCG@k = 1/log2(rank + 2), MRR = 1/(rank + 1).
- coverage@k: distinct rows in every user's full-protocol top-k (score desc, row asc) over
  the number of catalog items.
"""

import csv
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "parity"))
import sasrec_pytorch  # noqa: E402

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- data

def read_interactions(path, user="userId", item="movieId", rating="rating", timestamp="timestamp"):
    """user id -> [(item id, rating or None, timestamp)] in file order. CSV or TSV with a header."""
    with open(path, newline="") as file:
        first = file.readline()
        file.seek(0)
        reader = csv.DictReader(file, delimiter="\t" if "\t" in first else ",")
        by_user = {}
        for row in reader:
            value = row.get(rating) if rating else None
            by_user.setdefault(row[user], []).append(
                (row[item], float(value) if value not in (None, "") else None, int(row[timestamp])))
    return by_user


def read_item_ids(path):
    """Catalog ids by row (line 0 = padding) -> {id: row}."""
    with open(path) as file:
        ids = [line.rstrip("\n") for line in file]
    return {item: row for row, item in enumerate(ids) if row > 0}


class Case:
    def __init__(self, user, target, history, interacted):
        self.user, self.target, self.history, self.interacted = user, target, history, interacted


def leave_one_out(by_user, rows, threshold, split):
    """Cases in no particular order, and the number of skipped users."""
    cases, skipped = [], 0
    for user, events in by_user.items():
        positives = [(ts, rows[item]) for item, rating, ts in events
                     if item in rows and (rating is None or threshold is None or rating >= threshold)]
        positives = [row for _, row in sorted(positives, key=lambda event: event[0])]  # stable
        if len(positives) < 3:
            skipped += 1
            continue
        at = len(positives) - (1 if split == "last" else 2)
        interacted = {rows[item] for item, _, _ in events if item in rows}
        cases.append(Case(user, positives[at], positives[:at], interacted))
    return cases, skipped


# ---------------------------------------------------------------- model

def load_model(checkpoint, variant, item_num, hidden_units, num_heads, num_blocks, maxlen):
    model = sasrec_pytorch.build_model(variant, item_num, hidden_units, num_heads, num_blocks, maxlen)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    return model


def all_scores(model, cases, maxlen, batch=128):
    """[len(cases), item_num + 1] float32 logits (column 0 = padding row)."""
    out = []
    with torch.no_grad():
        table = model.item_emb.weight
        for start in range(0, len(cases), batch):
            seqs = np.stack([sasrec_pytorch.left_padded_window(c.history, maxlen) for c in cases[start:start + batch]])
            features = model.log2feats(seqs)[:, -1, :]
            out.append((features @ table.T).numpy())
    return np.concatenate(out) if out else np.zeros((0, table.shape[0]), dtype=np.float32)


# ---------------------------------------------------------------- the documented generator

class MT19937_64:
    """std::mt19937_64, as the C++ standard specifies it."""

    def __init__(self, seed):
        self.mt = [seed & MASK64]
        for i in range(1, 312):
            previous = self.mt[-1]
            self.mt.append((6364136223846793005 * (previous ^ (previous >> 62)) + i) & MASK64)
        self.index = 312

    def _twist(self):
        mt = self.mt
        for i in range(312):
            x = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
            shifted = x >> 1
            if x & 1:
                shifted ^= 0xB5026F5AA96619E9
            mt[i] = mt[(i + 156) % 312] ^ shifted
        self.index = 0

    def __call__(self):
        if self.index >= 312:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & MASK64


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def sample_negatives(seed, user, n_rows, interacted, count):
    """The README's recipe: distinct rows never interacted with, drawn uniformly."""
    eligible = [r for r in range(1, n_rows) if r not in interacted]
    if len(eligible) <= count:
        return eligible
    engine = MT19937_64(splitmix64(seed ^ fnv1a64(user)))
    m = n_rows - 1
    accept_up_to = MASK64 - ((1 << 64) - m) % m
    drawn, out = set(), []
    while len(out) < count:
        x = engine()
        if x > accept_up_to:
            continue
        row = 1 + x % m
        if row in interacted or row in drawn:
            continue
        drawn.add(row)
        out.append(row)
    return out


def read_negatives(path, rows):
    """--save-negatives file -> {user: (target row, [negative rows])}."""
    out = {}
    with open(path) as file:
        for line in file:
            if line.startswith("#") or line.startswith("user\t"):
                continue
            user, target, negatives = line.rstrip("\n").split("\t")
            out[user] = (rows[target], [rows[item] for item in negatives.split(" ") if item])
    return out


# ---------------------------------------------------------------- metrics

def full_candidates(case, n_rows):
    """Every catalog row (1 .. n_rows-1) except the user's interacted rows other than the target."""
    keep = np.ones(n_rows, dtype=bool)
    keep[0] = False
    excluded = [r for r in case.interacted if r != case.target]
    if excluded:
        keep[np.asarray(excluded, dtype=np.int64)] = False
    return np.nonzero(keep)[0]


def rank_of(scores, target, candidates):
    """0-based rank: candidates beating the target (higher score, or equal and lower row)."""
    candidates = np.asarray(sorted(set(candidates) - {target}), dtype=np.int64)
    if candidates.size == 0:
        return 0
    s, t = scores[candidates], scores[target]
    return int(np.sum(s > t) + np.sum((s == t) & (candidates < target)))


def evaluate(cases, scores, n_rows, ks, protocol, negatives=None):
    """Metrics as `seqrec eval --json` reports them (metrics dict + users evaluated)."""
    hits = {k: 0.0 for k in ks}
    ndcg = {k: 0.0 for k in ks}
    covered = {k: set() for k in ks}
    mrr = 0.0
    k_max = max(ks)
    for case, user_scores in zip(cases, scores):
        full = full_candidates(case, n_rows)
        if protocol == "full":
            rank = rank_of(user_scores, case.target, full)
        else:
            rank = rank_of(user_scores, case.target, negatives[case.user])
        for k in ks:
            if rank < k:
                hits[k] += 1
                ndcg[k] += 1 / math.log2(rank + 2)
        mrr += 1 / (rank + 1)
        # Top-k of the full candidates: score descending, then row ascending.
        order = np.lexsort((full, -user_scores[full].astype(np.float64)))[:k_max]
        for k in ks:
            covered[k].update(full[order[:k]].tolist())
    count = len(cases)
    metrics = {}
    for k in ks:
        metrics[f"hr@{k}"] = hits[k] / count
        metrics[f"ndcg@{k}"] = ndcg[k] / count
        metrics[f"coverage@{k}"] = len(covered[k]) / (n_rows - 1)
    metrics["mrr"] = mrr / count
    return metrics


def smallest_gaps(cases, scores, n_rows, ks):
    """Where float differences between two implementations could reorder items: the
    smallest non-zero gap between a target's score and a competitor's, the smallest non-zero
    gap across a top-k boundary (positions k and k+1 of a full-protocol list), and the number
    of exact ties at a target (decided by catalog row in both implementations)."""
    target_gap = boundary_gap = math.inf
    exact_ties = 0
    for case, user_scores in zip(cases, scores):
        full = full_candidates(case, n_rows)
        others = full[full != case.target]
        s = user_scores.astype(np.float64)
        gaps = np.abs(s[others] - s[case.target])
        exact_ties += int(np.sum(gaps == 0))
        if np.any(gaps > 0):
            target_gap = min(target_gap, float(np.min(gaps[gaps > 0])))
        top = np.sort(s[full])[::-1]
        for k in ks:
            if k < top.size and top[k - 1] != top[k]:
                boundary_gap = min(boundary_gap, float(top[k - 1] - top[k]))
    return target_gap, boundary_gap, exact_ties
