#include "kernels/layer_norm.h"

#include <cmath>

namespace seqrec::kernels {

namespace {

// Σ f(x[i]) with 16 independent partial sums: the compiler keeps them in one vector register
// (strict IEEE order forbids it to reassociate a single running sum).
template <class F>
float lane_sum(const float* x, int64_t n, F f) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += f(x[i + l]);
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += lanes[l];
  for (; i < n; ++i) sum += f(x[i]);
  return sum;
}

}  // namespace

void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    float* yr = y + r * ld_y;
    const float mean = lane_sum(xr, dim, [](float v) { return v; }) / static_cast<float>(dim);
    const float var = lane_sum(xr, dim, [mean](float v) { return (v - mean) * (v - mean); }) / static_cast<float>(dim);
    const float inv_std = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - mean) * inv_std * gamma[i] + beta[i];
  }
}

}  // namespace seqrec::kernels
