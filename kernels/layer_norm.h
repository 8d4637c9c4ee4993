#pragma once

#include <cstdint>

namespace seqrec::kernels {

// y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta, for r in [0, rows).
//   x: [rows, dim] with row stride ld_x;  y: [rows, dim] with row stride ld_y (may alias x)
//   gamma, beta: [dim]
// Mean and (biased) variance are accumulated in double, so the result is as close to
// PyTorch's as fp32 allows whatever the row length.
void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y);

}  // namespace seqrec::kernels
