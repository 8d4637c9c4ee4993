#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace seqrec::kernels {

namespace {

// Keys transposed to [d_h, n_kv] so that one query's scores are d_h broadcast-FMAs over
// contiguous key columns (vectorizes across keys instead of reducing across features).
void transpose_keys(const float* k, int64_t ld_kv, int64_t n_kv, int64_t d_h, float* kt) {
  for (int64_t j = 0; j < n_kv; ++j)
    for (int64_t c = 0; c < d_h; ++c) kt[c * n_kv + j] = k[j * ld_kv + c];
}

}  // namespace

void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* scratch) {
  float* scores = scratch;
  float* kt = scratch + n_kv;
  const bool many_queries = n_q > 2;
  if (many_queries) transpose_keys(k, ld_kv, n_kv, d_h, kt);

  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t row = q_begin + i;
    int64_t begin = std::max<int64_t>(key_begin, 0);
    int64_t end = std::min<int64_t>(key_end, n_kv);
    if (causal) end = std::min<int64_t>(end, row + 1);
    if (begin >= end) {  // fully masked row: the additive mask cancels out
      begin = 0;
      end = n_kv;
    }
    const float* qi = q + i * ld_q;
    float* s = scores;
    if (many_queries) {
      std::fill(s + begin, s + end, 0.0f);
      for (int64_t c = 0; c < d_h; ++c) {
        const float qc = qi[c] * scale;
        const float* ktc = kt + c * n_kv;
        for (int64_t j = begin; j < end; ++j) s[j] += qc * ktc[j];
      }
    } else {
      for (int64_t j = begin; j < end; ++j) {
        const float* kj = k + j * ld_kv;
        float dot = 0.0f;
        for (int64_t c = 0; c < d_h; ++c) dot += qi[c] * kj[c];
        s[j] = dot * scale;
      }
    }
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
    const float inv_sum = 1.0f / sum;
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_h, 0.0f);
    for (int64_t j = begin; j < end; ++j) {
      const float p = s[j] * inv_sum;
      const float* vj = v + j * ld_kv;
      for (int64_t c = 0; c < d_h; ++c) oi[c] += p * vj[c];
    }
  }
}

}  // namespace seqrec::kernels
