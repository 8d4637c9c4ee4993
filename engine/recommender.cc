#include "engine/recommender.h"

#include <algorithm>
#include <numeric>

#include "engine/error.h"

namespace seqrec {

Recommender::Recommender(const ModelSpec& spec, WeightMap weights, std::vector<std::string> catalog_ids,
                         std::vector<uint64_t> popularity, std::optional<double> rating_threshold, PreScan pre_scan,
                         const StoredScorerTables& stored)
    : Recommender(spec, std::move(weights), Catalog(catalog_ids), std::move(popularity), rating_threshold, pre_scan,
                  stored) {}

Recommender::Recommender(const ModelSpec& spec, WeightMap weights, Catalog catalog, std::vector<uint64_t> popularity,
                         std::optional<double> rating_threshold, PreScan pre_scan, const StoredScorerTables& stored)
    : model_(spec, std::move(weights), pre_scan, stored),
      catalog_(std::move(catalog)),
      popularity_(std::move(popularity)),
      rules_(prepare_rules(spec, rating_threshold)) {
  if (catalog_.size() != spec.n_items)
    throw Error("catalog: " + std::to_string(catalog_.size()) + " ids, expected n_items = " +
                std::to_string(spec.n_items));
  if (!popularity_.empty() && static_cast<int64_t>(popularity_.size()) != spec.n_items)
    throw Error("popularity: " + std::to_string(popularity_.size()) + " counts, expected n_items = " +
                std::to_string(spec.n_items));
  // Counts that are all zero carry no popularity.
  if (std::all_of(popularity_.begin(), popularity_.end(), [](uint64_t c) { return c == 0; })) popularity_.clear();
}

void Recommender::set_item_tags(std::shared_ptr<const ItemTags> tags) {
  if (tags && tags->n_rows() != catalog_.size())
    throw Error("item tags: built for " + std::to_string(tags->n_rows()) + " rows, catalog has " +
                std::to_string(catalog_.size()));
  tags_ = std::move(tags);
  rules_.tags = tags_.get();
}

std::vector<Response> Recommender::recommend(std::span<const Request> requests, Workspace& ws,
                                             const std::vector<uint64_t>* popularity) const {
  const ModelSpec& spec = model_.spec();
  const std::vector<uint64_t>& counts =
      popularity && static_cast<int64_t>(popularity->size()) == spec.n_items ? *popularity : popularity_;
  const size_t n_requests = requests.size();

  // prepare: each request's sequence; its route (an error, popularity for cold start when
  // there is any, or the model).
  if (ws.prepared.size() < n_requests) ws.prepared.resize(n_requests);
  ws.route.assign(n_requests, Workspace::Route::model);
  ws.model_batch.clear();
  ws.sequences.clear();
  for (size_t i = 0; i < n_requests; ++i) {
    PreparedRequest& p = ws.prepared[i];
    prepare_request(requests[i], catalog_, rules_, p, ws.prepare);
    if (p.error) {
      ws.route[i] = Workspace::Route::error;
    } else if (p.sequence.empty() && !counts.empty()) {
      ws.route[i] = Workspace::Route::popular;
    } else {
      ws.model_batch.push_back(i);
      ws.sequences.push_back(SequenceInput{p.sequence, p.times, p.now});
    }
  }

  // encode: every request that needs the model, in one pass; then score and select.
  if (!ws.model_batch.empty()) {
    const float* hidden = model_.encode(ws.sequences, ws);
    score_and_select(requests, hidden, ws);
  }

  // answer.
  std::vector<Response> out(n_requests);
  for (size_t b = 0; b < ws.model_batch.size(); ++b) {
    const size_t i = ws.model_batch[b];
    const std::span<const int32_t> rows(ws.top_rows.data() + ws.top_at[b], ws.top_count[b]);
    const std::span<const float> raw(ws.top_scores.data() + ws.top_at[b], ws.top_count[b]);
    const AnswerKind kind = ws.prepared[i].sequence.empty() ? AnswerKind::empty_history : AnswerKind::model;
    out[i] = answer(requests[i], ws.prepared[i], catalog_, kind, rows, raw, ws.reports[b]);
  }
  for (size_t i = 0; i < n_requests; ++i) {
    if (ws.route[i] == Workspace::Route::error) out[i] = answer_error(*ws.prepared[i].error);
    if (ws.route[i] != Workspace::Route::popular) continue;
    // Score = the item's share of all counted interactions.
    const double total = static_cast<double>(std::accumulate(counts.begin(), counts.end(), uint64_t{0}));
    std::vector<float> share(counts.size());
    for (size_t r = 0; r < counts.size(); ++r) share[r] = static_cast<float>(counts[r] / total);
    std::vector<int32_t> rows;
    const int64_t found = select_rows(share.data(), catalog_, requests[i], ws.prepared[i], ws.rank, rows);
    std::vector<float> raw(static_cast<size_t>(found));
    for (int64_t j = 0; j < found; ++j) raw[j] = share[rows[j]];
    ScorerSpec identity;
    identity.score = ScoreKind::raw;
    out[i] = answer(requests[i], ws.prepared[i], catalog_, AnswerKind::popularity,
                    std::span<const int32_t>(rows.data(), static_cast<size_t>(found)), raw, ScoreReport(identity));
  }
  return out;
}

void Recommender::score_and_select(std::span<const Request> requests, const float* hidden, Workspace& ws) const {
  const ModelSpec& spec = model_.spec();
  const Scorer& scorer = model_.scorer();
  const int64_t n = spec.n_items, d = spec.d;
  const size_t batch = ws.model_batch.size();
  std::vector<ScoreReport>& reports = ws.reports;
  reports.assign(batch, ScoreReport(spec.scorer));
  // Each request's k best land at top_at[b] (top_count[b] of them).
  ws.top_at.assign(batch + 1, 0);
  ws.top_count.assign(batch, 0);
  for (size_t b = 0; b < batch; ++b)
    ws.top_at[b + 1] = ws.top_at[b] + static_cast<size_t>(std::clamp<int64_t>(requests[ws.model_batch[b]].k, 0, n));
  if (ws.top_rows.size() < ws.top_at.back()) {
    ws.top_rows.resize(ws.top_at.back());
    ws.top_scores.resize(ws.top_at.back());
  }
  // select over a request's full scores [n] (only its candidates are read when it has some).
  auto select_from = [&](size_t b, const float* scores) {
    const size_t i = ws.model_batch[b];
    const int64_t found = select_rows(scores, catalog_, requests[i], ws.prepared[i], ws.rank, ws.selected);
    for (int64_t j = 0; j < found; ++j) {
      ws.top_rows[ws.top_at[b] + j] = ws.selected[j];
      ws.top_scores[ws.top_at[b] + j] = scores[ws.selected[j]];
    }
    ws.top_count[b] = static_cast<size_t>(found);
  };

  // The pre-scan ranks by exact scores for every score kind but softmax, whose probability
  // needs every logit for its normaliser: such models keep the full product.
  if (spec.scorer.score == ScoreKind::softmax || !scorer.has_pre_scan()) {
    Workspace::grow(ws.logits, static_cast<int64_t>(batch) * n);
    scorer.logits(hidden, static_cast<int64_t>(batch), ws.logits.data());  // one product for the batch
    for (size_t b = 0; b < batch; ++b) {
      const float* logits = ws.logits.data() + b * n;
      reports[b].set_logits(logits, n);
      select_from(b, logits);
    }
    return;
  }

  // Requests over the whole catalog: one pre-scan for all of them (it reads the int8 table
  // once per batch). A request's never-rows are never_rows[never_at[b] .. never_at[b + 1]).
  ws.never_rows.clear();
  ws.never_at.assign(batch + 1, 0);
  ws.scan_of.assign(batch, SIZE_MAX);
  ws.scans.clear();
  for (size_t b = 0; b < batch; ++b) {
    const Request& r = requests[ws.model_batch[b]];
    if (!ws.prepared[ws.model_batch[b]].restricted) {
      append_never_recommended_rows(catalog_, r, ws.prepared[ws.model_batch[b]], ws.never_rows);
      kernels::ScanTopK scan;
      scan.h = hidden + b * d;
      scan.k = static_cast<int64_t>(ws.top_at[b + 1] - ws.top_at[b]);
      ws.scan_of[b] = ws.scans.size();
      ws.scans.push_back(scan);
    }
    ws.never_at[b + 1] = ws.never_rows.size();
  }
  for (size_t b = 0; b < batch; ++b) {  // the lists are complete: point into them
    if (ws.scan_of[b] == SIZE_MAX) continue;
    kernels::ScanTopK& scan = ws.scans[ws.scan_of[b]];
    scan.never = ws.never_rows.data() + ws.never_at[b];
    scan.n_never = static_cast<int64_t>(ws.never_at[b + 1] - ws.never_at[b]);
    scan.rows = ws.top_rows.data() + ws.top_at[b];
    scan.scores = ws.top_scores.data() + ws.top_at[b];
  }
  scorer.exact_top_k(ws.scans.data(), static_cast<int64_t>(ws.scans.size()), ws.scan);
  for (size_t b = 0; b < batch; ++b) {
    const float* h = hidden + b * d;
    // A row of n logits only for the requests below that need one: on a 10M-item catalog it
    // is 40 MB a worker would otherwise hold (and fault in) for scans that never read it.
    if (ws.scan_of[b] == SIZE_MAX || ws.scans[ws.scan_of[b]].found < 0) Workspace::grow(ws.logits, n);
    if (ws.scan_of[b] == SIZE_MAX) {
      // Candidate lists: only the candidates are scored, exactly (select reads only them).
      for (const int32_t row : ws.prepared[ws.model_batch[b]].candidate_rows) ws.logits[row] = scorer.exact_score(h, row);
      select_from(b, ws.logits.data());
    } else if (const int64_t found = ws.scans[ws.scan_of[b]].found; found < 0) {
      // A hidden state beyond the bounds (not finite, or huge): rank its full logits.
      scorer.logits(h, 1, ws.logits.data());
      select_from(b, ws.logits.data());
    } else {
      ws.top_count[b] = static_cast<size_t>(found);
    }
  }
}

}  // namespace seqrec
