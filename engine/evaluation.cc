// Offline leave-one-out evaluation: see evaluation.h for the protocol.
#include "engine/evaluation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

#include "engine/error.h"
#include "engine/request.h"
#include "engine/workspace.h"
#include "kernels/gemm.h"
#include "kernels/topk.h"

namespace seqrec {

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::vector<int32_t> ordered_positives(const EvalUser& user, std::vector<int64_t>* times) {
  // The request rule (engine/request.h), without the max_len cut.
  std::vector<TimedRow> entries;
  entries.reserve(user.interactions.size());
  for (const EvalInteraction& it : user.interactions) entries.push_back({it.timestamp, it.row, it.positive && it.row > 0});
  std::vector<int32_t> rows;
  PrepareScratch scratch;
  rows_in_time_order(entries, rows, times, scratch);
  return rows;
}

namespace {

// Whether row a (score sa) beats row b (score sb): higher score, ties by lower row; NaN lowest.
inline bool beats(float sa, int32_t a, float sb, int32_t b) {
  const bool nan_a = std::isnan(sa), nan_b = std::isnan(sb);
  if (nan_a || nan_b) return nan_a == nan_b ? a < b : nan_b;
  return sa > sb || (sa == sb && a < b);
}

}  // namespace

int64_t rank_among(const float* scores, int32_t target, std::span<const int32_t> candidates) {
  std::vector<int32_t> distinct(candidates.begin(), candidates.end());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  const float st = scores[target];
  int64_t rank = 0;
  for (const int32_t c : distinct)
    if (c != target && beats(scores[c], c, st, target)) ++rank;
  return rank;
}

int64_t rank_in_catalog(const float* scores, int64_t n_rows, int32_t target, std::span<const int32_t> excluded) {
  const float st = scores[target];
  int64_t rank = 0;
  if (std::isnan(st)) {
    // Everything that is not NaN beats it, and NaN rows before it.
    for (int64_t r = 1; r < n_rows; ++r)
      if (r != target && beats(scores[r], static_cast<int32_t>(r), st, target)) ++rank;
  } else {
    // Rows before the target beat it on >= (a tie goes to the lower row), after it on >;
    // a NaN compares false either way.
    for (int64_t r = 1; r < target; ++r) rank += scores[r] >= st;
    for (int64_t r = target + 1; r < n_rows; ++r) rank += scores[r] > st;
  }
  for (const int32_t e : excluded)
    if (e != target && beats(scores[e], e, st, target)) --rank;
  return rank;
}

double ndcg_at(int64_t rank, int64_t k) {
  return rank < k ? 1.0 / std::log2(static_cast<double>(rank) + 2.0) : 0.0;
}

std::vector<int32_t> sample_negatives(uint64_t seed, std::string_view user_id, int64_t n_rows,
                                      std::span<const int32_t> interacted, int64_t count) {
  std::vector<int32_t> out;
  if (n_rows < 2 || count < 1) return out;
  const auto is_interacted = [&](int32_t row) { return std::binary_search(interacted.begin(), interacted.end(), row); };
  const auto inside = std::count_if(interacted.begin(), interacted.end(),
                                    [&](int32_t r) { return r >= 1 && r < n_rows; });
  const int64_t eligible = (n_rows - 1) - static_cast<int64_t>(inside);
  if (eligible <= count) {
    out.reserve(static_cast<size_t>(std::max<int64_t>(eligible, 0)));
    for (int64_t r = 1; r < n_rows; ++r)
      if (!is_interacted(static_cast<int32_t>(r))) out.push_back(static_cast<int32_t>(r));
    return out;
  }
  std::mt19937_64 engine(splitmix64(seed ^ fnv1a64(user_id)));
  const uint64_t m = static_cast<uint64_t>(n_rows - 1);
  const uint64_t rejected_from = std::numeric_limits<uint64_t>::max() - (uint64_t{0} - m) % m;  // accept x <= this
  std::unordered_set<int32_t> drawn;
  drawn.reserve(static_cast<size_t>(count) * 2);
  out.reserve(static_cast<size_t>(count));
  while (static_cast<int64_t>(out.size()) < count) {
    const uint64_t x = engine();
    if (x > rejected_from) continue;
    const auto row = static_cast<int32_t>(1 + x % m);
    if (is_interacted(row) || !drawn.insert(row).second) continue;
    out.push_back(row);
  }
  return out;
}

namespace {

// One user to evaluate: what the workers need.
struct Case {
  size_t user;
  int32_t target;
  std::vector<int32_t> input;       // oldest first, at most max_len
  std::vector<int64_t> input_times;  // their timestamps (models that read time)
  int64_t now = 0;                   // the target's timestamp: when it is recommended
  std::vector<int32_t> interacted;  // sorted, distinct, known rows; includes the target
};

constexpr size_t kMaxLogitsFloatsPerThread = size_t{16} << 20;  // 64 MiB of logits per worker

}  // namespace

EvalResult evaluate(const Model& model, std::span<const EvalUser> users, const EvalOptions& options) {
  const ModelSpec& spec = model.spec();
  const int64_t n_rows = spec.n_items;
  if (options.ks.empty()) throw Error("evaluation: no k given");
  for (const int64_t k : options.ks)
    if (k < 1) throw Error("evaluation: k = " + std::to_string(k) + " (expected >= 1)");
  if (options.protocol == EvalProtocol::sampled && options.negatives < 1)
    throw Error("evaluation: negatives = " + std::to_string(options.negatives) + " (expected >= 1)");
  if (options.threads < 1) throw Error("evaluation: threads = " + std::to_string(options.threads) + " (expected >= 1)");
  const int64_t k_max = std::min<int64_t>(*std::max_element(options.ks.begin(), options.ks.end()), n_rows);

  const auto started = std::chrono::steady_clock::now();
  EvalResult result;
  result.users = users.size();
  result.catalog_items = static_cast<uint64_t>(std::max<int64_t>(n_rows - 1, 0));

  // The splits.
  std::vector<Case> cases;
  const size_t held_out = options.split == EvalSplit::last ? 1 : 2;
  for (size_t u = 0; u < users.size(); ++u) {
    for (const EvalInteraction& it : users[u].interactions)
      if (it.row >= n_rows)
        throw Error("evaluation: user " + users[u].id + ": row " + std::to_string(it.row) + " outside the catalog (" +
                    std::to_string(n_rows) + " rows)");
    std::vector<int64_t> times;
    const std::vector<int32_t> positives = ordered_positives(users[u], &times);
    if (positives.size() < 3) {
      ++result.users_skipped;
      continue;
    }
    if (spec.uses_time())
      for (const EvalInteraction& it : users[u].interactions)
        if (it.positive && it.row > 0 && !it.timestamp)
          throw Error("evaluation: user " + users[u].id + ": an interaction without a timestamp, and this model (" +
                      to_string(spec.blocks.kind) + ") reads the time of every interaction");
    Case c;
    c.user = u;
    const size_t target_at = positives.size() - held_out;
    c.target = positives[target_at];
    // The model reads the whole input history (TiSASRec normalises time over all of it) and keeps
    // its last max_len; `now` is the held-out item's time, as HSTU's own evaluation does.
    c.input.assign(positives.begin(), positives.begin() + static_cast<std::ptrdiff_t>(target_at));
    if (spec.uses_time()) {
      c.input_times.assign(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(target_at));
      c.now = times[target_at];
    }
    for (const EvalInteraction& it : users[u].interactions)
      if (it.row > 0) c.interacted.push_back(it.row);
    std::sort(c.interacted.begin(), c.interacted.end());
    c.interacted.erase(std::unique(c.interacted.begin(), c.interacted.end()), c.interacted.end());
    cases.push_back(std::move(c));
  }
  result.users_evaluated = cases.size();

  // The forward passes and the ranking, batch by batch, on `threads` workers.
  const int64_t batch_size = std::max<int64_t>(
      1, std::min<int64_t>(std::max<int64_t>(options.batch_size, 1),
                           static_cast<int64_t>(kMaxLogitsFloatsPerThread / static_cast<size_t>(std::max<int64_t>(n_rows, 1)))));
  const size_t n_batches = (cases.size() + static_cast<size_t>(batch_size) - 1) / static_cast<size_t>(batch_size);
  const bool sampled = options.protocol == EvalProtocol::sampled;
  std::vector<int64_t> ranks(cases.size(), 0);
  std::vector<uint8_t> short_of_negatives(cases.size(), 0);
  std::vector<std::vector<int32_t>> kept_negatives(options.keep_negatives && sampled ? cases.size() : 0);
  // best_position[row]: the best (lowest) 0-based position the row reached in any top-k list.
  const int threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(options.threads), std::max<size_t>(n_batches, 1)));
  std::vector<std::vector<int32_t>> best_position(static_cast<size_t>(threads));
  std::atomic<size_t> next_batch{0};
  std::atomic<uint64_t> users_done{0};
  std::mutex progress_mutex;
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::atomic<bool> failed{false};

  const auto work = [&](int worker) {
    try {
      std::vector<int32_t>& best = best_position[static_cast<size_t>(worker)];
      best.assign(static_cast<size_t>(n_rows), std::numeric_limits<int32_t>::max());
      Workspace ws;
      FloatBuffer logits(static_cast<size_t>(batch_size * n_rows));
      std::vector<uint8_t> skip(static_cast<size_t>(n_rows), 0);
      std::vector<int32_t> top(static_cast<size_t>(std::max<int64_t>(k_max, 1)));
      std::vector<int32_t> excluded;
      std::vector<SequenceInput> inputs;
      for (;;) {
        if (failed.load()) return;
        const size_t batch = next_batch.fetch_add(1);
        if (batch >= n_batches) return;
        const size_t begin = batch * static_cast<size_t>(batch_size);
        const size_t end = std::min(cases.size(), begin + static_cast<size_t>(batch_size));
        inputs.clear();
        for (size_t i = begin; i < end; ++i) inputs.push_back(SequenceInput{cases[i].input, cases[i].input_times, cases[i].now});
        model.logits(inputs, ws, logits.data());
        for (size_t i = begin; i < end; ++i) {
          const Case& c = cases[i];
          const float* scores = logits.data() + (i - begin) * static_cast<size_t>(n_rows);
          excluded.clear();
          for (const int32_t r : c.interacted)
            if (r != c.target) excluded.push_back(r);
          if (sampled) {
            std::vector<int32_t> negatives =
                sample_negatives(options.seed, users[c.user].id, n_rows, c.interacted, options.negatives);
            short_of_negatives[i] = static_cast<int64_t>(negatives.size()) < options.negatives;
            ranks[i] = rank_among(scores, c.target, negatives);
            if (options.keep_negatives) kept_negatives[i] = std::move(negatives);
          } else {
            ranks[i] = rank_in_catalog(scores, n_rows, c.target, excluded);
          }
          // The user's top-k list (the full protocol's candidates) for coverage.
          skip[0] = 1;
          for (const int32_t r : excluded) skip[static_cast<size_t>(r)] = 1;
          const int64_t found = kernels::top_k(scores, n_rows, skip.data(), k_max, top.data());
          for (const int32_t r : excluded) skip[static_cast<size_t>(r)] = 0;
          for (int64_t p = 0; p < found; ++p)
            best[static_cast<size_t>(top[p])] = std::min(best[static_cast<size_t>(top[p])], static_cast<int32_t>(p));
        }
        const uint64_t done = users_done.fetch_add(end - begin) + (end - begin);
        if (options.progress) {
          std::lock_guard lock(progress_mutex);
          options.progress(done, cases.size());
        }
      }
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      failed.store(true);
    }
  };

  // The workers are the parallelism: each GEMM runs on its caller's thread only.
  kernels::set_gemm_threads(1);
  if (threads <= 1) {
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(work, t);
    for (std::thread& t : pool) t.join();
  }
  if (failure) std::rethrow_exception(failure);

  // Sums in user order: the same result for any thread count.
  result.at_k.resize(options.ks.size());
  double mrr = 0;
  std::vector<double> hr(options.ks.size(), 0.0), ndcg(options.ks.size(), 0.0);
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t j = 0; j < options.ks.size(); ++j) {
      hr[j] += hit_at(ranks[i], options.ks[j]);
      ndcg[j] += ndcg_at(ranks[i], options.ks[j]);
    }
    mrr += reciprocal_rank(ranks[i]);
    result.users_short_of_negatives += short_of_negatives[i];
  }
  const double n_eval = static_cast<double>(cases.size());
  for (size_t j = 0; j < options.ks.size(); ++j) {
    EvalAtK& m = result.at_k[j];
    m.k = options.ks[j];
    m.hr = cases.empty() ? 0.0 : hr[j] / n_eval;
    m.ndcg = cases.empty() ? 0.0 : ndcg[j] / n_eval;
    uint64_t covered = 0;
    for (int64_t r = 1; r < n_rows; ++r) {
      int32_t position = std::numeric_limits<int32_t>::max();
      for (const auto& best : best_position)
        if (!best.empty()) position = std::min(position, best[static_cast<size_t>(r)]);
      covered += position < m.k;
    }
    m.coverage = result.catalog_items ? static_cast<double>(covered) / static_cast<double>(result.catalog_items) : 0.0;
  }
  result.mrr = cases.empty() ? 0.0 : mrr / n_eval;
  if (options.keep_negatives) {
    result.cases.reserve(cases.size());
    for (size_t i = 0; i < cases.size(); ++i)
      result.cases.push_back({cases[i].user, cases[i].target, sampled ? std::move(kept_negatives[i]) : std::vector<int32_t>{}});
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.users_per_second = result.seconds > 0 ? n_eval / result.seconds : 0.0;
  return result;
}

}  // namespace seqrec
