#include "kernels/layer_norm.h"

#include <cmath>

#include "kernels/simd_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

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

#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
// A row of up to 16·BLOCKS floats held in registers: one read and one write per row (y may
// alias x: the row is read whole before it is written).
template <int BLOCKS>
void layer_norm_rows(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                     float eps, float* y, int64_t ld_y) {
  __mmask16 mask[BLOCKS];
  __m512 g[BLOCKS], b[BLOCKS];
#pragma GCC unroll 8
  for (int k = 0; k < BLOCKS; ++k) {
    const int64_t left = dim - 16 * k;
    mask[k] = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    g[k] = gamma ? _mm512_maskz_loadu_ps(mask[k], gamma + 16 * k) : _mm512_set1_ps(1.0f);
    b[k] = beta ? _mm512_maskz_loadu_ps(mask[k], beta + 16 * k) : _mm512_setzero_ps();
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    float* yr = y + r * ld_y;
    __m512 v[BLOCKS];
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int k = 0; k < BLOCKS; ++k) {
      v[k] = _mm512_maskz_loadu_ps(mask[k], xr + 16 * k);
      sum = _mm512_add_ps(sum, v[k]);
    }
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / static_cast<float>(dim));
    __m512 sq = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int k = 0; k < BLOCKS; ++k) {
      v[k] = _mm512_maskz_sub_ps(mask[k], v[k], mean);  // masked: lanes past dim stay 0
      sq = _mm512_fmadd_ps(v[k], v[k], sq);
    }
    const float var = _mm512_reduce_add_ps(sq) / static_cast<float>(dim);
    const __m512 inv_std = _mm512_set1_ps(1.0f / std::sqrt(var + eps));
#pragma GCC unroll 8
    for (int k = 0; k < BLOCKS; ++k)
      simd::store_first(yr + 16 * k, _mm512_fmadd_ps(_mm512_mul_ps(v[k], inv_std), g[k], b[k]), dim - 16 * k);
  }
}
SEQREC_INTRINSIC_WARNINGS_ON
#endif

}  // namespace

void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y) {
#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
  switch ((dim + 15) / 16) {
    case 1: return layer_norm_rows<1>(x, ld_x, rows, dim, gamma, beta, eps, y, ld_y);
    case 2: return layer_norm_rows<2>(x, ld_x, rows, dim, gamma, beta, eps, y, ld_y);
    case 3: return layer_norm_rows<3>(x, ld_x, rows, dim, gamma, beta, eps, y, ld_y);
    case 4: return layer_norm_rows<4>(x, ld_x, rows, dim, gamma, beta, eps, y, ld_y);
    default: break;  // wider rows: the generic loop
  }
SEQREC_INTRINSIC_WARNINGS_ON
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_x;
    float* yr = y + r * ld_y;
    const float mean = lane_sum(xr, dim, [](float v) { return v; }) / static_cast<float>(dim);
    const float var = lane_sum(xr, dim, [mean](float v) { return (v - mean) * (v - mean); }) / static_cast<float>(dim);
    const float inv_std = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - mean) * inv_std * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
  }
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
