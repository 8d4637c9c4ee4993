#include "engine/ranker.h"

#include <algorithm>
#include <unordered_set>

#include "kernels/topk.h"

namespace seqrec {

void append_never_recommended_rows(const Catalog& catalog, const Request& request, const PreparedRequest& prepared,
                                   std::vector<int32_t>& rows) {
  const auto first = static_cast<std::ptrdiff_t>(rows.size());
  rows.push_back(0);  // padding
  for (const std::string& id : request.exclude_ids)
    if (int32_t r = catalog.row(id); r > 0) rows.push_back(r);
  if (!request.recommend_seen) rows.insert(rows.end(), prepared.seen_rows.begin(), prepared.seen_rows.end());
  std::sort(rows.begin() + first, rows.end());
  rows.erase(std::unique(rows.begin() + first, rows.end()), rows.end());
}

std::vector<ScoredItem> rank_items(const float* scores, const std::function<float(float)>& report,
                                   const Catalog& catalog, const Request& request, const PreparedRequest& prepared) {
  RankScratch scratch;
  return rank_items(scores, report, catalog, request, prepared, scratch);
}

std::vector<ScoredItem> rank_items(const float* scores, const std::function<float(float)>& report,
                                   const Catalog& catalog, const Request& request, const PreparedRequest& prepared,
                                   RankScratch& scratch) {
  const int64_t n = catalog.size();
  const int64_t k = std::max<int64_t>(request.k, 0);
  // skip[row] != 0: never recommended. Set for this request's rows only, and cleared again
  // on the way out (whatever way that is).
  std::vector<uint8_t>& skip = scratch.skip;
  if (static_cast<int64_t>(skip.size()) < n) skip.assign(static_cast<size_t>(n), 0);
  std::vector<int32_t>& never = scratch.never;
  never.clear();
  append_never_recommended_rows(catalog, request, prepared, never);
  struct Unskip {
    std::vector<uint8_t>& skip;
    const std::vector<int32_t>& rows;
    ~Unskip() {
      for (int32_t r : rows) skip[static_cast<size_t>(r)] = 0;
    }
  } unskip{skip, never};
  for (int32_t r : never) skip[static_cast<size_t>(r)] = 1;

  std::vector<int32_t>& best = scratch.best;
  best.resize(static_cast<size_t>(std::min(k, n)));
  std::vector<ScoredItem> unknown;  // candidates the model does not know: score 0, in request order
  int64_t found = 0;
  if (!request.candidate_ids) {
    found = kernels::top_k(scores, n, skip.data(), k, best.data());
  } else {
    // Ids that block an unknown candidate: exclusions, and (unless recommend_seen) interactions.
    std::unordered_set<std::string> blocked_ids(request.exclude_ids.begin(), request.exclude_ids.end());
    if (!request.recommend_seen)
      for (const Interaction& it : request.interactions) blocked_ids.insert(it.item_id);
    std::vector<int32_t> rows;
    std::unordered_set<std::string> listed;
    for (const std::string& id : *request.candidate_ids) {
      if (!listed.insert(id).second) continue;  // a candidate listed twice counts once
      const int32_t r = catalog.row(id);
      if (r > 0)
        rows.push_back(r);
      else if (!blocked_ids.count(id) && static_cast<int64_t>(unknown.size()) < k)
        unknown.push_back({id, -1, 0.0f});
    }
    found = kernels::top_k_of(scores, rows.data(), static_cast<int64_t>(rows.size()), skip.data(), k, best.data());
  }

  std::vector<ScoredItem> out;
  out.reserve(static_cast<size_t>(found) + unknown.size());
  for (int64_t i = 0; i < found; ++i) out.push_back({catalog.id(best[i]), best[i], report(scores[best[i]])});
  if (unknown.empty()) return out;
  // Known items keep their order; an unknown candidate (score 0) goes after every known
  // item scoring >= 0 and before those below.
  std::vector<ScoredItem> merged;
  merged.reserve(out.size() + unknown.size());
  size_t u = 0;
  for (ScoredItem& item : out) {
    while (u < unknown.size() && item.score < 0.0f) merged.push_back(std::move(unknown[u++]));
    merged.push_back(std::move(item));
  }
  while (u < unknown.size()) merged.push_back(std::move(unknown[u++]));
  if (static_cast<int64_t>(merged.size()) > k) merged.resize(static_cast<size_t>(k));
  return merged;
}

}  // namespace seqrec
