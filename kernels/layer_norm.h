#pragma once

#include <cstdint>

namespace seqrec::kernels {

// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta, for r in [0, rows).
//   x: [rows, dim] with row stride ld_x;  y: [rows, dim] with row stride ld_y (may alias x)
//   gamma, beta: [dim], or null for none (1 and 0: a LayerNorm without affine parameters)
// Mean, then the (biased) variance from squared deviations, both in fp32 (two passes are
// as stable as Welford for these row lengths, and vectorize).
void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y);

}  // namespace seqrec::kernels
