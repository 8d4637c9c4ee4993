// The select stage: a request's best catalog rows from their scores — top-k with the
// request's filters (seen items, candidate restriction, exclusions), ties by catalog order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/request.h"

namespace seqrec {

// The rows a request can never get back, sorted, without duplicates: row 0 (padding), its
// exclusions, the rows it has seen unless recommend_seen, and the rows its filter removes.
// Appended to `rows`.
void append_never_recommended_rows(const Catalog& catalog, const Request& request, const PreparedRequest& prepared,
                                   std::vector<int32_t>& rows);

// select_rows's working memory, kept by a worker (Workspace::rank) so that selecting
// allocates nothing once it has grown.
struct RankScratch {
  std::vector<uint8_t> skip;  // [catalog size], all 0 between calls
  std::vector<int32_t> never;
};

// The request's k best eligible rows of `scores` ([catalog.size()], higher is better; row 0 is
// never returned), best first, ties by lower row: over the whole catalog, or over its
// candidate rows (prepared.restricted: its known candidate_ids, or its filter's few rows). Writes at most request.k rows to `rows`; returns how many.
int64_t select_rows(const float* scores, const Catalog& catalog, const Request& request,
                    const PreparedRequest& prepared, RankScratch& scratch, std::vector<int32_t>& rows);

// The request's candidate ids the model does not know, which are answered with score 0, in
// request order, once each, except those it excludes or has interacted with (unless
// recommend_seen); at most k.
std::vector<std::string> unknown_candidates(const Catalog& catalog, const Request& request);

}  // namespace seqrec
