// The engine's front door: a model, its catalog and serving defaults. A batch of requests
// takes one road, each stage in one place:
//
//   prepare  (request.cc)  interactions → the input sequence, seen rows, unknown ids, errors
//   encode   (model.cc)    every request that needs the model, in ONE forward pass
//   score    (scorer.cc)   the int8 pre-scan for the batch (large catalogs), exact scores of
//                          candidate lists, or one scoring product for the batch
//   select   (ranker.cc)   each request's top-k with its own filters
//   answer   (answer.cc)   ids, reported scores, the message
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
              PreScan pre_scan = PreScan::automatic);

  const Model& model() const { return model_; }
  const Catalog& catalog() const { return catalog_; }
  std::optional<double> rating_threshold() const { return rules_.rating_threshold; }

  // One response per request, in order. `ws` is the calling worker's scratch memory.
  // `popularity` (one count per catalog row, e.g. from the history store) replaces the
  // model file's counts for cold start when given and of the right size; the caller passes
  // null rather than counts that are all zero (checked once where they are built, not per batch).
  std::vector<Response> recommend(std::span<const Request> requests, Workspace& ws,
                                  const std::vector<uint64_t>* popularity = nullptr) const;

 private:
  // score + select for the model batch: each request's best rows and raw scores into
  // ws.top_rows / ws.top_scores (top_count[b] of them from top_at[b]), and ws.reports[b].
  void score_and_select(std::span<const Request> requests, const float* hidden, Workspace& ws) const;

  Model model_;
  Catalog catalog_;
  std::vector<uint64_t> popularity_;
  PrepareRules rules_;
};

}  // namespace seqrec
