// Offline evaluation of a model on logged interactions (`seqrec eval`): leave-one-out as in
// the SASRec paper and SASRec.pytorch, full ranking or sampled negatives, batched through
// Model::logits. No HTTP, no history store: the caller hands over every user's interactions.
//
// The protocol, precisely (README "Offline evaluation: seqrec eval" says the same):
//
//  * Positives and order. An interaction is positive when it has no rating, or when there is
//    no threshold, or rating >= threshold (the request rules, engine/request.h). A user's
//    positives whose item the model knows are put in time order, stable (equal timestamps
//    keep their input order; an interaction without a timestamp keeps its place after the
//    one before it) — exactly prepare_request's order. Positives the model does not know are
//    dropped first: they can be neither input nor target.
//  * Split. With n known positives p_1..p_n: users with n < 3 are skipped (counted).
//    split last: target p_n, input p_1..p_{n-1};  split valid: target p_{n-1}, input
//    p_1..p_{n-2}. The model keeps the input's max_len most recent items. Models that read
//    time get every input item's timestamp and, as `now`, the target's (HSTU's evaluation).
//  * Interacted. Every row the user has any interaction with in the data, positive or not,
//    before or after the target, known to the model. The target itself is never excluded.
//  * full: the target is ranked against every catalog row (1 .. n_items-1; row 0 is
//    padding) except the user's interacted rows.
//    sampled: against `negatives` distinct rows drawn uniformly from the rows the user never
//    interacted with (so never the target), by sample_negatives below; when fewer such rows
//    exist, all of them.
//  * Rank (1-based) = 1 + the number of candidates that beat the target, where a beats b
//    when score(a) > score(b), or the scores are equal and a's catalog row is lower (the
//    engine's tie order: the target is in the top-k list `recommend` would return exactly
//    when rank <= k). NaN scores rank below everything (NaN vs NaN: by row). Scores are
//    the raw logits; every reported score (sigmoid, softmax) is a monotonic function of them.
//  * Metrics, averaged over evaluated users: HR@k = [rank <= k]; NDCG@k = 1/log2(rank + 1)
//    when rank <= k, else 0 (one relevant item, so IDCG = 1); MRR = 1/rank (no cut-off).
//    Coverage@k = distinct rows in the users' top-k lists / (n_items - 1), where a user's
//    top-k list is the full protocol's: every row but the user's other interacted rows, by
//    score, ties by row — in both protocols (it measures what would be served).
//  * Sums run in user order whatever the thread count, so results do not depend on it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model.h"

namespace seqrec {

enum class EvalProtocol { full, sampled };
enum class EvalSplit { last, valid };

// One interaction as the evaluation needs it.
struct EvalInteraction {
  int32_t row = -1;                  // catalog row, or -1 when the model does not know the item
  bool positive = true;              // the rating threshold already applied
  std::optional<int64_t> timestamp;  // none: keeps its place after the previous interaction
};

// One user's interactions, in input (file) order.
struct EvalUser {
  std::string id;
  std::vector<EvalInteraction> interactions;
};

struct EvalOptions {
  EvalProtocol protocol = EvalProtocol::full;
  EvalSplit split = EvalSplit::last;
  std::vector<int64_t> ks = {1, 5, 10, 20};  // each >= 1
  int64_t negatives = 100;                   // sampled: per user
  uint64_t seed = 42;                        // sampled: see sample_negatives
  int threads = 1;                           // worker threads; each GEMM runs on one thread
  int64_t batch_size = 128;                  // users per Model::logits call (capped by memory)
  bool keep_negatives = false;               // sampled: return each user's negatives
  // Called now and then (from one thread at a time) with users done / users to evaluate.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct EvalAtK {
  int64_t k = 0;
  double hr = 0, ndcg = 0, coverage = 0;
};

// One evaluated user's case, for --save-negatives and for references that re-check it.
struct EvalCase {
  size_t user = 0;                 // index into the users given
  int32_t target = 0;              // catalog row
  std::vector<int32_t> negatives;  // sampled protocol (keep_negatives): rows, in draw order
};

struct EvalResult {
  std::vector<EvalAtK> at_k;  // in the order of options.ks
  double mrr = 0;
  uint64_t users = 0;            // users given
  uint64_t users_evaluated = 0;
  uint64_t users_skipped = 0;    // fewer than 3 positives known to the model
  uint64_t users_short_of_negatives = 0;  // sampled: fewer never-interacted rows than asked for
  uint64_t catalog_items = 0;    // n_items - 1 (no padding row)
  double seconds = 0;            // the evaluation proper: splits, forward passes, ranking
  double users_per_second = 0;
  std::vector<EvalCase> cases;   // keep_negatives: one per evaluated user, in user order
};

// Runs the protocol above. Throws seqrec::Error on bad options (a k < 1, negatives < 1,
// threads < 1) or a row outside the catalog.
EvalResult evaluate(const Model& model, std::span<const EvalUser> users, const EvalOptions& options);

// ---- the pieces, public so that they can be tested on their own ----------------------------

// The user's known positive rows, in the order above (prepare_request's, without max_len);
// `times` (if not null) gets their timestamps.
std::vector<int32_t> ordered_positives(const EvalUser& user, std::vector<int64_t>* times = nullptr);

// 0-based rank of `target` among the `candidates` rows (the target, if listed, and duplicates
// are ignored): the number of distinct candidates that beat it (see "Rank" above).
int64_t rank_among(const float* scores, int32_t target, std::span<const int32_t> candidates);

// 0-based rank of `target` among all rows 1..n_rows-1 except the sorted, distinct `excluded`
// rows (which must not contain the target).
int64_t rank_in_catalog(const float* scores, int64_t n_rows, int32_t target, std::span<const int32_t> excluded);

// Metric contributions of one user from its 0-based rank.
inline double hit_at(int64_t rank, int64_t k) { return rank < k ? 1.0 : 0.0; }
double ndcg_at(int64_t rank, int64_t k);  // 1/log2(rank + 2) when rank < k, else 0
inline double reciprocal_rank(int64_t rank) { return 1.0 / static_cast<double>(rank + 1); }

// The sampled protocol's generator. For each user: std::mt19937_64 (fully specified by the
// C++ standard) constructed with the single value splitmix64(seed ^ fnv1a64(user_id)); each
// draw takes the next 64-bit output x, rejects it when x >= 2^64 - (2^64 mod m) (no modulo
// bias) and otherwise yields row 1 + x mod m, with m = n_rows - 1; a row that is in the
// sorted, distinct `interacted` rows or was already drawn is rejected and drawing goes on.
// When fewer than `count` rows are eligible, all eligible rows are returned, ascending.
// Depends only on (seed, user id, n_rows, interacted, count): not on user order or threads.
std::vector<int32_t> sample_negatives(uint64_t seed, std::string_view user_id, int64_t n_rows,
                                      std::span<const int32_t> interacted, int64_t count);

uint64_t splitmix64(uint64_t x);
uint64_t fnv1a64(std::string_view text);

}  // namespace seqrec
