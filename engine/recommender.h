// The engine's front door: a model, its catalog and serving defaults. A batch of requests
// takes one road, each stage in one place:
//
//   prepare  (request.cc)  interactions → the input sequence, seen rows, unknown ids, errors
//   encode   (model.cc)    every request that needs the model, in ONE forward pass
//   score    (scorer.cc)   the int8 pre-scan for the batch (large catalogs), exact scores of
//                          candidate lists, or one scoring product for the batch
//   select   (ranker.cc)   each request's top-k with its own filters
//   answer   (answer.cc)   ids, reported scores, the message
//
// Item-to-item similarity (similar_items.cc) takes the same prepare / select / answer stages
// around a cosine scan of the item table instead of encode / score.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/answer.h"
#include "engine/catalog.h"
#include "engine/model.h"
#include "engine/request.h"
#include "engine/workspace.h"

namespace seqrec {

class Recommender {
 public:
  // popularity: one count per catalog row (training interactions), or empty.
  Recommender(const ModelSpec& spec, WeightMap weights, std::vector<std::string> catalog_ids,
              std::vector<uint64_t> popularity, std::optional<double> rating_threshold,
              PreScan pre_scan = PreScan::automatic, const StoredScorerTables& stored = {});
  // The same over a catalog already indexed (e.g. the model file's ids in place).
  Recommender(const ModelSpec& spec, WeightMap weights, Catalog catalog, std::vector<uint64_t> popularity,
              std::optional<double> rating_threshold, PreScan pre_scan = PreScan::automatic,
              const StoredScorerTables& stored = {});

  const Model& model() const { return model_; }
  const Catalog& catalog() const { return catalog_; }
  std::optional<double> rating_threshold() const { return rules_.rating_threshold; }

  // One response per request, in order. `ws` is the calling worker's scratch memory.
  // `popularity` (one count per catalog row, e.g. from the history store) replaces the
  // model file's counts for cold start when given and of the right size; the caller passes
  // null rather than counts that are all zero (checked once where they are built, not per batch).
  std::vector<Response> recommend(std::span<const Request> requests, Workspace& ws,
                                  const std::vector<uint64_t>* popularity = nullptr) const;

  // The k items most similar to one item: the cosine of the model's item representations (the
  // rows it scores with), the item itself excluded, with the request's candidate_ids,
  // exclude_ids and filter (its interactions, recommend_seen and now are not used). Exact:
  // the int8 copy of a large table bounds every cosine and only rows that can make the top-k
  // are computed in full (engine/similar_items.cc). An unknown item is the error
  // "item_not_found".
  Response similar_items(const std::string& item_id, const Request& request, Workspace& ws) const;

  // Item tags for request filters (set before the recommender is shared; null: no metadata).
  void set_item_tags(std::shared_ptr<const ItemTags> tags);
  const ItemTags* item_tags() const { return tags_.get(); }

 private:
  // score + select for the model batch: each request's best rows and raw scores into
  // ws.top_rows / ws.top_scores (top_count[b] of them from top_at[b]), and ws.reports[b].
  void score_and_select(std::span<const Request> requests, const float* hidden, Workspace& ws) const;

  Model model_;
  Catalog catalog_;
  std::vector<uint64_t> popularity_;
  PrepareRules rules_;
  std::shared_ptr<const ItemTags> tags_;
};

}  // namespace seqrec
