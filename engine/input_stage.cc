#include "engine/input_stage.h"

#include <algorithm>
#include <cmath>

#include "engine/workspace.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"

namespace seqrec {

InputStage::InputStage(const ModelSpec& spec, const WeightMap& weights)
    : spec_(spec), padded_(block_kind_info(spec.blocks.kind).padded_slots(spec)) {
  item_table_ = weight(weights, "embedding/item/weight", {spec_.item_table_rows(), spec_.d});
  if (spec_.input.positions != Positions::none)
    position_table_ = weight(weights, "embedding/position/weight", {spec_.n_positions(), spec_.d});
  if (spec_.input.embed_norm) norm_ = norm_weights(weights, "embedding/norm", spec_.d, spec_.blocks.ln_eps);
}

// ---- planning ------------------------------------------------------------------------------

void InputStage::plan_every_slot(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                                 std::vector<int32_t>& positions, SequencePlan& plan) const {
  const int64_t slots = spec_.n_slots();
  const int64_t len = static_cast<int64_t>(sequence.size());
  const size_t base = item_rows.size();
  item_rows.resize(base + slots, 0);
  int64_t valid_begin = 0, valid_end = 0;
  if (spec_.input.padding == Padding::left) {
    valid_begin = slots - len;
    valid_end = slots;
    plan.readout = slots - 1;
  } else {
    valid_end = len;
    plan.readout = std::max<int64_t>(len - 1, 0);
  }
  std::copy(sequence.begin(), sequence.end(), item_rows.begin() + base + valid_begin);
  for (int64_t s = 0; s < slots; ++s) {
    const bool valid = s >= valid_begin && s < valid_end;
    positions.push_back(static_cast<int32_t>(spec_.input.positions == Positions::slot_or_zero ? (valid ? s + 1 : 0) : s));
  }
  plan.n_rows = slots;
  plan.first_slot = 0;
  plan.key_begin = spec_.blocks.mask_padded_keys ? valid_begin : 0;
  plan.key_end = spec_.blocks.mask_padded_keys ? valid_end : slots;
}

void InputStage::plan(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                      std::vector<int32_t>& positions, SequencePlan& plan) const {
  plan = SequencePlan{};
  plan.first_row = static_cast<int64_t>(item_rows.size());
  plan.causal = spec_.blocks.attention == AttentionKind::causal;
  const int32_t mask_row = static_cast<int32_t>(spec_.n_items);  // [MASK] follows the catalog rows
  if (static_cast<int64_t>(sequence.size()) > spec_.max_len) sequence = sequence.last(spec_.max_len);
  const int64_t len = static_cast<int64_t>(sequence.size());
  plan.kept = len;
  const bool slot_or_zero = spec_.input.positions == Positions::slot_or_zero;
  auto push = [&](int32_t item, int64_t position) {
    item_rows.push_back(item);
    positions.push_back(static_cast<int32_t>(position));
  };

  if (spec_.readout.slot != Readout::last_slot) {
    // BERT4Rec: the items, then [MASK] read out; padded keys are masked, so only these rows matter.
    const int64_t kept = spec_.readout.slot == Readout::mask_token ? len : std::max<int64_t>(len - 1, 0);
    plan.kept = kept;
    const auto first = sequence.end() - kept;
    for (int64_t i = 0; i < kept; ++i) push(first[i], i);
    push(mask_row, kept);
    plan.n_rows = kept + 1;
  } else if (padded_ == PaddedSlots::collapsed) {
    // Left padding, padded keys visible and identical: the P padded slots are one row weighted by P.
    const int64_t padded = spec_.max_len - len;
    if (padded > 0) {
      push(0, slot_or_zero ? 0 : padded - 1);
      plan.first_key_weight = static_cast<float>(padded);
      plan.zero_first_row = spec_.input.zero_padded_rows;
    }
    for (int64_t i = 0; i < len; ++i) push(sequence[i], slot_or_zero ? padded + i + 1 : padded + i);
    plan.n_rows = (padded > 0 ? 1 : 0) + len;
    plan.first_slot = padded > 0 ? padded - 1 : 0;
  } else if (padded_ == PaddedSlots::computed || (padded_ == PaddedSlots::skipped && len == 0)) {
    return plan_every_slot(sequence, item_rows, positions, plan);  // (skipped with nothing real: every slot)
  } else {
    // Only the real items (their slots are L-len..L-1 left padded, 0..len-1 right padded).
    const int64_t offset = spec_.input.padding == Padding::left ? spec_.max_len - len : 0;
    for (int64_t i = 0; i < len; ++i) push(sequence[i], slot_or_zero ? offset + i + 1 : offset + i);
    plan.n_rows = len;
    plan.first_slot = offset;
  }
  plan.key_begin = 0;
  plan.key_end = plan.n_rows;
  plan.readout = plan.n_rows - 1;
}

// ---- embedding -----------------------------------------------------------------------------

int64_t InputStage::embed(std::span<const SequenceInput> sequences, Workspace& ws) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  const int64_t d = spec_.d;
  ws.item_rows.clear();
  ws.positions.clear();
  ws.plans.resize(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) plan(sequences[b].items, ws.item_rows, ws.positions, ws.plans[b]);
  const int64_t rows = static_cast<int64_t>(ws.item_rows.size());
  // Room for the padded row counts the GEMMs may run on (kernels::padded_rows; rows >= batch).
  ws.grow(ws.x, kernels::padded_rows(std::max(rows, batch)) * d);
  float* x = ws.x.data();
  const float item_scale = spec_.input.embed_scale ? std::sqrt(static_cast<float>(d)) : 1.0f;
  kernels::gather_rows(item_table_, d, ws.item_rows.data(), rows, item_scale, x, d);
  if (position_table_) kernels::gather_add_rows(position_table_, d, ws.positions.data(), rows, x, d);
  if (spec_.input.embed_norm) kernels::layer_norm(x, d, rows, d, norm_.gamma, norm_.beta, norm_.eps, x, d);
  for (const SequencePlan& p : ws.plans)
    if (p.zero_first_row) std::fill(x + p.first_row * d, x + (p.first_row + 1) * d, 0.0f);
  return rows;
}

void gather_readout_rows(const float* x, int64_t d, std::span<const SequencePlan> plans, float* out) {
  for (size_t b = 0; b < plans.size(); ++b) {
    const SequencePlan& p = plans[b];
    float* to = out + static_cast<int64_t>(b) * d;
    if (p.n_rows > 0)
      std::copy(x + (p.first_row + p.readout) * d, x + (p.first_row + p.readout + 1) * d, to);
    else
      std::fill(to, to + d, 0.0f);
  }
}

}  // namespace seqrec
