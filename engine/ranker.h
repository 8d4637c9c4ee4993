// Top-k with the request's filters: seen items, candidate restriction (unknown candidates
// score 0), exclusions; ties by catalog order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/request.h"

namespace seqrec {

struct ScoredItem {
  std::string id;
  int32_t row = -1;  // -1: a candidate id the model does not know (score 0)
  float score = 0.0f;
};

// The rows a request can never get back, sorted, without duplicates: row 0 (padding), its
// exclusions, and the rows it has seen unless recommend_seen. Appended to `rows`.
void append_never_recommended_rows(const Catalog& catalog, const Request& request, const PreparedRequest& prepared,
                                   std::vector<int32_t>& rows);

// Ranks one request over `scores` ([catalog.size()], higher is better; row 0 is never
// returned). `report` maps a raw score to the reported one (monotonic non-decreasing);
// candidates unknown to the catalog are reported with score 0 and ranked by it.
// Returns at most request.k items.
std::vector<ScoredItem> rank_items(const float* scores, const std::function<float(float)>& report,
                                   const Catalog& catalog, const Request& request, const PreparedRequest& prepared);

// rank_items's working memory, kept by a worker (Workspace::rank) so that ranking a request
// allocates only its answer.
struct RankScratch {
  std::vector<uint8_t> skip;  // [catalog size], all 0 between calls
  std::vector<int32_t> never, best;
};
std::vector<ScoredItem> rank_items(const float* scores, const std::function<float(float)>& report,
                                   const Catalog& catalog, const Request& request, const PreparedRequest& prepared,
                                   RankScratch& scratch);

}  // namespace seqrec
