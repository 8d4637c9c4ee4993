#include "kernels/panel_gemm.h"

#include <algorithm>
#include <cmath>

#include "kernels/multiply_add.h"
#include "kernels/simd_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF

namespace {

inline __m512 activate(Epilogue epilogue, __m512 v) {
  switch (epilogue) {
    case Epilogue::none: return v;
    case Epilogue::relu: return _mm512_max_ps(v, _mm512_setzero_ps());
    case Epilogue::gelu_erf: return simd::gelu_erf16(v);
    case Epilogue::gelu_tanh: return simd::gelu_tanh16(v);
    case Epilogue::swish: return _mm512_mul_ps(v, simd::sigmoid16(v));
    case Epilogue::tanh: return simd::tanh16(v);
    case Epilogue::sigmoid: return simd::sigmoid16(v);
  }
  return v;
}

constexpr int kRows = 4;    // rows per tile
constexpr int kPanels = 4;  // panels per tile: 4 x 4 accumulators, 4 weight loads per input column

// acc[r][p] = Σ_c x[r, c] · W[16(p0 + p) + lane, c] for ROWS rows and PANELS panels from p0:
// the tile's weights (PANELS · in · 16 floats) stay in L1 while the row loop passes over them.
template <int ROWS, int PANELS>
__attribute__((always_inline)) inline void accumulate(const WeightPanels& w, const float* x, int64_t ld_x,
                                                      int64_t p0, __m512 (&acc)[ROWS][PANELS]) {
  const int64_t in = w.in;
  const float* panel = w.panels.data() + p0 * in * kPanelWidth;
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t c = 0; c < in; ++c) {
    __m512 wc[PANELS];
#pragma GCC unroll 16
    for (int p = 0; p < PANELS; ++p) {
      wc[p] = _mm512_loadu_ps(panel + (p * in + c) * kPanelWidth);
      // Keep the weights in a register: GCC otherwise folds the load into every row's FMA,
      // and four times the loads make the tile load-bound (110 vs 200+ GFLOP/s at 64 rows).
      asm("" : "+v"(wc[p]));
    }
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const __m512 xc = _mm512_set1_ps(x[r * ld_x + c]);
#pragma GCC unroll 16
      for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm512_fmadd_ps(xc, wc[p], acc[r][p]);
    }
  }
}

// y[ROWS, 16·PANELS] = epilogue(acc + bias) (+ residual) for rows r0.. and panels p0...
template <int ROWS, int PANELS>
void tile(const WeightPanels& w, const float* x, int64_t ld_x, int64_t p0, Epilogue epilogue, const float* residual,
          float* y) {
  __m512 acc[ROWS][PANELS];
  accumulate<ROWS, PANELS>(w, x, ld_x, p0, acc);
  const int64_t out = w.out;
#pragma GCC unroll 16
  for (int p = 0; p < PANELS; ++p) {
    const int64_t col = (p0 + p) * kPanelWidth;
    const __mmask16 mask = simd::tail_mask(out - col);
    const __m512 bias = _mm512_loadu_ps(w.bias.data() + col);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      __m512 v = activate(epilogue, _mm512_add_ps(acc[r][p], bias));
      if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, residual + r * out + col));
      _mm512_mask_storeu_ps(y + r * out + col, mask, v);
    }
  }
}

template <int ROWS>
void row_tiles(const WeightPanels& w, const float* x, int64_t ld_x, int64_t p0, int64_t panels, Epilogue epilogue,
               const float* residual, float* y) {
  switch (panels) {
    case 1: return tile<ROWS, 1>(w, x, ld_x, p0, epilogue, residual, y);
    case 2: return tile<ROWS, 2>(w, x, ld_x, p0, epilogue, residual, y);
    case 3: return tile<ROWS, 3>(w, x, ld_x, p0, epilogue, residual, y);
    default: return tile<ROWS, 4>(w, x, ld_x, p0, epilogue, residual, y);
  }
}

}  // namespace

void panel_gemm(const WeightPanels& w, const float* x, int64_t ld_x, int64_t rows, Epilogue epilogue, float* y,
                const float* residual) {
  const int64_t n_panels = (w.out + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p0 = 0; p0 < n_panels; p0 += kPanels) {
    const int64_t panels = std::min<int64_t>(kPanels, n_panels - p0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const float* xr = x + r0 * ld_x;
      const float* res = residual ? residual + r0 * w.out : nullptr;
      float* yr = y + r0 * w.out;
      switch (std::min<int64_t>(kRows, rows - r0)) {
        case 1: row_tiles<1>(w, xr, ld_x, p0, panels, epilogue, res, yr); break;
        case 2: row_tiles<2>(w, xr, ld_x, p0, panels, epilogue, res, yr); break;
        case 3: row_tiles<3>(w, xr, ld_x, p0, panels, epilogue, res, yr); break;
        default: row_tiles<4>(w, xr, ld_x, p0, panels, epilogue, res, yr); break;
      }
    }
  }
}

SEQREC_INTRINSIC_WARNINGS_ON
#else

// The other paths: 16 lanes of a panel accumulated per row like the AVX-512 tile's lanes
// (multiply_add in input-column order), which the compiler vectorizes for the path (two
// 8-float FMAs on AVX2, four 4-float products and sums on SSE2); the activations by their
// definitions.
namespace {

float activate(Epilogue epilogue, float v) {
  switch (epilogue) {
    case Epilogue::none: return v;
    case Epilogue::relu: return v > 0.0f ? v : 0.0f;
    case Epilogue::gelu_erf: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Epilogue::gelu_tanh:
      return 0.5f * v * (1.0f + std::tanh(0.79788456080286535588f * (v + 0.044715f * v * v * v)));
    case Epilogue::swish: return v / (1.0f + std::exp(-v));
    case Epilogue::tanh: return std::tanh(v);
    case Epilogue::sigmoid: return 1.0f / (1.0f + std::exp(-v));
  }
  return v;
}

constexpr int kRows = 4;  // rows per tile: their accumulators stay in registers

// y[ROWS, panel p's columns] = epilogue(x · W_pᵀ + bias) (+ residual).
template <int ROWS>
void tile(const WeightPanels& w, const float* x, int64_t ld_x, int64_t p, Epilogue epilogue, const float* residual,
          float* y) {
  float acc[ROWS][kPanelWidth] = {};
  const float* panel = w.panels.data() + p * w.in * kPanelWidth;
  for (int64_t c = 0; c < w.in; ++c) {
    const float* wc = panel + c * kPanelWidth;
#pragma GCC unroll 4
    for (int r = 0; r < ROWS; ++r) {
      const float xc = x[r * ld_x + c];
#pragma GCC unroll 16
      for (int lane = 0; lane < kPanelWidth; ++lane) acc[r][lane] = multiply_add(xc, wc[lane], acc[r][lane]);
    }
  }
  const int64_t col = p * kPanelWidth, cols = std::min<int64_t>(kPanelWidth, w.out - col);
  for (int r = 0; r < ROWS; ++r)
    for (int64_t lane = 0; lane < cols; ++lane) {
      float v = activate(epilogue, acc[r][lane] + w.bias[static_cast<size_t>(col + lane)]);
      if (residual) v += residual[r * w.out + col + lane];
      y[r * w.out + col + lane] = v;
    }
}

}  // namespace

void panel_gemm(const WeightPanels& w, const float* x, int64_t ld_x, int64_t rows, Epilogue epilogue, float* y,
                const float* residual) {
  const int64_t n_panels = (w.out + kPanelWidth - 1) / kPanelWidth;
  for (int64_t p = 0; p < n_panels; ++p)
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const float* xr = x + r0 * ld_x;
      const float* res = residual ? residual + r0 * w.out : nullptr;
      float* yr = y + r0 * w.out;
      switch (std::min<int64_t>(kRows, rows - r0)) {
        case 1: tile<1>(w, xr, ld_x, p, epilogue, res, yr); break;
        case 2: tile<2>(w, xr, ld_x, p, epilogue, res, yr); break;
        case 3: tile<3>(w, xr, ld_x, p, epilogue, res, yr); break;
        default: tile<4>(w, xr, ld_x, p, epilogue, res, yr); break;
      }
    }
}

#endif

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
