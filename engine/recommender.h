// The engine's front door: a model, its catalog and serving defaults. Takes a batch of
// requests, runs every one that needs the model through ONE forward pass, and ranks each
// with its own filters. Scoring: one GEMM over the catalog for the batch or, for a model with
// the int8 pre-scan (large catalogs), one pre-scan for the batch that finds each request's
// exact top-k (Model::exact_top_k).
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/model.h"
#include "engine/ranker.h"
#include "engine/request.h"
#include "engine/workspace.h"

namespace seqrec {

struct Response {
  std::vector<ScoredItem> recommendations;
  std::optional<std::string> message;  // none: nothing needs saying
};

class Recommender {
 public:
  // popularity: one count per catalog row (training interactions), or empty.
  Recommender(const ModelSpec& spec, WeightMap weights, std::vector<std::string> catalog_ids,
              std::vector<uint64_t> popularity, std::optional<double> rating_threshold,
              PreScan pre_scan = PreScan::automatic);

  const Model& model() const { return model_; }
  const Catalog& catalog() const { return catalog_; }
  std::optional<double> rating_threshold() const { return rating_threshold_; }

  // One response per request, in order. `ws` is the calling worker's scratch memory.
  // `popularity` (one count per catalog row, e.g. from the history store) replaces the
  // model file's counts for cold start when given and of the right size; the caller passes
  // null rather than counts that are all zero (checked once where they are built, not per batch).
  std::vector<Response> recommend(std::span<const Request> requests, Workspace& ws,
                                  const std::vector<uint64_t>* popularity = nullptr) const;

 private:
  // The ranked items of one request from its full logits [n_items].
  std::vector<ScoredItem> rank_logits(const Request& request, const PreparedRequest& prepared,
                                      const float* logits, RankScratch& scratch) const;
  // Answers the model batch's requests (rows of `hidden`) of a model with the pre-scan.
  void answer_with_pre_scan(std::span<const Request> requests, const std::vector<PreparedRequest>& prepared,
                            const std::vector<bool>& cold, const std::vector<size_t>& model_batch,
                            const float* hidden, Workspace& ws, std::vector<Response>& out) const;
  Response answer(const Request& request, const PreparedRequest& prepared, bool empty_history,
                  std::vector<ScoredItem> ranked) const;
  Response popular(const Request& request, const PreparedRequest& prepared,
                   const std::vector<uint64_t>& popularity) const;

  Model model_;
  Catalog catalog_;
  std::vector<uint64_t> popularity_;
  std::optional<double> rating_threshold_;
};

}  // namespace seqrec
