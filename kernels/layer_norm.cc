#include "kernels/layer_norm.h"

#include <cmath>

namespace seqrec::kernels {

void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    float* yr = y + r * ld_y;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(dim);
    double sq = 0.0;
    for (int64_t i = 0; i < dim; ++i) {
      const double c = xr[i] - mean;
      sq += c * c;
    }
    const double var = sq / static_cast<double>(dim);
    const float inv_std = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
    const float m = static_cast<float>(mean);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - m) * inv_std * gamma[i] + beta[i];
  }
}

}  // namespace seqrec::kernels
