// Attention of one head whose scores get a term picked per (query, key) pair — the relative
// attentions of the newer sequential recommenders. Model-agnostic: the pair terms come from
// small tables and index matrices the caller builds.
#pragma once

#include <cstdint>

namespace seqrec::kernels {

// Softmax attention whose keys and values get a vector from a small table picked per pair
// (TiSASRec's time intervals):
//   s_ij  = scale · (q_i·k_j + q_i·rk[rel_ij])
//   a_i   = softmax over the keys j < visible_i of s_ij
//   out_i = Σ_j a_ij · (v_j + rv[rel_ij])
//   q:      [n_q, d_h], row stride ld_q
//   k, v:   [n_kv, d_h], row stride ld_kv
//   rk, rv: [n_rel, d_h], row stride ld_r
//   rel:    [n_q, n_kv] int32 in [0, n_rel), row stride ld_rel
//   Query i sees keys j < min(n_kv, first_visible + i + 1) (causal, query i at key row
//   first_visible + i; first_visible >= 0).
//   out:    [n_q, d_h], row stride ld_out
//   scratch: relation_attention_scratch_floats(n_kv, n_rel) floats
void relation_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, const float* v, int64_t ld_kv,
                             int64_t n_kv, int64_t d_h, const float* rk, const float* rv, int64_t ld_r, int64_t n_rel,
                             const int32_t* rel, int64_t ld_rel, int64_t first_visible, float scale, float* out,
                             int64_t ld_out, float* scratch);

// (Part of the scratch holds int32 marks.)
inline int64_t relation_attention_scratch_floats(int64_t n_kv, int64_t n_rel) { return n_kv + 4 * n_rel + 16; }

// Pointwise SiLU attention with an additive per-pair bias (HSTU):
//   a_ij  = silu(q_i·k_j + bias_ij) / divisor for keys j <= first_visible + i (causal), 0 beyond
//   out_i = Σ_j a_ij · v_j
//   q:    [n_q, d_qk], row stride ld_q;     k: [n_kv, d_qk], row stride ld_k
//   v:    [n_kv, d_v], row stride ld_v
//   bias: [n_q, n_kv], row stride ld_bias (the row of query i); only the causal part is read
//   out:  [n_q, d_v], row stride ld_out
//   scratch: silu_attention_scratch_floats(n_kv, d_qk) floats
void silu_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, int64_t ld_k, const float* v,
                         int64_t ld_v, int64_t n_kv, int64_t d_qk, int64_t d_v, const float* bias, int64_t ld_bias,
                         int64_t first_visible, float divisor, float* out, int64_t ld_out, float* scratch);

// The keys transposed ([d_qk, n_kv] padded to whole 16-key blocks) and one tile of scores.
inline int64_t silu_attention_scratch_floats(int64_t n_kv, int64_t d_qk) {
  return (d_qk + 8) * ((n_kv + 15) / 16 * 16) + 16;
}

// The per-pair bias rows of a causal relative attention, from a table picked by the pair's
// offset and one picked by an index per pair (HSTU's position and time-bucket biases, shared by
// all heads of a layer):
//   out_ij = by_offset[offset − i + j] + by_index[index_ij] for keys j <= first_visible + i
//   by_offset: read at offset − i + j, which must be >= 0 for those pairs
//   index:     [n_q, first_visible + n_q] int32, row stride ld_index; by_index: what it indexes
//   out:       [n_q, first_visible + n_q], row stride ld_out (j > first_visible + i not written)
void offset_index_bias(const float* by_offset, int64_t offset, const float* by_index, const int32_t* index,
                       int64_t ld_index, int64_t n_q, int64_t first_visible, float* out, int64_t ld_out);

}  // namespace seqrec::kernels
