// A loaded model: owns its weights; turns batches of item-row sequences into catalog logits.
#pragma once

#include <span>
#include <vector>

#include "engine/encoder.h"
#include "engine/model_spec.h"

namespace seqrec {

class Model {
 public:
  // Validates the spec and every weight's presence and shape (seqrec::Error otherwise).
  Model(const ModelSpec& spec, WeightMap weights);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }

  // logits: [batch, n_items] raw scores of every catalog row (row 0, the padding row,
  // included; callers never recommend it). One encoder pass and one scoring GEMM for the
  // whole batch. Each sequence holds item rows in [1, n_items), oldest first.
  void logits(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* out) const;

 private:
  ModelSpec spec_;
  WeightMap weights_;  // the encoder points into these
  Encoder encoder_;
  // Tied output layer: logits = hidden · item_tableᵀ (+ per-item bias) over the catalog rows.
  kernels::PackedLinear scoring_;
};

}  // namespace seqrec
