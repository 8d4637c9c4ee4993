#include "engine/readout.h"

#include <algorithm>
#include <cmath>

#include "engine/workspace.h"
#include "kernels/layer_norm.h"

namespace seqrec {

ReadoutStage::ReadoutStage(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
  const int64_t d = spec.d;
  const float eps = spec.blocks.ln_eps;
  if (spec.readout.final_norm) final_norm_ = norm_weights(weights, "encoder/final_norm", d, eps);
  if (spec.readout.head) {
    const LinearWeights dense = linear_weights(weights, "head/dense", d, d);
    head_dense_ = kernels::PackedLinear(dense.weight, dense.bias, d, d, kernels::Epilogue::gelu_erf, true,
                                        kernels::Rows::exact);
    head_norm_ = norm_weights(weights, "head/norm", d, eps);
  }
}

void ReadoutStage::apply(float* state, int64_t batch, Workspace& ws) const {
  const int64_t d = spec_.d;
  if (spec_.readout.final_norm)
    kernels::layer_norm(state, d, batch, d, final_norm_.gamma, final_norm_.beta, final_norm_.eps, state, d);
  if (spec_.readout.head) {
    ws.grow(ws.projected, kernels::padded_rows(batch) * d);
    head_dense_.apply(state, d, batch, ws.projected.data());  // GELU fused
    kernels::layer_norm(ws.projected.data(), d, batch, d, head_norm_.gamma, head_norm_.beta, head_norm_.eps, state, d);
  }
  if (spec_.readout.l2_normalize) {
    // state / max(||state||_2, 1e-6), as torch.nn.functional.normalize.
    for (int64_t b = 0; b < batch; ++b) {
      float* s = state + b * d;
      double squares = 0;
      for (int64_t c = 0; c < d; ++c) squares += static_cast<double>(s[c]) * s[c];
      const float norm = std::max(static_cast<float>(std::sqrt(squares)), 1e-6f);
      for (int64_t c = 0; c < d; ++c) s[c] /= norm;
    }
  }
}

}  // namespace seqrec
