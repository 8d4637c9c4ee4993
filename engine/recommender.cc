#include "engine/recommender.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "kernels/quantized_scan.h"

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
  std::vector<PreparedRequest>& prepared = ws.prepared;
  if (prepared.size() < requests.size()) prepared.resize(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    prepare_request(requests[i], catalog_, rating_threshold_, spec.max_len, prepared[i], ws.prepare);

  // Cold start (no known positive) is answered by popularity when there is any; everything
  // else goes through the model together, as one batch (its sequences copied into the
  // workspace's, whose memory stays for the next batch).
  std::vector<bool>& cold = ws.cold;
  std::vector<size_t>& model_batch = ws.model_batch;
  cold.assign(requests.size(), false);
  model_batch.clear();
  for (size_t i = 0; i < requests.size(); ++i) {
    cold[i] = prepared[i].sequence.empty();
    if (cold[i] && !counts.empty()) continue;
    model_batch.push_back(i);
    if (ws.sequences.size() < model_batch.size()) ws.sequences.resize(model_batch.size());
    ws.sequences[model_batch.size() - 1].assign(prepared[i].sequence.begin(), prepared[i].sequence.end());
  }
  const std::span<const std::vector<int32_t>> sequences(ws.sequences.data(), model_batch.size());
  std::vector<Response> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    if (cold[i] && !counts.empty()) out[i] = popular(requests[i], prepared[i], counts);
  if (model_batch.empty()) return out;

  const float* hidden = model_.hidden(sequences, ws);
  const size_t n = static_cast<size_t>(spec.n_items);
  // The pre-scan ranks by exact scores for every score kind but softmax, whose probability
  // needs every logit for its normalizer: such models keep the full fp32 scan.
  if (spec.score != ScoreKind::softmax && model_.has_pre_scan()) {
    answer_with_pre_scan(requests, prepared, cold, model_batch, hidden, ws, out);
    return out;
  }
  // One scoring GEMM for the batch.
  if (ws.logits.size() < model_batch.size() * n) ws.logits.resize(model_batch.size() * n);
  model_.score(hidden, static_cast<int64_t>(model_batch.size()), ws.logits.data());
  for (size_t b = 0; b < model_batch.size(); ++b) {
    const size_t i = model_batch[b];
    out[i] = answer(requests[i], prepared[i], cold[i],
                    rank_logits(requests[i], prepared[i], ws.logits.data() + b * n, ws.rank));
  }
  return out;
}

void Recommender::answer_with_pre_scan(std::span<const Request> requests, const std::vector<PreparedRequest>& prepared,
                                       const std::vector<bool>& cold, const std::vector<size_t>& model_batch,
                                       const float* hidden, Workspace& ws, std::vector<Response>& out) const {
  const ModelSpec& spec = model_.spec();
  const size_t n = static_cast<size_t>(spec.n_items), d = static_cast<size_t>(spec.d);
  // Requests over the whole catalog: one pre-scan for all of them (it reads the int8 table
  // once per batch). Candidate lists: only the candidates are scored, exactly.
  const std::function<float(float)> report = spec.score == ScoreKind::sigmoid ? sigmoid : identity;
  // Flat lists in the workspace: request b's never-rows are never_rows[never_at[b] ..
  // never_at[b + 1]), its top-k rows and scores start at top_at[b].
  ws.never_rows.clear();
  ws.never_at.assign(model_batch.size() + 1, 0);
  ws.top_at.assign(model_batch.size() + 1, 0);
  ws.scan_of.assign(model_batch.size(), SIZE_MAX);
  ws.scans.clear();
  for (size_t b = 0; b < model_batch.size(); ++b) {
    const Request& r = requests[model_batch[b]];
    size_t k = 0;
    if (!r.candidate_ids) {
      append_never_recommended_rows(catalog_, r, prepared[model_batch[b]], ws.never_rows);
      k = static_cast<size_t>(std::clamp<int64_t>(r.k, 0, spec.n_items));
      kernels::ScanTopK scan;
      scan.h = hidden + b * d;
      scan.k = static_cast<int64_t>(k);
      ws.scan_of[b] = ws.scans.size();
      ws.scans.push_back(scan);
    }
    ws.never_at[b + 1] = ws.never_rows.size();
    ws.top_at[b + 1] = ws.top_at[b] + k;
  }
  if (ws.top_rows.size() < ws.top_at.back()) {
    ws.top_rows.resize(ws.top_at.back());
    ws.top_scores.resize(ws.top_at.back());
  }
  for (size_t b = 0; b < model_batch.size(); ++b) {  // the lists are complete: point into them
    if (ws.scan_of[b] == SIZE_MAX) continue;
    kernels::ScanTopK& scan = ws.scans[ws.scan_of[b]];
    scan.never = ws.never_rows.data() + ws.never_at[b];
    scan.n_never = static_cast<int64_t>(ws.never_at[b + 1] - ws.never_at[b]);
    scan.rows = ws.top_rows.data() + ws.top_at[b];
    scan.scores = ws.top_scores.data() + ws.top_at[b];
  }
  model_.exact_top_k(ws.scans.data(), static_cast<int64_t>(ws.scans.size()), ws.scan);
  for (size_t b = 0; b < model_batch.size(); ++b) {
    const size_t i = model_batch[b];
    const float* h = hidden + b * d;
    std::vector<ScoredItem> ranked;
    if (ws.scan_of[b] == SIZE_MAX) {
      if (ws.logits.size() < n) ws.logits.resize(n);
      for (const std::string& id : *requests[i].candidate_ids)
        if (const int32_t r = catalog_.row(id); r > 0) ws.logits[r] = model_.exact_score(h, r);
      ranked = rank_items(ws.logits.data(), report, catalog_, requests[i], prepared[i], ws.rank);  // reads only candidates
    } else if (const int64_t found = ws.scans[ws.scan_of[b]].found; found < 0) {
      // A hidden state beyond the bounds (not finite, or huge): rank its full logits.
      if (ws.logits.size() < n) ws.logits.resize(n);
      model_.score(h, 1, ws.logits.data());
      ranked = rank_logits(requests[i], prepared[i], ws.logits.data(), ws.rank);
    } else {
      ranked.reserve(static_cast<size_t>(found));
      const int32_t* rows = ws.top_rows.data() + ws.top_at[b];
      const float* scores = ws.top_scores.data() + ws.top_at[b];
      for (int64_t j = 0; j < found; ++j) ranked.push_back({catalog_.id(rows[j]), rows[j], report(scores[j])});
    }
    out[i] = answer(requests[i], prepared[i], cold[i], std::move(ranked));
  }
}

std::vector<ScoredItem> Recommender::rank_logits(const Request& request, const PreparedRequest& prepared,
                                                 const float* logits, RankScratch& scratch) const {
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
  return rank_items(logits, report, catalog_, request, prepared, scratch);
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
