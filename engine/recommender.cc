#include "engine/recommender.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"

namespace seqrec {

namespace {

std::string join_ids(const std::vector<std::string>& ids, size_t max_listed) {
  std::string out;
  for (size_t i = 0; i < ids.size() && i < max_listed; ++i) out += (i ? ", " : "") + ids[i];
  if (ids.size() > max_listed) out += ", ...";
  return out;
}

void append_sentence(std::optional<std::string>& message, const std::string& sentence) {
  message = message ? *message + " " + sentence : sentence;
}

// Sentences that are true whatever path answered the request.
void add_notes(Response& response, const Request& request, const PreparedRequest& prepared) {
  if (!prepared.unknown_ids.empty())
    append_sentence(response.message, "Skipped " + std::to_string(prepared.unknown_ids.size()) +
                                          " item id(s) unknown to the model: " + join_ids(prepared.unknown_ids, 10) +
                                          ".");
  if (static_cast<int64_t>(response.recommendations.size()) < request.k)
    append_sentence(response.message, "Only " + std::to_string(response.recommendations.size()) +
                                          " item(s) could be recommended (k = " + std::to_string(request.k) + ").");
}

float identity(float x) { return x; }
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Batches with at most this many requests ranking the whole catalog score each of them with
// the int8 pre-scan (each reads the int8 table); larger ones run one GEMM over the fp32 table,
// read once for the whole batch. catalog1m, one thread, ms per request (encoder included):
// pre-scan 1.75 at any batch; GEMM 9.2 at batch 1, 4.5 at 8, 3.0 at 16, 1.86 at 32, 1.24 at 64.
constexpr size_t kMaxPreScanBatch = 32;

}  // namespace

Recommender::Recommender(const ModelSpec& spec, WeightMap weights, std::vector<std::string> catalog_ids,
                         std::vector<uint64_t> popularity, std::optional<double> rating_threshold,
                         PreScan pre_scan)
    : model_(spec, std::move(weights), pre_scan),
      catalog_(std::move(catalog_ids)),
      popularity_(std::move(popularity)),
      rating_threshold_(rating_threshold) {
  if (catalog_.size() != spec.n_items)
    throw Error("catalog: " + std::to_string(catalog_.size()) + " ids, expected n_items = " +
                std::to_string(spec.n_items));
  if (!popularity_.empty() && static_cast<int64_t>(popularity_.size()) != spec.n_items)
    throw Error("popularity: " + std::to_string(popularity_.size()) + " counts, expected n_items = " +
                std::to_string(spec.n_items));
  // Counts that are all zero carry no popularity.
  if (std::all_of(popularity_.begin(), popularity_.end(), [](uint64_t c) { return c == 0; })) popularity_.clear();
}

std::vector<Response> Recommender::recommend(std::span<const Request> requests, Workspace& ws,
                                             const std::vector<uint64_t>* popularity) const {
  const ModelSpec& spec = model_.spec();
  const std::vector<uint64_t>& counts =
      popularity && static_cast<int64_t>(popularity->size()) == spec.n_items ? *popularity : popularity_;
  std::vector<PreparedRequest> prepared;
  prepared.reserve(requests.size());
  for (const Request& r : requests) prepared.push_back(prepare_request(r, catalog_, rating_threshold_, spec.max_len));

  // Cold start (no known positive) is answered by popularity when there is any; everything
  // else goes through the model together, as one batch. The sequences move into the batch:
  // after this only whether one was empty matters.
  std::vector<bool> cold(requests.size());
  std::vector<size_t> model_batch;
  std::vector<std::vector<int32_t>> sequences;
  size_t whole_catalog = 0;  // model requests ranking the whole catalog (no candidate_ids)
  for (size_t i = 0; i < requests.size(); ++i) {
    cold[i] = prepared[i].sequence.empty();
    if (cold[i] && !counts.empty()) continue;
    model_batch.push_back(i);
    sequences.push_back(std::move(prepared[i].sequence));
    if (!requests[i].candidate_ids) ++whole_catalog;
  }
  std::vector<Response> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    if (cold[i] && !counts.empty()) out[i] = popular(requests[i], prepared[i], counts);
  if (model_batch.empty()) return out;

  const float* hidden = model_.hidden(sequences, ws);
  // Exact scores through the pre-scan for every score kind but softmax, whose probability
  // needs every logit for its normalizer: such models keep the full fp32 scan.
  const bool exact = model_.has_pre_scan() && spec.score != ScoreKind::softmax;
  const bool gemm = !exact || whole_catalog > kMaxPreScanBatch;
  const size_t n = static_cast<size_t>(spec.n_items);
  // Without the GEMM, one row of room for candidate scores (and the rare full-logits fallback).
  const size_t logit_count = gemm ? model_batch.size() * n : n;
  if (ws.logits.size() < logit_count) ws.logits.resize(logit_count);
  if (gemm) model_.score(hidden, static_cast<int64_t>(model_batch.size()), ws.logits.data());
  for (size_t b = 0; b < model_batch.size(); ++b) {
    const size_t i = model_batch[b];
    float* logits = ws.logits.data() + (gemm ? b * n : 0);
    std::vector<ScoredItem> ranked =
        exact ? rank_exact(requests[i], prepared[i], hidden + b * static_cast<size_t>(spec.d), gemm ? logits : nullptr,
                           logits)
              : rank_logits(requests[i], prepared[i], logits);
    out[i] = answer(requests[i], prepared[i], cold[i], std::move(ranked));
  }
  return out;
}

std::vector<ScoredItem> Recommender::rank_logits(const Request& request, const PreparedRequest& prepared,
                                                 const float* logits) const {
  const ModelSpec& spec = model_.spec();
  std::function<float(float)> report = identity;
  switch (spec.score) {
    case ScoreKind::raw: break;
    case ScoreKind::sigmoid: report = sigmoid; break;
    case ScoreKind::softmax: {
      // Probability over the whole catalog (every row the model was trained to predict).
      const float max_logit = *std::max_element(logits, logits + spec.n_items);
      double sum = 0.0;
      for (int64_t r = 0; r < spec.n_items; ++r) sum += std::exp(static_cast<double>(logits[r] - max_logit));
      const float log_norm = max_logit + static_cast<float>(std::log(sum));
      report = [log_norm](float x) { return std::exp(x - log_norm); };
      break;
    }
  }
  return rank_items(logits, report, catalog_, request, prepared);
}

std::vector<ScoredItem> Recommender::rank_exact(const Request& request, const PreparedRequest& prepared,
                                                const float* hidden, const float* logits, float* dense) const {
  const std::function<float(float)> report = model_.spec().score == ScoreKind::sigmoid ? sigmoid : identity;
  if (request.candidate_ids) {
    // Only the candidates' scores are read: compute those exactly.
    for (const std::string& id : *request.candidate_ids)
      if (const int32_t r = catalog_.row(id); r > 0) dense[r] = model_.exact_score(hidden, r);
    return rank_items(dense, report, catalog_, request, prepared);
  }
  const std::vector<int32_t> never = never_recommended_rows(catalog_, request, prepared);
  const size_t k = static_cast<size_t>(std::clamp<int64_t>(request.k, 0, catalog_.size()));
  std::vector<int32_t> rows(k);
  std::vector<float> scores(k);
  const int64_t found =
      model_.exact_top_k(hidden, logits, never, static_cast<int64_t>(k), rows.data(), scores.data());
  if (found < 0) {  // a hidden state beyond the bounds (not finite, or huge): rank its full logits
    if (!logits) {
      model_.score(hidden, 1, dense);
      logits = dense;
    }
    return rank_logits(request, prepared, logits);
  }
  std::vector<ScoredItem> out;
  out.reserve(static_cast<size_t>(found));
  for (int64_t j = 0; j < found; ++j) out.push_back({catalog_.id(rows[j]), rows[j], report(scores[j])});
  return out;
}

Response Recommender::answer(const Request& request, const PreparedRequest& prepared, bool empty_history,
                             std::vector<ScoredItem> ranked) const {
  Response response;
  response.recommendations = std::move(ranked);
  if (empty_history)
    append_sentence(response.message,
                    "No known positive interaction: showing the model's scores for an empty history.");
  add_notes(response, request, prepared);
  return response;
}

Response Recommender::popular(const Request& request, const PreparedRequest& prepared,
                              const std::vector<uint64_t>& popularity) const {
  // Score = the item's share of all counted interactions.
  const double total = static_cast<double>(std::accumulate(popularity.begin(), popularity.end(), uint64_t{0}));
  std::vector<float> share(popularity.size());
  for (size_t r = 0; r < popularity.size(); ++r) share[r] = static_cast<float>(popularity[r] / total);
  Response response;
  response.recommendations = rank_items(share.data(), [](float x) { return x; }, catalog_, request, prepared);
  append_sentence(response.message, "No known positive interaction: showing the most popular items.");
  add_notes(response, request, prepared);
  return response;
}

}  // namespace seqrec
