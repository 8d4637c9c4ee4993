#include "kernels/relative_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/simd_math.h"
#include "kernels/tile_dispatch.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

namespace {

// a·b over n floats as 16 interleaved partial sums (then added in lane order): each lane is a
// sequential sum, so the compiler vectorizes it for the path without reassociating anything.
inline float dot(const float* a, const float* b, int64_t n) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) lanes[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) lanes[l] += a[i] * b[i];
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += lanes[l];
  return sum;
}

// y[0..n) += w · x[0..n)
inline void add_scaled(float* y, float w, const float* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] += w * x[c];
}

}  // namespace

void relation_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, const float* v, int64_t ld_kv,
                             int64_t n_kv, int64_t d_h, const float* rk, const float* rv, int64_t ld_r, int64_t n_rel,
                             const int32_t* rel, int64_t ld_rel, int64_t first_visible, float scale, float* out,
                             int64_t ld_out, float* scratch) {
  // Scratch: scores [n_kv] | q·rk[r] [n_rel] | softmax weight summed per r [n_rel] | marks
  // [n_rel] (int32: r seen in this row) | the rows' distinct r [n_rel] (int32).
  float* s = scratch;
  float* q_rk = s + n_kv;
  float* weight_of = q_rk + n_rel;
  int32_t* seen = reinterpret_cast<int32_t*>(weight_of + n_rel);
  int32_t* distinct = seen + n_rel;
  std::fill(seen, seen + n_rel, 0);
  for (int64_t i = 0; i < n_q; ++i) {
    const float* qi = q + i * ld_q;
    const int32_t* rel_i = rel + i * ld_rel;
    const int64_t visible = std::min<int64_t>(n_kv, first_visible + i + 1);
    int64_t n_distinct = 0;
    float max_s = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      const int32_t r = rel_i[j];
      if (!seen[r]) {  // q·rk[r] once per distinct r of the row
        seen[r] = 1;
        distinct[n_distinct++] = r;
        q_rk[r] = dot(qi, rk + r * ld_r, d_h);
        weight_of[r] = 0.0f;
      }
      s[j] = (dot(qi, k + j * ld_kv, d_h) + q_rk[r]) * scale;
      max_s = std::max(max_s, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      s[j] = std::exp(s[j] - max_s);
      sum += s[j];
    }
    const float inv_sum = 1.0f / sum;
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_h, 0.0f);
    for (int64_t j = 0; j < visible; ++j) {
      const float a = s[j] * inv_sum;
      add_scaled(oi, a, v + j * ld_kv, d_h);
      weight_of[rel_i[j]] += a;
    }
    for (int64_t t = 0; t < n_distinct; ++t) {  // Σ_j a_ij · rv[rel_ij], grouped by r
      const int32_t r = distinct[t];
      add_scaled(oi, weight_of[r], rv + r * ld_r, d_h);
      seen[r] = 0;
    }
  }
}

namespace {

// Keys transposed to kt [d, kt_ld] (kt_ld = n_kv rounded up to 16, zero-padded) so that scores
// are products over contiguous keys. Key row by key row: HSTU's rows are 4 KB apart, so reading
// a column (every key's c) hit one L1 set per load and missed on each (~9% of hstu-large's
// time); written row-wise, kt's d lines stay in L1 instead.
void transpose_keys(const float* k, int64_t ld_k, int64_t n_kv, int64_t d, float* kt, int64_t kt_ld) {
  for (int64_t j = 0; j < n_kv; ++j) {
    const float* kj = k + j * ld_k;
    for (int64_t c = 0; c < d; ++c) kt[c * kt_ld + j] = kj[c];
  }
  for (int64_t c = 0; c < d; ++c) std::fill(kt + c * kt_ld + n_kv, kt + (c + 1) * kt_ld, 0.0f);
}

// e^x for the SiLU, written so that the compiler vectorizes a loop of it (std::exp is a call):
// x = n·ln2 + r, a degree-6 polynomial for e^r, 2^n put in the exponent bits — simd_math.h's
// exp16 in scalar form. Relative error ~2e-7; x is clamped to [-87.33, 88.37] (no inf, no 0).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.33f), 88.37f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF

using simd::exp16;
using simd::tail_mask;

// silu(x) / divisor on the lanes in `inside`, 0 on the others.
inline __m512 silu_over(__m512 x, __mmask16 inside, __m512 divisor) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_maskz_div_ps(inside, x, _mm512_mul_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e), divisor));
}

// Lanes j0 + l < end.
inline __mmask16 below(int64_t j0, int64_t end) { return end <= j0 ? 0 : tail_mask(end - j0); }

// r[i][l] <- r[l][i]: unpacks of 32- then 64-bit pairs, then two shuffles of 128-bit lanes.
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  #pragma GCC unroll 16
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  #pragma GCC unroll 16
  for (int h = 0; h < 2; ++h)
    #pragma GCC unroll 16
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  #pragma GCC unroll 16
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

// transpose_keys in 16 x 16 blocks through registers (keys past n_kv read as 0: the padding).
// The scalar copy was ~4% of hstu-large's time.
void transpose_keys16(const float* k, int64_t ld_k, int64_t n_kv, int64_t d, float* kt, int64_t kt_ld) {
  for (int64_t j0 = 0; j0 < kt_ld; j0 += 16) {
    const int64_t keys = std::min<int64_t>(16, n_kv - j0);
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
      const __mmask16 m = tail_mask(d - c0);
      __m512 r[16];
      #pragma GCC unroll 16
      for (int l = 0; l < 16; ++l)
        r[l] = l < keys ? _mm512_maskz_loadu_ps(m, k + (j0 + l) * ld_k + c0) : _mm512_setzero_ps();
      transpose16(r);
      const int64_t cols = std::min<int64_t>(16, d - c0);
      #pragma GCC unroll 16
      for (int l = 0; l < 16; ++l)
        if (l < cols) _mm512_storeu_ps(kt + (c0 + l) * kt_ld + j0, r[l]);
    }
  }
}

// a[r][j] = silu(q_r·k_j + bias_r[j]) / divisor for ROWS query rows and keys j < hi, 0 past each
// row's own end[r] (<= hi); from the transposed keys kt [d, kt_ld]. 32 keys per step, so each
// broadcast of q feeds two FMAs; the SiLU runs on the accumulators before they are stored.
template <int ROWS>
void silu_tile_scores(const float* q, int64_t ld_q, const float* kt, int64_t kt_ld, int64_t d, int64_t hi,
                      const int64_t* end, const float* bias, int64_t ld_bias, __m512 divisor, float* a) {
  auto finish = [&](int r, int64_t j, __m512 acc) {
    const __mmask16 inside = below(j, end[r]);
    const __m512 x = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(inside, bias + r * ld_bias + j));
    _mm512_storeu_ps(a + r * kt_ld + j, silu_over(x, inside, divisor));
  };
  int64_t j = 0;
  for (; j + 16 < hi; j += 32) {
    __m512 a0[ROWS], a1[ROWS];
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
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
      finish(r, j, a0[r]);
      finish(r, j + 16, a1[r]);
    }
  }
  if (j < hi) {  // one 16-key block left
    __m512 a0[ROWS];
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) a0[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 k0 = _mm512_loadu_ps(kt + c * kt_ld + j);
      #pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ld_q + c]), k0, a0[r]);
    }
    #pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) finish(r, j, a0[r]);
  }
}

// out[r] = Σ_{j < hi} a[r][j] · v_j for N rows; d_v in BLOCKS blocks of 16 (as attention.cc's
// weighted_values, without the softmax's 1 / Σ).
template <int N, int BLOCKS>
void silu_weighted_values(const float* a, int64_t a_ld, const float* v, int64_t ld_v, int64_t d_v, int64_t hi,
                          float* out, int64_t ld_out) {
  __mmask16 masks[BLOCKS];
  #pragma GCC unroll 16
  for (int b = 0; b < BLOCKS; ++b) masks[b] = tail_mask(d_v - b * 16);
  __m512 acc[N][BLOCKS];
  #pragma GCC unroll 16
  for (int r = 0; r < N; ++r)
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < hi; ++j) {
    const float* vj = v + j * ld_v;
    __m512 vb[BLOCKS];
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b) vb[b] = _mm512_maskz_loadu_ps(masks[b], vj + b * 16);
    #pragma GCC unroll 16
    for (int r = 0; r < N; ++r) {
      const __m512 p = _mm512_set1_ps(a[r * a_ld + j]);
      #pragma GCC unroll 16
      for (int b = 0; b < BLOCKS; ++b) acc[r][b] = _mm512_fmadd_ps(p, vb[b], acc[r][b]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < N; ++r)
    #pragma GCC unroll 16
    for (int b = 0; b < BLOCKS; ++b) _mm512_mask_storeu_ps(out + r * ld_out + b * 16, masks[b], acc[r][b]);
}

constexpr int kSiluRows = kMaxTileRows;       // query rows per tile
constexpr int kSiluMaxBlocks = kMaxTileBlocks;  // d_v <= 64 in registers; wider heads take the generic path

// A tile of ROWS causal queries whose first sees keys < end0: the weights, then the values.
// Rows past the first pass's see more keys, so the value loop runs in two passes when BLOCKS
// leaves room for only 4 rows of accumulators.
template <int ROWS, int BLOCKS>
void silu_tile(const float* q, int64_t ld_q, int64_t end0, const float* kt, int64_t kt_ld, const float* v,
               int64_t ld_v, int64_t n_kv, int64_t d_qk, int64_t d_v, const float* bias, int64_t ld_bias,
               __m512 divisor, float* out, int64_t ld_out, float* a) {
  int64_t end[ROWS];
  #pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) end[r] = std::min<int64_t>(n_kv, end0 + r);
  silu_tile_scores<ROWS>(q, ld_q, kt, kt_ld, d_qk, end[ROWS - 1], end, bias, ld_bias, divisor, a);
  constexpr int kPass = BLOCKS <= 2 ? 8 : 4;
  constexpr int kFirst = ROWS < kPass ? ROWS : kPass;
  silu_weighted_values<kFirst, BLOCKS>(a, kt_ld, v, ld_v, d_v, end[kFirst - 1], out, ld_out);
  if constexpr (ROWS > kPass)
    silu_weighted_values<ROWS - kPass, BLOCKS>(a + kPass * kt_ld, kt_ld, v, ld_v, d_v, end[ROWS - 1],
                                               out + kPass * ld_out, ld_out);
}

using SiluTileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t,
                            int64_t, int64_t, const float*, int64_t, __m512, float*, int64_t, float*);

SiluTileFn silu_tile_for(int64_t rows, int64_t d_v) {
  return with_tile_blocks(d_v, [rows](auto blocks) {
    return with_tile_rows(rows, [](auto r) -> SiluTileFn { return silu_tile<decltype(r)::value, decltype(blocks)::value>; });
  });
}

// One query row (HSTU's last block reads out one slot): dot products straight from the key rows
// (transposing every key for one query would cost more than it saves), the SiLU over the row,
// then the values.
template <int BLOCKS>
void silu_one_row(const float* q, const float* k, int64_t ld_k, const float* v, int64_t ld_v, int64_t end,
                  int64_t d_qk, int64_t d_v, const float* bias, __m512 divisor, float* out, float* a) {
  const int64_t q_blocks = (d_qk + 15) / 16;
  for (int64_t j = 0; j < end; ++j) {
    const float* kj = k + j * ld_k;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < q_blocks; ++b) {
      const __mmask16 m = tail_mask(d_qk - b * 16);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + b * 16), _mm512_maskz_loadu_ps(m, kj + b * 16), acc);
    }
    a[j] = _mm512_reduce_add_ps(acc);
  }
  for (int64_t j = 0; j < end; j += 16) {
    const __mmask16 inside = below(j, end);
    const __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(inside, a + j), _mm512_maskz_loadu_ps(inside, bias + j));
    _mm512_mask_storeu_ps(a + j, inside, silu_over(x, inside, divisor));
  }
  silu_weighted_values<1, BLOCKS>(a, 0, v, ld_v, d_v, end, out, 0);
}

SEQREC_INTRINSIC_WARNINGS_ON
#endif

}  // namespace

void silu_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, int64_t ld_k, const float* v,
                         int64_t ld_v, int64_t n_kv, int64_t d_qk, int64_t d_v, const float* bias, int64_t ld_bias,
                         int64_t first_visible, float divisor, float* out, int64_t ld_out, float* scratch) {
  const int64_t kt_ld = (n_kv + 15) & ~int64_t{15};
#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
  if (d_v <= kSiluMaxBlocks * 16) {
    const __m512 vdivisor = _mm512_set1_ps(divisor);
    if (n_q == 1) {
      const int64_t end = std::min<int64_t>(n_kv, first_visible + 1);
      with_tile_blocks(d_v, [&](auto blocks) {
        silu_one_row<decltype(blocks)::value>(q, k, ld_k, v, ld_v, end, d_qk, d_v, bias, vdivisor, out, scratch);
      });
      return;
    }
    float* kt = scratch;
    float* a = scratch + d_qk * kt_ld;  // one tile's weights [kSiluRows, kt_ld]
    transpose_keys16(k, ld_k, n_kv, d_qk, kt, kt_ld);
    const SiluTileFn full = silu_tile_for(kSiluRows, d_v);
    for (int64_t i = 0; i < n_q; i += kSiluRows) {
      const int64_t rows = std::min<int64_t>(kSiluRows, n_q - i);
      (rows == kSiluRows ? full : silu_tile_for(rows, d_v))(q + i * ld_q, ld_q, first_visible + i + 1, kt, kt_ld, v,
                                                            ld_v, n_kv, d_qk, d_v, bias + i * ld_bias, ld_bias,
                                                            vdivisor, out + i * ld_out, ld_out, a);
    }
    return;
  }
SEQREC_INTRINSIC_WARNINGS_ON
#endif
  // Any width, any CPU: one query row at a time over the transposed keys, loops the compiler
  // vectorizes for the path (16 keys of scores at a time in registers).
  float* kt = scratch;
  float* a = scratch + d_qk * kt_ld;
  transpose_keys(k, ld_k, n_kv, d_qk, kt, kt_ld);
  for (int64_t i = 0; i < n_q; ++i) {
    const float* qi = q + i * ld_q;
    const float* bias_i = bias + i * ld_bias;
    const int64_t visible = std::min<int64_t>(n_kv, first_visible + i + 1);
    for (int64_t j0 = 0; j0 < visible; j0 += 16) {
      float acc[16] = {};
      for (int64_t c = 0; c < d_qk; ++c) {
        const float qc = qi[c];
        const float* ktc = kt + c * kt_ld + j0;
#pragma GCC unroll 16
        for (int l = 0; l < 16; ++l) acc[l] += qc * ktc[l];
      }
      for (int l = 0; l < 16; ++l) a[j0 + l] = acc[l];
    }
    for (int64_t j = 0; j < visible; ++j) {
      const float x = a[j] + bias_i[j];
      a[j] = x / ((1.0f + exp_approx(-x)) * divisor);  // silu(x) / divisor
    }
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_v, 0.0f);
    for (int64_t j = 0; j < visible; ++j) add_scaled(oi, a[j], v + j * ld_v, d_v);
  }
}

void offset_index_bias(const float* by_offset, int64_t offset, const float* by_index, const int32_t* index,
                       int64_t ld_index, int64_t n_q, int64_t first_visible, float* out, int64_t ld_out) {
  for (int64_t i = 0; i < n_q; ++i) {
    const float* p = by_offset + (offset - i);
    const int32_t* r = index + i * ld_index;
    float* o = out + i * ld_out;
    const int64_t n = first_visible + i + 1;
#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      _mm512_storeu_ps(o + j, _mm512_add_ps(_mm512_loadu_ps(p + j),
                                            _mm512_i32gather_ps(_mm512_loadu_si512(r + j), by_index, 4)));
    if (j < n) {
      const __mmask16 m = tail_mask(n - j);
      const __m512 w = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_maskz_loadu_epi32(m, r + j), by_index, 4);
      _mm512_mask_storeu_ps(o + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p + j), w));
    }
SEQREC_INTRINSIC_WARNINGS_ON
#else
    for (int64_t j = 0; j < n; ++j) o[j] = p[j] + by_index[r[j]];
#endif
  }
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
