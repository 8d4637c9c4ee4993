#include "engine/model.h"

#include "engine/workspace.h"

namespace seqrec {

namespace {
const ModelSpec& validated(const ModelSpec& spec) {
  spec.validate();
  return spec;
}
}  // namespace

Model::Model(const ModelSpec& spec, WeightMap weights, PreScan pre_scan, const StoredScorerTables& stored)
    : spec_(validated(spec)),
      weights_(std::move(weights)),
      input_(spec_, weights_),
      blocks_(block_kind_info(spec_.blocks.kind).make(spec_, weights_)),
      readout_(spec_, weights_),
      scorer_(spec_, weights_, pre_scan, stored) {}

const float* Model::encode(std::span<const SequenceInput> sequences, Workspace& ws) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  ws.grow(ws.hidden, kernels::padded_rows(batch) * spec_.d);
  if (batch == 0) return ws.hidden.data();
  ws.inputs = sequences;
  input_.embed(sequences, ws);
  blocks_->run(ws, ws.x.data(), ws.hidden.data());
  readout_.apply(ws.hidden.data(), batch, ws);
  ws.inputs = {};
  return ws.hidden.data();
}

void Model::logits(std::span<const SequenceInput> sequences, Workspace& ws, float* out) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  if (batch == 0) return;
  scorer_.logits(encode(sequences, ws), batch, out);
}

}  // namespace seqrec
