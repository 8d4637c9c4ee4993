#include "kernels/attention.h"

#include "kernels/simd_math.h"
#include "kernels/tile_dispatch.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

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

#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF

using simd::exp16;
using simd::tail_mask;

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

constexpr int kRows = kMaxTileRows;       // query rows per tile
constexpr int kMaxBlocks = kMaxTileBlocks;  // d_h <= 64 in registers; wider heads take the generic path

// Row counts and block counts are template parameters so every accumulator array below is
// fully unrolled into registers (with run-time counts GCC keeps them on the stack, which
// made the value loop store-bound).

// s[r][j] = scale · q_r·k_j for ROWS query rows and keys j in [lo, hi) (lo 16-aligned),
// from the transposed keys kt ([d_h, kt_ld], zero-padded to kt_ld): 32 keys per step, so
// each broadcast of q feeds two FMAs.
template <int ROWS>
void tile_scores(const float* q, int64_t ld_q, const float* kt, int64_t kt_ld, int64_t d_h, int64_t lo, int64_t hi,
                 float scale, float* s) {
  const __m512 vscale = _mm512_set1_ps(scale);
  int64_t j = lo;
  for (; j + 16 < hi; j += 32) {
    __m512 a0[ROWS], a1[ROWS];
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d_h; ++c) {
      const float* ktc = kt + c * kt_ld + j;
      const __m512 k0 = _mm512_loadu_ps(ktc), k1 = _mm512_loadu_ps(ktc + 16);
      #pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        const __m512 qc = _mm512_set1_ps(q[r * ld_q + c]);
        a0[r] = _mm512_fmadd_ps(qc, k0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qc, k1, a1[r]);
      }
    }
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      _mm512_storeu_ps(s + r * kt_ld + j, _mm512_mul_ps(a0[r], vscale));
      _mm512_storeu_ps(s + r * kt_ld + j + 16, _mm512_mul_ps(a1[r], vscale));
    }
  }
  if (j < hi) {  // one 16-key block left
    __m512 a0[ROWS];
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) a0[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d_h; ++c) {
      const __m512 k0 = _mm512_loadu_ps(kt + c * kt_ld + j);
      #pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ld_q + c]), k0, a0[r]);
    }
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) _mm512_storeu_ps(s + r * kt_ld + j, _mm512_mul_ps(a0[r], vscale));
  }
}

// Turns one row's raw scores s[lo, hi) into unnormalised softmax weights: w_j·exp(s_j − max)
// inside the row's key range, 0 outside it (so the value loop can run over [lo, hi) for
// every row of a tile). Returns 1 / Σ weights.
float softmax_weights(float* s, int64_t lo, int64_t hi, KeyRange range, float first_key_weight) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = range.begin; j < range.end; j += 16) {
    const __mmask16 m = tail_mask(range.end - j);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
  }
  const __m512 max_score = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i begin = _mm512_set1_epi32(static_cast<int32_t>(range.begin));
  const __m512i end = _mm512_set1_epi32(static_cast<int32_t>(range.end));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = lo; j < hi; j += 16) {
    const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j)));
    const __mmask16 inside = _mm512_cmpge_epi32_mask(idx, begin) & _mm512_cmplt_epi32_mask(idx, end);
    const __m512 e = _mm512_maskz_mov_ps(inside, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), max_score)));
    _mm512_storeu_ps(s + j, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  if (range.begin == 0 && first_key_weight != 1.0f) {
    sum += (first_key_weight - 1.0f) * s[0];
    s[0] *= first_key_weight;
  }
  return 1.0f / sum;
}

// out[r] = inv_sum[r] · Σ_{j in [lo, hi)} s[r][j] · v_j for N rows; d_h in BLOCKS blocks of 16.
template <int N, int BLOCKS>
void weighted_values(const float* s, int64_t s_ld, const float* v, int64_t ld_kv, int64_t d_h, int64_t lo, int64_t hi,
                     const float* inv_sum, float* out, int64_t ld_out) {
  __mmask16 masks[BLOCKS];
  #pragma GCC unroll 16
  for (int b = 0; b < BLOCKS; ++b) masks[b] = tail_mask(d_h - b * 16);
  __m512 acc[N][BLOCKS];
  #pragma GCC unroll 16
  for (int r = 0; r < N; ++r)
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t j = lo; j < hi; ++j) {
    const float* vj = v + j * ld_kv;
    __m512 vb[BLOCKS];
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b) vb[b] = _mm512_maskz_loadu_ps(masks[b], vj + b * 16);
    #pragma GCC unroll 16
    for (int r = 0; r < N; ++r) {
      const __m512 p = _mm512_set1_ps(s[r * s_ld + j]);
      #pragma GCC unroll 16
      for (int b = 0; b < BLOCKS; ++b) acc[r][b] = _mm512_fmadd_ps(p, vb[b], acc[r][b]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < N; ++r) {
    const __m512 scale = _mm512_set1_ps(inv_sum[r]);
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b)
      _mm512_mask_storeu_ps(out + r * ld_out + b * 16, masks[b], _mm512_mul_ps(acc[r][b], scale));
  }
}

// Rows per pass of the value loop: accumulators for N rows x BLOCKS must fit in registers.
template <int BLOCKS>
constexpr int value_rows() {
  return BLOCKS <= 2 ? 8 : 4;
}

// A tile of ROWS queries (rows q_row0..) against the keys they see: scores, softmax weights
// per row, then the weighted sum of values.
template <int ROWS, int BLOCKS>
void attention_tile(const float* q, int64_t ld_q, int64_t q_row0, const float* kt, int64_t kt_ld, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* s) {
  KeyRange range[ROWS];
  int64_t lo = n_kv, hi = 0;
  #pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    range[r] = visible_keys(q_row0 + r, n_kv, key_begin, key_end, causal);
    lo = std::min(lo, range[r].begin);
    hi = std::max(hi, range[r].end);
  }
  lo &= ~int64_t{15};  // aligned key blocks; weights outside a row's range are zeroed
  tile_scores<ROWS>(q, ld_q, kt, kt_ld, d_h, lo, hi, scale, s);
  float inv_sum[ROWS];
  #pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) inv_sum[r] = softmax_weights(s + r * kt_ld, lo, hi, range[r], first_key_weight);
  // Causal rows of the first pass see fewer keys than the tile's last row.
  constexpr int kPass = value_rows<BLOCKS>();
  constexpr int kFirst = ROWS < kPass ? ROWS : kPass;
  int64_t first_hi = 0;
  #pragma GCC unroll 16
  for (int r = 0; r < kFirst; ++r) first_hi = std::max(first_hi, range[r].end);
  weighted_values<kFirst, BLOCKS>(s, kt_ld, v, ld_kv, d_h, lo, first_hi, inv_sum, out, ld_out);
  if constexpr (ROWS > kPass)
    weighted_values<ROWS - kPass, BLOCKS>(s + kPass * kt_ld, kt_ld, v, ld_kv, d_h, lo, hi, inv_sum + kPass,
                                          out + kPass * ld_out, ld_out);
}

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                        int64_t, int64_t, bool, float, float, float*, int64_t, float*);

TileFn tile_for(int64_t rows, int64_t d_h) {
  return with_tile_blocks(d_h, [rows](auto blocks) {
    return with_tile_rows(rows, [](auto r) -> TileFn { return attention_tile<decltype(r)::value, decltype(blocks)::value>; });
  });
}

// One query row (the last block's read-out slot): dot products straight from the key rows
// (transposing every key for one query would cost more than it saves), then the weighted
// values.
template <int BLOCKS>
void attention_one_row(const float* q, int64_t q_row, const float* k, const float* v, int64_t ld_kv, int64_t n_kv,
                       int64_t d_h, int64_t key_begin, int64_t key_end, bool causal, float first_key_weight,
                       float scale, float* out, float* s) {
  __mmask16 masks[BLOCKS];
  __m512 qb[BLOCKS];
  #pragma GCC unroll 16
  for (int b = 0; b < BLOCKS; ++b) {
    masks[b] = tail_mask(d_h - b * 16);
    qb[b] = _mm512_maskz_loadu_ps(masks[b], q + b * 16);
  }
  const KeyRange range = visible_keys(q_row, n_kv, key_begin, key_end, causal);
  for (int64_t j = range.begin; j < range.end; ++j) {
    const float* kj = k + j * ld_kv;
    __m512 acc = _mm512_mul_ps(qb[0], _mm512_maskz_loadu_ps(masks[0], kj));
    #pragma GCC unroll 16
    for (int b = 1; b < BLOCKS; ++b) acc = _mm512_fmadd_ps(qb[b], _mm512_maskz_loadu_ps(masks[b], kj + b * 16), acc);
    s[j] = _mm512_reduce_add_ps(acc) * scale;
  }
  const int64_t lo = range.begin & ~int64_t{15};
  const float inv_sum = softmax_weights(s, lo, range.end, range, first_key_weight);
  weighted_values<1, BLOCKS>(s, 0, v, ld_kv, d_h, range.begin, range.end, &inv_sum, out, 0);
}

SEQREC_INTRINSIC_WARNINGS_ON
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
#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
  if (d_h <= kMaxBlocks * 16 && n_q == 1) {
    with_tile_blocks(d_h, [&](auto blocks) {
      attention_one_row<decltype(blocks)::value>(q, q_begin, k, v, ld_kv, n_kv, d_h, key_begin, key_end, causal,
                                                 first_key_weight, scale, out, scratch);
    });
    return;
  }
  if (d_h <= kMaxBlocks * 16) {
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
    const TileFn full = tile_for(kRows, d_h);
    for (int64_t i = 0; i < n_q; i += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, n_q - i);
      (rows == kRows ? full : tile_for(rows, d_h))(q + i * ld_q, ld_q, q_begin + i, kt, kt_ld, v, ld_kv, n_kv, d_h,
                                                    key_begin, key_end, causal, first_key_weight, scale,
                                                    out + i * ld_out, ld_out, s);
    }
    return;
  }
SEQREC_INTRINSIC_WARNINGS_ON
#endif
  attention_rows(q, ld_q, q_begin, n_q, k, v, ld_kv, n_kv, d_h, key_begin, key_end, causal, first_key_weight, scale,
                 out, ld_out, scratch);
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
