// The transformer encoder built from a ModelSpec: embedding, blocks, final norm, readout.
// Each layer reads its weights by the canonical /-scoped names of required_tensors().
//
// Cost follows the history, not L. A sequence is computed over a compact set of rows:
//  - left padding with unmasked padded keys (SASRec.pytorch): every padded slot holds the
//    same row at every layer, so one row stands for all P of them and its key gets weight
//    P in each softmax — the same softmax, computed once;
//  - padded keys masked (RecBole): padded slots never reach a real one, so they are skipped;
//  - otherwise (or a masked model with no real item) every slot is computed.
// The last block computes keys and values for every row but the rest only for the
// read-out row: nothing else is read.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/model_spec.h"
#include "engine/tensor.h"
#include "kernels/gemm.h"

namespace seqrec {

using WeightMap = std::map<std::string, Tensor>;

using kernels::PackedLinear;  // y = x·Wᵀ + b (+ activation), weights prepared at load

struct LayerNormWeights {
  const float* gamma = nullptr;
  const float* beta = nullptr;
};

struct EncoderLayer {
  PackedLinear q, kv, qkv;  // kv: K | V fused; qkv: Q | K | V fused (when Q and K/V share an input)
  PackedLinear out;
  LayerNormWeights attention_norm;
  PackedLinear ffn_inner, ffn_outer;  // the activation is fused into ffn_inner
  LayerNormWeights ffn_norm;
};

// How one sequence is computed: its rows (compact, see above) and who sees whom.
struct SequencePlan {
  int64_t first_row = 0;     // offset of this sequence's rows in the batch's row buffers
  int64_t n_rows = 0;
  int64_t key_begin = 0;     // keys every row may see: [key_begin, key_end) ...
  int64_t key_end = 0;
  bool causal = true;        // ... and, when causal, only rows <= its own
  float first_key_weight = 1;  // row 0 stands for this many identical padded slots
  bool zero_first_row = false;  // old SASRec.pytorch zeroes padded rows after embedding and each block
  int64_t readout = 0;       // the row whose hidden state is scored
};

struct Workspace;  // engine/workspace.h

class Encoder {
 public:
  // Looks up every weight by name; throws seqrec::Error on a missing or misshapen one.
  // `weights` must outlive the encoder (it points into them).
  Encoder(const ModelSpec& spec, const WeightMap& weights);

  // Appends the rows of one sequence of item rows (oldest first; only the most recent
  // max_len are used) to item_rows / positions, and describes them in `plan`.
  void plan(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows, std::vector<int32_t>& positions,
            SequencePlan& plan) const;

  // hidden: [batch, d] — the read-out hidden state of each sequence (after the head, if any);
  // it must have room for kernels::padded_rows(batch) rows (the GEMMs' padded shapes).
  void encode(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* hidden) const;

 private:
  void plan_every_slot(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                       std::vector<int32_t>& positions, SequencePlan& plan) const;
  // context rows (one per query) = attention of the given query rows over each sequence's keys.
  void attend(const float* q, int64_t ld_q, bool readout_only, const float* k, const float* v, int64_t ld_kv,
              Workspace& ws, float* context) const;
  kernels::NormParams params(const LayerNormWeights& w) const;
  void norm(const LayerNormWeights& w, const float* x, int64_t rows, float* y) const;

  ModelSpec spec_;
  const float* item_table_ = nullptr;      // [item_table_rows, d]
  const float* position_table_ = nullptr;  // [n_positions, d]
  LayerNormWeights embed_norm_;
  std::vector<EncoderLayer> layers_;
  std::vector<FloatBuffer> fused_;  // fused projection weights (read in place when a layer is not packed)
  LayerNormWeights final_norm_;
  PackedLinear head_dense_;  // GELU fused
  LayerNormWeights head_norm_;
};

}  // namespace seqrec
