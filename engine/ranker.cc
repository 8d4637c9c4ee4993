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
  if (!prepared.filtered_out.empty()) {  // both sorted: merge
    const auto middle = static_cast<std::ptrdiff_t>(rows.size());
    rows.insert(rows.end(), prepared.filtered_out.begin(), prepared.filtered_out.end());
    std::inplace_merge(rows.begin() + first, rows.begin() + middle, rows.end());
    rows.erase(std::unique(rows.begin() + first, rows.end()), rows.end());
  }
}

int64_t select_rows(const float* scores, const Catalog& catalog, const Request& request,
                    const PreparedRequest& prepared, RankScratch& scratch, std::vector<int32_t>& rows) {
  const int64_t n = catalog.size();
  const int64_t k = std::max<int64_t>(request.k, 0);
  // skip[row] != 0: never recommended. Set for this request's rows only, and cleared again on
  // the way out (whatever way that is).
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

  rows.resize(static_cast<size_t>(std::min(k, n)));
  if (!prepared.restricted) return kernels::top_k(scores, n, skip.data(), k, rows.data());
  const std::vector<int32_t>& candidates = prepared.candidate_rows;
  return kernels::top_k_of(scores, candidates.data(), static_cast<int64_t>(candidates.size()), skip.data(), k,
                           rows.data());
}

std::vector<std::string> unknown_candidates(const Catalog& catalog, const Request& request) {
  std::vector<std::string> unknown;
  // An id the model does not know has no tags in its catalog: a filter never lets it through.
  if (!request.candidate_ids || request.filter) return unknown;
  // Ids that block an unknown candidate: exclusions, and (unless recommend_seen) interactions.
  std::unordered_set<std::string> blocked(request.exclude_ids.begin(), request.exclude_ids.end());
  if (!request.recommend_seen)
    for (const Interaction& it : request.interactions) blocked.insert(it.item_id);
  std::unordered_set<std::string> listed;
  for (const std::string& id : *request.candidate_ids) {
    if (static_cast<int64_t>(unknown.size()) >= request.k) break;
    if (catalog.row(id) > 0 || blocked.count(id) || !listed.insert(id).second) continue;
    unknown.push_back(id);
  }
  return unknown;
}

}  // namespace seqrec
