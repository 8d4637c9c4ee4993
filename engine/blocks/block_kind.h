// A kind of block stack (BlockKind in engine/model_spec.h): everything specific to the kind,
// in one place — its spec fields, their validation, its tensors' names and shapes, how it
// treats padded slots, and the stack itself. Each kind lives in its own file in this folder
// and is listed once, in kinds.cc; adding a kind touches no other kind.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/model_spec.h"
#include "engine/spec_fields.h"
#include "engine/weights.h"

namespace seqrec {

struct Workspace;  // engine/workspace.h

// How the rows of padded slots are computed (the input stage plans each sequence by it).
enum class PaddedSlots {
  skipped,    // no real row ever sees them (masked keys, or causal attention over right padding)
  collapsed,  // unmasked keys that stay identical through the stack: one row, weighted by their count
  computed,   // computed like any other slot
  by_kind,    // not computed as rows: the kind accounts for them itself (TiSASRec's position-dependent keys)
};

// n_layers blocks of one kind, built with their weights.
class BlockStack {
 public:
  virtual ~BlockStack() = default;
  // Runs every block over the batch's rows. x: [rows, d], the embedded rows of every sequence
  // as planned in ws.plans (overwritten); state: [batch, d], out — each sequence's read-out
  // row after the last block (room for kernels::padded_rows(batch) rows).
  virtual void run(Workspace& ws, float* x, float* state) const = 0;
};

struct BlockKindInfo {
  // The kind's own spec fields (n_layers, heads, ...), in a fixed order.
  void (*write_fields)(const BlockSpec& spec, FieldWriter& out);
  void (*read_fields)(FieldReader& in, BlockSpec& spec);
  // Throws seqrec::Error naming the field (the shared sizes are checked before).
  void (*validate)(const ModelSpec& spec);
  void (*declare_tensors)(const ModelSpec& spec, std::vector<TensorDecl>& out);
  PaddedSlots (*padded_slots)(const ModelSpec& spec);
  std::unique_ptr<BlockStack> (*make)(const ModelSpec& spec, const WeightMap& weights);
};

const BlockKindInfo& block_kind_info(BlockKind kind);

}  // namespace seqrec
