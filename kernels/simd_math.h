// Vector (16 x fp32, AVX-512) math shared by the kernels: exp and the activations fused into
// GEMM epilogues. Accuracy is stated per function; all are far inside the 1e-4 parity budget.
// For the per-path kernel sources (kernels/isa.h): the functions exist in the AVX-512 copies.
#pragma once

#include <cstdint>

#include "kernels/isa.h"

#if SEQREC_HAVE_AVX512
#include <immintrin.h>

SEQREC_ISA_BEGIN
SEQREC_INTRINSIC_WARNINGS_OFF
namespace seqrec::kernels::SEQREC_ISA_NS::simd {

// Lanes [0, min(remaining, 16)) set.
inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1);
}

// Stores lanes [0, n) of v at p (1 <= n <= 16) without touching p[n..15]. Not a masked
// store on purpose where rows are written one after another and read back at once: on
// this CPU a masked store's full 64-byte extent seems to count when a later load overlaps
// it, and the next row starts inside that extent. Measured in the ml1m layer norm (rows of
// 50): register-held rows with masked tail stores made a batch-1 request ~5 us slower than
// a plain loop, with this store ~1.5 us faster. (The GEMM and attention tiles measured no
// gain from it, and keep their masked stores.)
inline void store_first(float* p, __m512 v, int64_t n) {
  if (n >= 16) return _mm512_storeu_ps(p, v);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  for (int64_t i = 0; i < n; ++i) p[i] = lanes[i];
}

// exp(x): x = n·ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r, then scaled by 2^n.
// Relative error ~2e-7 (about 2 ulp); inputs are clamped to [-87.3, 88.4] (no inf, no 0).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.37f)), _mm512_set1_ps(-87.33f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / (1 + e^-x). Absolute error ~1e-7.
inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// tanh(x) = sign(x)·(1 − 2 / (e^{2|x|} + 1)). Absolute error ~2e-7.
inline __m512 tanh16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp16(_mm512_add_ps(ax, ax));
  const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
  // copy x's sign onto t (t >= 0)
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(t), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

// erf(x), Abramowitz & Stegun 7.1.26: 1 − (a1·t + … + a5·t⁵)·e^{−x²}, t = 1/(1 + p|x|),
// odd in x. Absolute error <= 1.5e-7.
inline __m512 erf16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, one));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
  const __m512 y = _mm512_fnmadd_ps(p, e, one);
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(y), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
}

// x·Φ(x) = 0.5·x·(1 + erf(x/√2))  (torch's / RecBole's default "gelu").
inline __m512 gelu_erf16(__m512 x) {
  const __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half_x, erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f))), half_x);
}

// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
inline __m512 gelu_tanh16(__m512 x) {
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 inner = _mm512_mul_ps(_mm512_set1_ps(0.79788456080286535588f),
                                     _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
  const __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half_x, tanh16(inner), half_x);
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS::simd
SEQREC_INTRINSIC_WARNINGS_ON
SEQREC_ISA_END

#endif
