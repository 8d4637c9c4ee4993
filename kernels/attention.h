#pragma once

#include <cstdint>

namespace seqrec::kernels {

// Scaled dot-product attention of one head over one sequence:
//   out[i] = Σ_j w_j·exp(s_ij)·v_j / Σ_j w_j·exp(s_ij),  s_ij = scale · q_i·k_j,
// over the keys j query i may see; w_0 = first_key_weight (key 0 standing for that many
// identical keys — SASRec.pytorch's padded slots), every other w_j = 1.
//
//   q:   [n_q, d_h], row stride ld_q. Query row i sits at key row q_begin + i.
//   k,v: [n_kv, d_h], row stride ld_kv.
//   out: [n_q, d_h], row stride ld_out.
//   Query at row r sees keys j in [key_begin, key_end), and also j <= r when causal.
//   A query that sees no key at all attends to all n_kv keys unmasked: that is what an
//   additive -10000 mask over every key gives in fp32 (RecBole's padded query rows).
//   scratch: attention_scratch_floats(n_kv, d_h) floats.
void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* scratch);

inline int64_t attention_scratch_floats(int64_t n_kv, int64_t d_h) { return (n_kv + 32) * (d_h + 8) + 16; }

}  // namespace seqrec::kernels
