#pragma once

#include <cstdint>

namespace seqrec::kernels {

// Scaled dot-product attention of one head over one sequence:
//   out[i] = softmax_j(scale * q[i] · k[j]  over the keys query i may see) · v
//
//   q:   [n_q, d_h], row stride ld_q. Query row i sits at slot q_begin + i.
//   k,v: [n_kv, d_h], row stride ld_kv. Key row j sits at slot j.
//   out: [n_q, d_h], row stride ld_out.
//   Query at slot s sees keys j in [key_begin, key_end), and also j <= s when causal.
//   A query that sees no key at all attends to all n_kv keys unmasked: that is what an
//   additive -10000 mask over every key gives in fp32 (RecBole's padded query rows).
//   scratch: n_kv floats.
void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float scale, float* out, int64_t ld_out, float* scratch);

}  // namespace seqrec::kernels
