// Item-to-item similarity: prepare (candidates, exclusions, filter) → cosine scan → select →
// answer. The cosine of rows q and r is exact_score(w_q, w_r) · c_r with c_r = 1/||w_q|| ·
// 1/||w_r|| (fp32), and that is what is ranked and reported. For a table with an int8 copy the
// scan bounds every dot product (kernels::scan_bounds, l_r <= exact_score <= u_r); multiplying
// by c_r > 0 is monotonic in fp32, so l_r·c_r <= cosine_r <= u_r·c_r exactly, and only the
// rows whose upper bound reaches the k-th best lower bound are computed in full — the same
// answer as computing every cosine.
#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "engine/recommender.h"
#include "kernels/quantized_scan.h"
#include "kernels/topk.h"

namespace seqrec {

Response Recommender::similar_items(const std::string& item_id, const Request& request, Workspace& ws) const {
  const int32_t item = catalog_.row(item_id);
  if (item <= 0) {
    std::string shown = item_id.size() > 60 ? item_id.substr(0, 57) + "..." : item_id;
    return answer_error(RequestError{"item_not_found", "item_id: '" + shown + "' is not in the model's catalog"});
  }
  const Scorer& scorer = model_.scorer();
  const int64_t n = catalog_.size(), d = model_.spec().d;
  if (ws.prepared.empty()) ws.prepared.resize(1);
  PreparedRequest& prepared = ws.prepared[0];
  Request own = request;  // its interactions play no part; the item itself is never returned
  own.interactions.clear();
  own.recommend_seen = true;
  own.exclude_ids.push_back(item_id);
  prepare_request(own, catalog_, rules_, prepared, ws.prepare);
  if (prepared.error) return answer_error(*prepared.error);

  const float* inverse = scorer.inverse_norms();
  const float* query = scorer.row(item);
  const float inverse_query = inverse[item];
  auto cosine = [&](int32_t r) {
    return kernels::exact_score(query, scorer.row(r), d) * (inverse_query * inverse[r]);
  };

  // Rows that may be returned: the candidates, or every row but the never ones.
  std::vector<int32_t>& never = ws.never_rows;
  never.clear();
  append_never_recommended_rows(catalog_, own, prepared, never);
  std::vector<int32_t>& eligible = ws.selected;
  eligible.clear();
  if (prepared.restricted) {
    std::set_difference(prepared.candidate_rows.begin(), prepared.candidate_rows.end(), never.begin(), never.end(),
                        std::back_inserter(eligible));
  } else {
    size_t v = 0;
    for (int32_t r = 0; r < n; ++r) {
      while (v < never.size() && never[v] < r) ++v;
      if (v < never.size() && never[v] == r) continue;
      eligible.push_back(r);
    }
  }
  const int64_t k = std::clamp<int64_t>(request.k, 0, static_cast<int64_t>(eligible.size()));
  Workspace::grow(ws.logits, n);
  float* scores = ws.logits.data();

  // Large tables: bound every cosine with the int8 copy, compute only the rows that can win.
  std::vector<int32_t> rescored;
  kernels::ScanQuery scan_query;
  const bool scanned = !prepared.restricted && scorer.quantized_table() && k > 0 &&
                       static_cast<int64_t>(eligible.size()) > 4 * k &&
                       kernels::quantize_query(query, d, scan_query);
  if (scanned) {
    Workspace::grow(ws.scores, 2 * n);
    float* lower = ws.scores.data();
    float* upper = lower + n;
    kernels::scan_bounds(scorer.quantized_table(), n, d, nullptr, scan_query, lower, upper);
    std::vector<float> lows;
    lows.reserve(eligible.size());
    for (int32_t r : eligible) {
      const float c = inverse_query * inverse[r];
      lower[r] *= c;
      upper[r] *= c;
      lows.push_back(lower[r]);
    }
    // θ: the k-th largest lower bound; a row whose upper bound is below it cannot be in the top-k.
    std::nth_element(lows.begin(), lows.begin() + (k - 1), lows.end(), std::greater<float>());
    const float threshold = lows[static_cast<size_t>(k - 1)];
    for (int32_t r : eligible)
      if (upper[r] >= threshold) rescored.push_back(r);
  } else {
    rescored = eligible;
  }
  for (int32_t r : rescored) scores[r] = cosine(r);

  std::vector<int32_t> rows(static_cast<size_t>(k));
  const int64_t found =
      kernels::top_k_of(scores, rescored.data(), static_cast<int64_t>(rescored.size()), nullptr, k, rows.data());
  rows.resize(static_cast<size_t>(found));
  std::vector<float> raw(rows.size());
  for (size_t j = 0; j < rows.size(); ++j) raw[j] = scores[rows[j]];
  ScorerSpec cosine_report;
  cosine_report.score = ScoreKind::raw;
  return answer(own, prepared, catalog_, AnswerKind::model, rows, raw, ScoreReport(cosine_report));
}

}  // namespace seqrec
