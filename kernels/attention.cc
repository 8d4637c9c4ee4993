#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace seqrec::kernels {

void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float scale, float* out, int64_t ld_out, float* scratch) {
  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t slot = q_begin + i;
    int64_t begin = std::max<int64_t>(key_begin, 0);
    int64_t end = std::min<int64_t>(key_end, n_kv);
    if (causal) end = std::min<int64_t>(end, slot + 1);
    if (begin >= end) {  // fully masked row: the additive mask cancels out
      begin = 0;
      end = n_kv;
    }
    const float* qi = q + i * ld_q;
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t j = begin; j < end; ++j) {
      const float* kj = k + j * ld_kv;
      float dot = 0.0f;
      for (int64_t c = 0; c < d_h; ++c) dot += qi[c] * kj[c];
      scratch[j] = dot * scale;
      max_score = std::max(max_score, scratch[j]);
    }
    float sum = 0.0f;
    for (int64_t j = begin; j < end; ++j) {
      scratch[j] = std::exp(scratch[j] - max_score);
      sum += scratch[j];
    }
    const float inv_sum = 1.0f / sum;
    float* oi = out + i * ld_out;
    std::fill(oi, oi + d_h, 0.0f);
    for (int64_t j = begin; j < end; ++j) {
      const float p = scratch[j] * inv_sum;
      const float* vj = v + j * ld_kv;
      for (int64_t c = 0; c < d_h; ++c) oi[c] += p * vj[c];
    }
  }
}

}  // namespace seqrec::kernels
