// A loaded model: the composition of engine/model_spec.h — input stage, block stack of one
// kind, read-out, scorer — over the weights it owns. Turns a batch of sequences into user
// states (encode), which the scorer ranks the catalog against.
#pragma once

#include <memory>
#include <span>

#include "engine/blocks/block_kind.h"
#include "engine/input_stage.h"
#include "engine/model_spec.h"
#include "engine/readout.h"
#include "engine/scorer.h"
#include "engine/weights.h"

namespace seqrec {

struct Workspace;

class Model {
 public:
  // Validates the spec and every weight's presence and shape (seqrec::Error otherwise).
  // `stored`: the scorer's tables from the model file (engine/scorer_tables.h), if any.
  Model(const ModelSpec& spec, WeightMap weights, PreScan pre_scan = PreScan::automatic,
        const StoredScorerTables& stored = {});
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const Scorer& scorer() const { return scorer_; }

  // The user state of each sequence: [batch, d] in ws.hidden (room for the GEMMs' padded row
  // counts), valid until the next call with ws. One pass of every stage for the whole batch.
  const float* encode(std::span<const SequenceInput> sequences, Workspace& ws) const;
  // encode, then every catalog row's logit: [batch, n_items] into out.
  void logits(std::span<const SequenceInput> sequences, Workspace& ws, float* out) const;

 private:
  ModelSpec spec_;
  WeightMap weights_;  // every stage points into these
  InputStage input_;
  std::unique_ptr<BlockStack> blocks_;
  ReadoutStage readout_;
  Scorer scorer_;
};

}  // namespace seqrec
