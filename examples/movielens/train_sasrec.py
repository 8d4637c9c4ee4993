#!/usr/bin/python3
"""Train the bundled MovieLens SASRec the way SASRec.pytorch's main.py does, and evaluate it.

Data: MovieLens ml-latest-small ratings.csv (userId,movieId,rating,timestamp). A rating
>= 3.5 is a positive; each user's positives are sorted by timestamp (stable, so equal
timestamps keep file order). Movies that have at least one positive become catalog rows
1..n in ascending movieId order; item_ids.txt lists them, one per line, line 0 = [PAD].

Model and training follow SASRec.pytorch (current generation, post_ln = norm_first false):
hidden 50, 2 blocks, 1 head, maxlen 200, dropout 0.2, xavier_normal_ init with padding rows
zeroed, Adam lr 0.001 betas (0.9, 0.98), batch 128, BCE on the next item against one random
negative per position, leave-one-out split (last positive = test, second-last = valid; users
with fewer than 4 positives train only). The state_dict is saved with torch.save under
main.py's file name, so `seqrec convert --from pmixer ... --variant post_ln` reads it.

Evaluation: SASRec.pytorch's `evaluate` (HR@10 / NDCG@10 of the held-out item against 100
sampled negatives not in the user's training items; sampling seeded here so it repeats) and
full ranking (against the whole catalog minus the user's other positives).

  train:     /usr/bin/python3 examples/movielens/train_sasrec.py
  evaluate:  /usr/bin/python3 examples/movielens/train_sasrec.py --eval-only CKPT.pth
"""

import argparse
import csv
import json
import os
import re
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "parity"))
import sasrec_pytorch  # noqa: E402  (the reference SASRec.pytorch modules)

PAD_TOKEN = "[PAD]"
TOP_K = 10
SAMPLED_NEGATIVES = 100


# ---------------------------------------------------------------- data

def load_positive_sequences(ratings_path, threshold):
    """userId -> movieIds rated >= threshold, oldest first (stable on equal timestamps)."""
    events = {}
    with open(ratings_path, newline="") as file:
        for row in csv.DictReader(file):
            if float(row["rating"]) >= threshold:
                events.setdefault(int(row["userId"]), []).append((int(row["timestamp"]), int(row["movieId"])))
    return {user: [movie for _, movie in sorted(timeline, key=lambda event: event[0])]
            for user, timeline in events.items()}


def split_leave_one_out(sequences):
    """SASRec.pytorch's data_partition over user rows 1..U (users in ascending userId)."""
    train, valid, test = {}, {}, {}
    for user, items in enumerate(sequences, start=1):
        if len(items) < 4:  # too short to hold out two and still learn from the rest
            train[user], valid[user], test[user] = items, [], []
        else:
            train[user], valid[user], test[user] = items[:-2], [items[-2]], [items[-1]]
    return train, valid, test


class Dataset:
    def __init__(self, ratings_path, threshold):
        by_user = load_positive_sequences(ratings_path, threshold)
        self.movie_ids = sorted({movie for items in by_user.values() for movie in items})
        row_of = {movie: row for row, movie in enumerate(self.movie_ids, start=1)}
        self.user_ids = sorted(by_user)
        sequences = [[row_of[movie] for movie in by_user[user]] for user in self.user_ids]
        self.positives = sum(len(items) for items in sequences)
        self.user_num = len(self.user_ids)
        self.item_num = len(self.movie_ids)
        self.train, self.valid, self.test = split_leave_one_out(sequences)


def training_batch(dataset, user_order, cursor, batch_size, maxlen, rng):
    """SASRec.pytorch's sample_function, in-process: for each user in a shuffled pass, the
    left-padded training sequence, the next item at each slot, and one negative per slot
    drawn from items the user never had in training."""
    users, seqs, poss, negs = [], [], [], []
    for _ in range(batch_size):
        if cursor % dataset.user_num == 0:
            rng.shuffle(user_order)
        user = int(user_order[cursor % dataset.user_num])
        cursor += 1
        while len(dataset.train[user]) <= 1:
            user = rng.randint(1, dataset.user_num + 1)
        items = dataset.train[user]
        seq = np.zeros([maxlen], dtype=np.int32)
        pos = np.zeros([maxlen], dtype=np.int32)
        neg = np.zeros([maxlen], dtype=np.int32)
        seen = set(items)
        next_item = items[-1]
        slot = maxlen - 1
        for item in reversed(items[:-1]):
            seq[slot], pos[slot] = item, next_item
            neg[slot] = rng.randint(1, dataset.item_num + 1)
            while neg[slot] in seen:
                neg[slot] = rng.randint(1, dataset.item_num + 1)
            next_item = item
            slot -= 1
            if slot == -1:
                break
        users.append(user)
        seqs.append(seq)
        poss.append(pos)
        negs.append(neg)
    return (np.array(users), np.array(seqs), np.array(poss), np.array(negs)), cursor


# ---------------------------------------------------------------- evaluation

def evaluate(model, dataset, maxlen, mode, seed):
    """HR@10 / NDCG@10 for `mode` in {valid, test}: the sampled protocol of SASRec.pytorch's
    evaluate / evaluate_valid, and full ranking. Returns {"sampled_100": ..., "full_ranking": ...}."""
    users, inputs, targets = [], [], []
    for user in range(1, dataset.user_num + 1):
        train = dataset.train[user]
        held_out = dataset.valid[user] if mode == "valid" else dataset.test[user]
        if len(train) < 1 or len(held_out) < 1:
            continue
        # The test input also sees the validation item, as in SASRec.pytorch's evaluate.
        history = train + (dataset.valid[user] if mode == "test" else [])
        users.append(user)
        inputs.append(sasrec_pytorch.left_padded_window(history, maxlen))
        targets.append(held_out[0])

    model.eval()
    with torch.no_grad():
        catalog = model.item_emb.weight[1:]  # row r at index r-1
        scores = []
        for start in range(0, len(inputs), 128):
            features = model.log2feats(np.stack(inputs[start:start + 128]))[:, -1, :]
            scores.append((features @ catalog.T).double().numpy())
        scores = np.concatenate(scores)

    rng = np.random.RandomState(seed)
    sampled_hits = sampled_ndcg = full_hits = full_ndcg = 0.0
    for user, target, user_scores in zip(users, targets, scores):
        # Sampled: the target against 100 negatives outside the user's training items.
        rated = set(dataset.train[user]) | {0}
        candidates = [target]
        for _ in range(SAMPLED_NEGATIVES):
            negative = rng.randint(1, dataset.item_num + 1)
            while negative in rated:
                negative = rng.randint(1, dataset.item_num + 1)
            candidates.append(negative)
        predictions = -user_scores[np.array(candidates) - 1]
        rank = predictions.argsort().argsort()[0].item()
        if rank < TOP_K:
            sampled_hits += 1
            sampled_ndcg += 1 / np.log2(rank + 2)

        # Full ranking: every catalog item except the user's other positives.
        others = set(dataset.train[user] + dataset.valid[user] + dataset.test[user]) - {target}
        ranked = user_scores.copy()
        ranked[np.array(sorted(others), dtype=np.int64) - 1] = -np.inf
        rank = int(np.sum(ranked > ranked[target - 1]))
        if rank < TOP_K:
            full_hits += 1
            full_ndcg += 1 / np.log2(rank + 2)

    count = len(users)
    return {
        "users": count,
        "sampled_100": {"hr@10": sampled_hits / count, "ndcg@10": sampled_ndcg / count},
        "full_ranking": {"hr@10": full_hits / count, "ndcg@10": full_ndcg / count},
    }


def evaluate_both(model, dataset, maxlen, seed):
    return {"valid": evaluate(model, dataset, maxlen, "valid", seed),
            "test": evaluate(model, dataset, maxlen, "test", seed + 1)}


def summary(metrics):
    parts = []
    for mode in ("valid", "test"):
        for protocol in ("sampled_100", "full_ranking"):
            values = metrics[mode][protocol]
            parts.append(f"{mode} {protocol} HR@10 {values['hr@10']:.4f} NDCG@10 {values['ndcg@10']:.4f}")
    return "; ".join(parts)


# ---------------------------------------------------------------- model files

def checkpoint_file_name(args, epoch):
    return (f"SASRec.epoch={epoch}.lr={args.lr}.layer={args.num_blocks}.head={args.num_heads}"
            f".hidden={args.hidden_units}.maxlen={args.maxlen}.pth")


def sizes_from_file_name(path, args):
    """layer/head/hidden/maxlen as SASRec.pytorch's file name records them (args as fallback)."""
    sizes = {}
    for field, attribute in (("layer", "num_blocks"), ("head", "num_heads"),
                             ("hidden", "hidden_units"), ("maxlen", "maxlen")):
        match = re.search(rf"\.{field}=(\d+)", os.path.basename(path))
        sizes[attribute] = int(match.group(1)) if match else getattr(args, attribute)
    return sizes


def new_model(dataset, args, **sizes):
    model_args = sasrec_pytorch.model_args(
        hidden_units=sizes.get("hidden_units", args.hidden_units),
        num_heads=sizes.get("num_heads", args.num_heads),
        num_blocks=sizes.get("num_blocks", args.num_blocks),
        maxlen=sizes.get("maxlen", args.maxlen),
        dropout_rate=args.dropout_rate, norm_first=False)
    return sasrec_pytorch.SASRec(dataset.user_num, dataset.item_num, model_args), model_args.maxlen


# ---------------------------------------------------------------- main

def train(dataset, args):
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    model, maxlen = new_model(dataset, args)
    # main.py's init: xavier_normal_ where it applies, then zero the padding rows.
    for param in model.parameters():
        try:
            torch.nn.init.xavier_normal_(param.data)
        except ValueError:
            pass
    model.pos_emb.weight.data[0, :] = 0
    model.item_emb.weight.data[0, :] = 0

    bce = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    batches_per_epoch = (dataset.user_num - 1) // args.batch_size + 1
    user_order = np.arange(1, dataset.user_num + 1, dtype=np.int32)
    cursor = 0
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        epoch_loss = 0.0
        for _ in range(batches_per_epoch):
            (users, seq, pos, neg), cursor = training_batch(dataset, user_order, cursor,
                                                            args.batch_size, maxlen, rng)
            pos_logits, neg_logits = model(users, seq, pos, neg)
            where = np.where(pos != 0)
            loss = bce(pos_logits[where], torch.ones_like(pos_logits[where]))
            loss = loss + bce(neg_logits[where], torch.zeros_like(neg_logits[where]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            valid = evaluate(model, dataset, maxlen, "valid", args.seed)
            print(f"epoch {epoch} ({time.time() - started:.0f}s) loss {epoch_loss / batches_per_epoch:.4f} "
                  f"valid sampled NDCG@10 {valid['sampled_100']['ndcg@10']:.4f} "
                  f"HR@10 {valid['sampled_100']['hr@10']:.4f}, full NDCG@10 "
                  f"{valid['full_ranking']['ndcg@10']:.4f} HR@10 {valid['full_ranking']['hr@10']:.4f}",
                  flush=True)
    return model, maxlen, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", default=os.path.join(HERE, "ratings.csv"))
    parser.add_argument("--out-dir", default=HERE)
    parser.add_argument("--rating-threshold", type=float, default=3.5)
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--maxlen", type=int, default=200)
    parser.add_argument("--hidden-units", type=int, default=50)
    parser.add_argument("--num-blocks", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=1)
    parser.add_argument("--dropout-rate", type=float, default=0.2)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-only", metavar="CKPT", help="evaluate this saved state_dict and exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = Dataset(args.ratings, args.rating_threshold)
    print(f"{dataset.user_num} users, {dataset.item_num} items, {dataset.positives} positives "
          f"(rating >= {args.rating_threshold})", flush=True)

    if args.eval_only:
        model, maxlen = new_model(dataset, args, **sizes_from_file_name(args.eval_only, args))
        model.load_state_dict(torch.load(args.eval_only, map_location="cpu"))
        print(summary(evaluate_both(model, dataset, maxlen, args.seed)))
        return 0

    model, maxlen, train_seconds = train(dataset, args)
    checkpoint = os.path.join(args.out_dir, checkpoint_file_name(args, args.epochs))
    torch.save(model.state_dict(), checkpoint)
    with open(os.path.join(args.out_dir, "item_ids.txt"), "w") as file:
        file.write("\n".join([PAD_TOKEN] + [str(movie) for movie in dataset.movie_ids]) + "\n")

    metrics = evaluate_both(model, dataset, maxlen, args.seed)
    print(summary(metrics))
    report = {
        "checkpoint": os.path.basename(checkpoint),
        "data": {"ratings": "MovieLens ml-latest-small ratings.csv", "rating_threshold": args.rating_threshold,
                 "users": dataset.user_num, "items": dataset.item_num, "positives": dataset.positives},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "betas": [0.9, 0.98], "dropout_rate": args.dropout_rate, "hidden_units": args.hidden_units,
                     "num_blocks": args.num_blocks, "num_heads": args.num_heads, "maxlen": args.maxlen,
                     "norm_first": False, "seed": args.seed, "threads": args.threads,
                     "seconds": round(train_seconds, 1)},
        "evaluation": {"sampled_100": "target vs 100 random items not in the user's training items "
                                      "(SASRec.pytorch evaluate), seeded",
                       "full_ranking": "target vs every catalog item except the user's other positives"},
        "valid": metrics["valid"],
        "test": metrics["test"],
    }
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as file:
        json.dump(report, file, indent=2)
        file.write("\n")
    print(f"saved {checkpoint}, item_ids.txt, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
