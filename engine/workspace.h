// One worker's scratch memory: a worker keeps one Workspace and reuses it across batches,
// so that the request path allocates only while a batch (or a history) is larger than any
// before it — apart from the answers it hands back.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/encoder.h"
#include "engine/ranker.h"
#include "engine/request.h"
#include "kernels/quantized_scan.h"

namespace seqrec {

struct Workspace {
  // The encoder's (engine/encoder.cc).
  std::vector<int32_t> item_rows;  // per computed row: item table row (0 = padding, n_items = [MASK])
  std::vector<int32_t> positions;  // per computed row: position table row
  std::vector<SequencePlan> plans;
  FloatBuffer x, normed, qkv, context, projected, ffn, scores, hidden, logits;
  // The recommender's (engine/recommender.cc): each request prepared; which are cold; which
  // go through the model, and their sequences.
  std::vector<PreparedRequest> prepared;
  PrepareScratch prepare;
  std::vector<bool> cold;
  std::vector<size_t> model_batch;
  std::vector<std::vector<int32_t>> sequences;
  RankScratch rank;  // ranking a request's full logits (engine/ranker.cc)
  // The pre-scan's: every request's never-rows and top-k rows and scores, one flat list
  // each, with each request's offsets; its queries; its own memory.
  std::vector<int32_t> never_rows, top_rows;
  std::vector<float> top_scores;
  std::vector<size_t> never_at, top_at, scan_of;
  std::vector<kernels::ScanTopK> scans;
  kernels::ScanScratch scan;
};

}  // namespace seqrec
