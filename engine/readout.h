// The read-out stage: what is applied to each sequence's read-out row after the block stack
// (ReadoutSpec): the final LayerNorm, BERT4Rec's head (dense -> GELU -> LayerNorm), and the
// L2 normalisation (HSTU) — the user state the scorer compares with the items.
#pragma once

#include <cstdint>

#include "engine/model_spec.h"
#include "engine/weights.h"

namespace seqrec {

struct Workspace;

class ReadoutStage {
 public:
  ReadoutStage(const ModelSpec& spec, const WeightMap& weights);
  // state: [batch, d], in place.
  void apply(float* state, int64_t batch, Workspace& ws) const;

 private:
  ModelSpec spec_;
  kernels::NormParams final_norm_, head_norm_;
  kernels::PackedLinear head_dense_;  // GELU fused
};

}  // namespace seqrec
