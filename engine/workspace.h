// One worker's scratch memory: a worker keeps one Workspace and reuses it across batches, so
// that the request path allocates only while a batch (or a history) is larger than any before
// it — apart from the answers it hands back. Grouped by the stage that uses each part.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/input_stage.h"
#include "engine/ranker.h"
#include "engine/request.h"
#include "engine/scorer.h"
#include "engine/tensor.h"
#include "kernels/quantized_scan.h"

namespace seqrec {

struct Workspace {
  // prepare (engine/request.cc): each request of the batch, and the route it takes.
  std::vector<PreparedRequest> prepared;
  PrepareScratch prepare;
  enum class Route : uint8_t { error, popular, model };
  std::vector<Route> route;
  std::vector<size_t> model_batch;      // requests that go through the model, in batch order
  std::vector<SequenceInput> sequences;  // their sequences (views into `prepared`)

  // encode (engine/model.cc and its stages): the batch's sequences while it runs, each
  // sequence's plan and rows, and the buffers of the block stack's kind.
  std::span<const SequenceInput> inputs;
  std::vector<int32_t> item_rows;  // per computed row: item table row (0 = padding, n_items = [MASK])
  std::vector<int32_t> positions;  // per computed row: position table row
  std::vector<SequencePlan> plans;
  FloatBuffer x, normed, qkv, context, projected, ffn, scores, hidden;
  FloatBuffer pair_keys, pair_values;  // relative attentions' per-slot keys / per-pair terms
  std::vector<int32_t> relations;      // relative attentions' per-pair table indices
  std::vector<int64_t> row_times;

  // score and select (engine/scorer.cc, engine/ranker.cc): each model request's best rows and
  // raw scores, one flat list with each request's offset; the pre-scan's queries and memory;
  // full logits where a request needs them.
  std::vector<int32_t> top_rows, never_rows, selected;
  std::vector<float> top_scores;
  std::vector<size_t> top_at, top_count, never_at, scan_of;
  std::vector<ScoreReport> reports;  // how each model request's raw scores are reported
  std::vector<kernels::ScanTopK> scans;
  kernels::ScanScratch scan;
  FloatBuffer logits;
  RankScratch rank;

  // Grows `buffer` to at least n floats (never shrinks: the memory stays for the next batch).
  static void grow(FloatBuffer& buffer, int64_t n) {
    if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
  }
};

}  // namespace seqrec
