#include "kernels/relative_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

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

void silu_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, int64_t ld_k, const float* v,
                         int64_t ld_v, int64_t n_kv, int64_t d_qk, int64_t d_v, const float* bias, int64_t ld_bias,
                         int64_t first_visible, float divisor, float* out, int64_t ld_out, float* scratch) {
  float* a = scratch;
  for (int64_t i = 0; i < n_q; ++i) {
    const float* qi = q + i * ld_q;
    const float* bias_i = bias + i * ld_bias;
    const int64_t visible = std::min<int64_t>(n_kv, first_visible + i + 1);
    for (int64_t j = 0; j < visible; ++j) {
      const float x = dot(qi, k + j * ld_k, d_qk) + bias_i[j];
      a[j] = x / (1.0f + std::exp(-x)) / divisor;  // silu(x) / divisor
    }
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_v, 0.0f);
    for (int64_t j = 0; j < visible; ++j) add_scaled(oi, a[j], v + j * ld_v, d_v);
  }
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
