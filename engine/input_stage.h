// The input stage: a batch of sequences becomes the rows the block stack computes.
//
// Cost follows the history, not L. Each sequence is planned over a compact set of rows, by
// how its block kind treats padded slots (engine/blocks/block_kind.h):
//  - collapsed (SASRec.pytorch: unmasked padded keys that stay identical at every layer): one
//    row stands for all P of them and its key gets weight P in each softmax — the same
//    softmax, computed once;
//  - skipped (padded keys masked, or never reachable): padded slots are not computed;
//  - by kind (TiSASRec, HSTU): only the real items are rows; the kind accounts for the rest;
//  - computed (or a masked model with no real item): every slot is a row.
// Then each row is embedded: item embedding (* sqrt(d)) + position embedding, the optional
// LayerNorm, padded rows zeroed where the model does so.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/blocks/block_kind.h"
#include "engine/model_spec.h"
#include "engine/weights.h"

namespace seqrec {

// One sequence as the model takes it.
struct SequenceInput {
  std::span<const int32_t> items;  // catalog rows, oldest first; the most recent max_len are the input
  std::span<const int64_t> times;  // their timestamps (the same length), for models that use time
  int64_t now = 0;                 // when the recommendation is asked for, for models that use it
};

// How one sequence is computed: its rows and who sees whom.
struct SequencePlan {
  int64_t first_row = 0;  // offset of this sequence's rows in the batch's row buffers
  int64_t n_rows = 0;
  int64_t first_slot = 0;  // the slot of the first row (slots 0..L-1; left padding puts real items last)
  int64_t kept = 0;        // items of the sequence that are input (the last `kept` of it)
  int64_t key_begin = 0;   // keys every row may see: [key_begin, key_end) ...
  int64_t key_end = 0;
  bool causal = true;          // ... and, when causal, only rows <= its own
  float first_key_weight = 1;  // row 0 stands for this many identical padded slots
  bool zero_first_row = false;  // old SASRec.pytorch zeroes padded rows after embedding and each block
  int64_t readout = 0;          // the row whose state is the user (-1: no row, an empty sequence by kind)
};

// Each sequence's read-out row of x ([rows, d], the batch's rows) into out ([plans.size(), d]);
// zeros for a sequence without rows.
void gather_readout_rows(const float* x, int64_t d, std::span<const SequencePlan> plans, float* out);

struct Workspace;  // engine/workspace.h

class InputStage {
 public:
  // Looks its weights up by name (seqrec::Error on a missing or misshapen one); `weights` must
  // outlive the stage.
  InputStage(const ModelSpec& spec, const WeightMap& weights);

  // Plans every sequence into ws.plans (and ws.item_rows, ws.positions), then embeds the rows
  // into ws.x ([rows, d], with room for the GEMMs' padded row counts). Returns the row count.
  int64_t embed(std::span<const SequenceInput> sequences, Workspace& ws) const;

  // The plan of one sequence (appending its rows to item_rows / positions).
  void plan(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows, std::vector<int32_t>& positions,
            SequencePlan& plan) const;

 private:
  void plan_every_slot(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                       std::vector<int32_t>& positions, SequencePlan& plan) const;

  ModelSpec spec_;
  PaddedSlots padded_;
  const float* item_table_ = nullptr;      // [item_table_rows, d]
  const float* position_table_ = nullptr;  // [n_positions, d] or null
  kernels::NormParams norm_;               // embed_norm's
};

}  // namespace seqrec
