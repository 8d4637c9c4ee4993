#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
// GCC 12 warns inside its own _mm512_reduce_* helpers (an undefined vector it fills on purpose).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace seqrec::kernels {

namespace {

// The key range query row `row` sees (see the header).
struct KeyRange {
  int64_t begin, end;
};
KeyRange visible_keys(int64_t row, int64_t n_kv, int64_t key_begin, int64_t key_end, bool causal) {
  int64_t begin = std::max<int64_t>(key_begin, 0);
  int64_t end = std::min<int64_t>(key_end, n_kv);
  if (causal) end = std::min<int64_t>(end, row + 1);
  if (begin >= end) return {0, n_kv};  // fully masked row: the additive mask cancels out
  return {begin, end};
}

// Turns raw scores s[begin, end) into softmax weights (key 0 weighted by first_key_weight);
// returns nothing, leaves s[j] = w_j·exp(s_j − max) / Σ.
void softmax_in_place(float* s, int64_t begin, int64_t end, float first_key_weight);

#if defined(__AVX512F__)

// exp(x) for 16 lanes: x = n·ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r, then
// scaled by 2^n. Relative error ~2e-7 (about 2 ulp), far inside the 1e-4 parity budget.
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

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1);
}

void softmax_in_place(float* s, int64_t begin, int64_t end, float first_key_weight) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = begin; j < end; j += 16) {
    const __mmask16 m = tail_mask(end - j);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
  }
  const __m512 max_score = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = begin; j < end; j += 16) {
    const __mmask16 m = tail_mask(end - j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), max_score));
    _mm512_mask_storeu_ps(s + j, m, e);
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  if (begin == 0 && first_key_weight != 1.0f) {
    sum += (first_key_weight - 1.0f) * s[0];
    s[0] *= first_key_weight;
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int64_t j = begin; j < end; j += 16) {
    const __mmask16 m = tail_mask(end - j);
    _mm512_mask_storeu_ps(s + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv));
  }
}

constexpr int kRows = 8;       // query rows per tile
constexpr int kValueRows = 4;  // rows per pass of the value loop (register budget)
constexpr int kMaxBlocks = 4;  // d_h <= 64 in registers; wider heads take the generic path

// out[r] = Σ_j s[r][j] · v[j] for `rows` <= kValueRows rows over keys [lo, hi).
void weighted_values(const float* s, int64_t s_ld, int64_t rows, const float* v, int64_t ld_kv, int64_t d_h,
                     int64_t lo, int64_t hi, float* out, int64_t ld_out) {
  const int blocks = static_cast<int>((d_h + 15) / 16);
  __mmask16 masks[kMaxBlocks];
  for (int b = 0; b < blocks; ++b) masks[b] = tail_mask(d_h - b * 16);
  __m512 acc[kValueRows][kMaxBlocks];
  for (int r = 0; r < kValueRows; ++r)
    for (int b = 0; b < kMaxBlocks; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t j = lo; j < hi; ++j) {
    const float* vj = v + j * ld_kv;
    __m512 vb[kMaxBlocks];
    for (int b = 0; b < blocks; ++b) vb[b] = _mm512_maskz_loadu_ps(masks[b], vj + b * 16);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 p = _mm512_set1_ps(s[r * s_ld + j]);
      for (int b = 0; b < blocks; ++b) acc[r][b] = _mm512_fmadd_ps(p, vb[b], acc[r][b]);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int b = 0; b < blocks; ++b) _mm512_mask_storeu_ps(out + r * ld_out + b * 16, masks[b], acc[r][b]);
}

// A tile of up to kRows queries (rows q_row0..) against the keys they see: scores from the
// transposed keys (8 rows x 32 keys per step: 16 FMAs for 2 loads and 8 broadcasts),
// softmax per row, then the weighted sum of values.
void attention_tile(const float* q, int64_t ld_q, int64_t rows, int64_t q_row0, const float* kt, int64_t kt_ld,
                    const float* v, int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end,
                    bool causal, float first_key_weight, float scale, float* out, int64_t ld_out, float* s) {
  KeyRange range[kRows];
  int64_t lo = n_kv, hi = 0;
  for (int64_t r = 0; r < rows; ++r) {
    range[r] = visible_keys(q_row0 + r, n_kv, key_begin, key_end, causal);
    lo = std::min(lo, range[r].begin);
    hi = std::max(hi, range[r].end);
  }
  lo &= ~int64_t{15};  // aligned key blocks; scores outside a row's range are ignored
  const __m512 vscale = _mm512_set1_ps(scale);
  // Scores s[r][j] for j in [lo, hi), two 16-key blocks at a time (kt is zero-padded to kt_ld).
  for (int64_t j = lo; j < hi; j += 32) {
    const bool two = j + 16 < hi;
    __m512 a0[kRows], a1[kRows];
    for (int r = 0; r < kRows; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d_h; ++c) {
      const float* ktc = kt + c * kt_ld + j;
      const __m512 k0 = _mm512_loadu_ps(ktc);
      const __m512 k1 = two ? _mm512_loadu_ps(ktc + 16) : _mm512_setzero_ps();
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 qc = _mm512_set1_ps(q[r * ld_q + c]);
        a0[r] = _mm512_fmadd_ps(qc, k0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qc, k1, a1[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      _mm512_storeu_ps(s + r * kt_ld + j, _mm512_mul_ps(a0[r], vscale));
      if (two) _mm512_storeu_ps(s + r * kt_ld + j + 16, _mm512_mul_ps(a1[r], vscale));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kt_ld;
    softmax_in_place(sr, range[r].begin, range[r].end, first_key_weight);
    // Keys outside this row's range weigh nothing in the shared value loop.
    std::fill(sr + lo, sr + range[r].begin, 0.0f);
    std::fill(sr + range[r].end, sr + hi, 0.0f);
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kValueRows) {
    const int64_t n = std::min<int64_t>(kValueRows, rows - r0);
    int64_t row_hi = 0;  // causal rows of this half see fewer keys
    for (int64_t r = r0; r < r0 + n; ++r) row_hi = std::max(row_hi, range[r].end);
    weighted_values(s + r0 * kt_ld, kt_ld, n, v, ld_kv, d_h, lo, row_hi, out + r0 * ld_out, ld_out);
  }
}

#else

void softmax_in_place(float* s, int64_t begin, int64_t end, float first_key_weight) {
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = begin; j < end; ++j) max_score = std::max(max_score, s[j]);
  float sum = 0.0f;
  for (int64_t j = begin; j < end; ++j) {
    s[j] = std::exp(s[j] - max_score);
    sum += s[j];
  }
  if (begin == 0 && first_key_weight != 1.0f) {
    sum += (first_key_weight - 1.0f) * s[0];
    s[0] *= first_key_weight;
  }
  const float inv = 1.0f / sum;
  for (int64_t j = begin; j < end; ++j) s[j] *= inv;
}

#endif

// One query row at a time, keys read row-wise: any head width, any CPU.
void attention_rows(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* s) {
  for (int64_t i = 0; i < n_q; ++i) {
    const KeyRange range = visible_keys(q_begin + i, n_kv, key_begin, key_end, causal);
    const float* qi = q + i * ld_q;
    for (int64_t j = range.begin; j < range.end; ++j) {
      const float* kj = k + j * ld_kv;
      float dot = 0.0f;
      for (int64_t c = 0; c < d_h; ++c) dot += qi[c] * kj[c];
      s[j] = dot * scale;
    }
    softmax_in_place(s, range.begin, range.end, first_key_weight);
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_h, 0.0f);
    for (int64_t j = range.begin; j < range.end; ++j) {
      const float p = s[j];
      const float* vj = v + j * ld_kv;
      for (int64_t c = 0; c < d_h; ++c) oi[c] += p * vj[c];
    }
  }
}

}  // namespace

void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* scratch) {
#if defined(__AVX512F__)
  if (n_q >= 2 && d_h <= kMaxBlocks * 16) {
    // Keys transposed to [d_h, kt_ld] (zero-padded to whole 16-key blocks) so a tile's scores
    // are broadcast-FMAs over contiguous keys; scores for a tile live after them.
    const int64_t kt_ld = (n_kv + 15) & ~int64_t{15};
    float* kt = scratch;
    float* s = scratch + d_h * kt_ld;
    for (int64_t c = 0; c < d_h; ++c) {
      float* row = kt + c * kt_ld;
      for (int64_t j = 0; j < n_kv; ++j) row[j] = k[j * ld_kv + c];
      std::fill(row + n_kv, row + kt_ld, 0.0f);
    }
    for (int64_t i = 0; i < n_q; i += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, n_q - i);
      attention_tile(q + i * ld_q, ld_q, rows, q_begin + i, kt, kt_ld, v, ld_kv, n_kv, d_h, key_begin, key_end, causal,
                     first_key_weight, scale, out + i * ld_out, ld_out, s);
    }
    return;
  }
#endif
  attention_rows(q, ld_q, q_begin, n_q, k, v, ld_kv, n_kv, d_h, key_begin, key_end, causal, first_key_weight, scale,
                 out, ld_out, scratch);
}

}  // namespace seqrec::kernels
