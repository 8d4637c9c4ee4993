// The transformer encoder built from a ModelSpec: embedding, blocks, final norm, readout.
// Each layer reads its weights by the canonical /-scoped names of required_tensors().
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/model_spec.h"
#include "engine/tensor.h"

namespace seqrec {

using WeightMap = std::map<std::string, Tensor>;

// y = x · Wᵀ + b, torch Linear layout: weight [out, in], bias [out].
struct Linear {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t out = 0, in = 0;
  // y: [rows, out] = x: [rows, in] (row stride ld_x) · Wᵀ + b
  void apply(const float* x, int64_t ld_x, int64_t rows, float* y) const;
};

struct LayerNormWeights {
  const float* gamma = nullptr;
  const float* beta = nullptr;
};

struct EncoderLayer {
  Linear q, k, v, out;
  LayerNormWeights attention_norm;
  Linear ffn_inner, ffn_outer;
  LayerNormWeights ffn_norm;
};

// Where each slot's input comes from, for one sequence.
struct SlotLayout {
  std::vector<int32_t> item_rows;  // [n_slots] rows of the item table (0 = padding, n_items = [MASK])
  std::vector<int32_t> positions;  // [n_slots] rows of the position table
  int64_t valid_begin = 0;         // slots [valid_begin, valid_end) hold real items (or the mask)
  int64_t valid_end = 0;
  int64_t readout = 0;             // the slot whose hidden state is scored
};

// Per-caller scratch memory; a worker keeps one and reuses it across batches.
struct Workspace {
  FloatBuffer x, normed, q, k, v, context, projected, ffn, scores, hidden;
  std::vector<SlotLayout> layouts;
};

class Encoder {
 public:
  // Looks up every weight by name; throws seqrec::Error on a missing or misshapen one.
  Encoder(const ModelSpec& spec, const WeightMap& weights);

  // Slot layout of one sequence of item rows (oldest first; only the most recent
  // max_len are used), as the source framework lays it out.
  SlotLayout layout(std::span<const int32_t> sequence) const;

  // hidden: [batch, d] — the read-out hidden state of each sequence (after the head, if any).
  void encode(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* hidden) const;

 private:
  void attention(const EncoderLayer& layer, const float* query_src, const float* kv_src, int64_t batch,
                 Workspace& ws, float* out) const;
  void feed_forward(const EncoderLayer& layer, const float* x, int64_t rows, Workspace& ws, float* out) const;
  void activate(float* x, int64_t n) const;
  void norm(const LayerNormWeights& w, const float* x, int64_t rows, float* y) const;

  ModelSpec spec_;
  const float* item_table_ = nullptr;      // [item_table_rows, d]
  const float* position_table_ = nullptr;  // [n_positions, d]
  LayerNormWeights embed_norm_;
  std::vector<EncoderLayer> layers_;
  LayerNormWeights final_norm_;
  Linear head_dense_;
  LayerNormWeights head_norm_;
};

}  // namespace seqrec
