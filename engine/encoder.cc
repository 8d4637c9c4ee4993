#include "engine/encoder.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "engine/workspace.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"

namespace seqrec {

namespace {

const float* lookup(const WeightMap& weights, const std::string& name, const std::vector<int64_t>& shape) {
  auto it = weights.find(name);
  if (it == weights.end()) throw Error("model weights: missing tensor '" + name + "'");
  if (it->second.shape != shape)
    throw Error("model weights: tensor '" + name + "': shape " + shape_string(it->second.shape) + ", expected " +
                shape_string(shape));
  return it->second.ptr();
}

// A linear layer's weight and bias, looked up and checked.
struct LinearWeights {
  const float* weight;
  const float* bias;
  int64_t out, in;
};

LinearWeights linear(const WeightMap& w, const std::string& prefix, int64_t out, int64_t in) {
  return LinearWeights{lookup(w, prefix + "/weight", {out, in}), lookup(w, prefix + "/bias", {out}), out, in};
}

// Encoder layers run on row counts known only per batch: padded shapes (see kernels/gemm.h).
// Layers that only ever see the read-out rows (a few per batch) run exact row counts: a
// 1-row product padded to 16 would cost 3x.
PackedLinear packed(const LinearWeights& w, kernels::Epilogue epilogue = kernels::Epilogue::none,
                    kernels::Rows rows = kernels::Rows::padded) {
  return PackedLinear(w.weight, w.bias, w.out, w.in, epilogue, true, rows);
}

kernels::Epilogue epilogue_of(Activation a) {
  switch (a) {
    case Activation::relu: return kernels::Epilogue::relu;
    case Activation::gelu: return kernels::Epilogue::gelu_erf;
    case Activation::gelu_tanh: return kernels::Epilogue::gelu_tanh;
    case Activation::swish: return kernels::Epilogue::swish;
    case Activation::tanh: return kernels::Epilogue::tanh;
    case Activation::sigmoid: return kernels::Epilogue::sigmoid;
  }
  return kernels::Epilogue::none;
}

LayerNormWeights layer_norm(const WeightMap& w, const std::string& prefix, int64_t d) {
  return LayerNormWeights{lookup(w, prefix + "/weight", {d}), lookup(w, prefix + "/bias", {d})};
}

// Stacks linears that read the same input into one: [out_1 + out_2 + ..., in].
PackedLinear fuse(std::initializer_list<LinearWeights> parts, std::vector<FloatBuffer>& storage) {
  const int64_t in = parts.begin()->in;
  int64_t out = 0;
  for (const LinearWeights& p : parts) out += p.out;
  FloatBuffer weight(static_cast<size_t>(out * in)), bias(static_cast<size_t>(out));
  int64_t row = 0;
  for (const LinearWeights& p : parts) {
    std::copy(p.weight, p.weight + p.out * in, weight.begin() + row * in);
    std::copy(p.bias, p.bias + p.out, bias.begin() + row);
    row += p.out;
  }
  storage.push_back(std::move(weight));
  const float* w = storage.back().data();
  storage.push_back(std::move(bias));
  return PackedLinear(w, storage.back().data(), out, in, kernels::Epilogue::none, true, kernels::Rows::padded);
}

void grow(FloatBuffer& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
}

}  // namespace

Encoder::Encoder(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
  spec_.validate();
  const int64_t d = spec_.d;
  item_table_ = lookup(weights, "embedding/item/weight", {spec_.item_table_rows(), d});
  position_table_ = lookup(weights, "embedding/position/weight", {spec_.n_positions(), d});
  if (spec_.embed_norm) embed_norm_ = layer_norm(weights, "embedding/norm", d);
  fused_.reserve(static_cast<size_t>(4 * spec_.n_layers));  // pointers into it must stay put
  for (int64_t i = 0; i < spec_.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    EncoderLayer layer;
    // The last block computes everything but keys and values for the read-out rows only.
    const kernels::Rows readout_rows = i + 1 == spec_.n_layers ? kernels::Rows::exact : kernels::Rows::padded;
    const LinearWeights q = linear(weights, p + "/attention/q", d, d);
    const LinearWeights k = linear(weights, p + "/attention/k", d, d);
    const LinearWeights v = linear(weights, p + "/attention/v", d, d);
    layer.q = packed(q, kernels::Epilogue::none, readout_rows);
    layer.kv = fuse({k, v}, fused_);
    layer.qkv = fuse({q, k, v}, fused_);
    layer.out = packed(linear(weights, p + "/attention/out", d, d), kernels::Epilogue::none, readout_rows);
    layer.attention_norm = layer_norm(weights, p + "/attention/norm", d);
    layer.ffn_inner =
        packed(linear(weights, p + "/ffn/inner", spec_.ffn_dim, d), epilogue_of(spec_.activation), readout_rows);
    layer.ffn_outer = packed(linear(weights, p + "/ffn/outer", d, spec_.ffn_dim), kernels::Epilogue::none, readout_rows);
    layer.ffn_norm = layer_norm(weights, p + "/ffn/norm", d);
    layers_.push_back(std::move(layer));
  }
  if (spec_.final_norm) final_norm_ = layer_norm(weights, "encoder/final_norm", d);
  if (spec_.head) {
    head_dense_ = packed(linear(weights, "head/dense", d, d), kernels::Epilogue::gelu_erf, kernels::Rows::exact);
    head_norm_ = layer_norm(weights, "head/norm", d);
  }
  // Compile the GEMM shapes of one request now (~0.2 ms each), not on the first requests.
  const int64_t one_request = spec_.n_slots() + 1;
  for (const EncoderLayer& layer : layers_) {
    for (const PackedLinear* l : {&layer.q, &layer.kv, &layer.qkv, &layer.out, &layer.ffn_inner})
      l->prepare(one_request, d);
    layer.ffn_outer.prepare(one_request, spec_.ffn_dim);
  }
  if (spec_.head) head_dense_.prepare(1, d);
}

// ---- planning ------------------------------------------------------------------------------

void Encoder::plan_every_slot(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                              std::vector<int32_t>& positions, SequencePlan& plan) const {
  const int64_t slots = spec_.n_slots();
  const int64_t len = static_cast<int64_t>(sequence.size());
  const size_t base = item_rows.size();
  item_rows.resize(base + slots, 0);
  int64_t valid_begin = 0, valid_end = 0;
  if (spec_.padding == Padding::left) {
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
    positions.push_back(static_cast<int32_t>(spec_.positions == Positions::slot_or_zero ? (valid ? s + 1 : 0) : s));
  }
  plan.n_rows = slots;
  plan.key_begin = spec_.mask_padded_keys ? valid_begin : 0;
  plan.key_end = spec_.mask_padded_keys ? valid_end : slots;
  plan.causal = spec_.attention == AttentionKind::causal;
}

void Encoder::plan(std::span<const int32_t> sequence, std::vector<int32_t>& item_rows,
                   std::vector<int32_t>& positions, SequencePlan& plan) const {
  plan = SequencePlan{};
  plan.first_row = static_cast<int64_t>(item_rows.size());
  plan.causal = spec_.attention == AttentionKind::causal;
  const int32_t mask_row = static_cast<int32_t>(spec_.n_items);  // [MASK] follows the catalog rows
  if (static_cast<int64_t>(sequence.size()) > spec_.max_len) sequence = sequence.last(spec_.max_len);
  const int64_t len = static_cast<int64_t>(sequence.size());
  auto push = [&](int32_t item, int64_t position) {
    item_rows.push_back(item);
    positions.push_back(static_cast<int32_t>(position));
  };

  if (spec_.readout != Readout::last_slot) {
    // BERT4Rec: the items, then [MASK] read out; padded keys are masked, so only these rows matter.
    const int64_t kept = spec_.readout == Readout::mask_token ? len : std::max<int64_t>(len - 1, 0);
    const auto first = sequence.end() - kept;
    for (int64_t i = 0; i < kept; ++i) push(first[i], i);
    push(mask_row, kept);
    plan.n_rows = kept + 1;
  } else if (!spec_.mask_padded_keys) {
    // Left padding, padded keys visible: the P padded slots are one row weighted by P —
    // valid when they are identical (position 0 for all, or zeroed every block).
    const int64_t padded = spec_.max_len - len;
    if (padded > 0 && spec_.positions != Positions::slot_or_zero && !spec_.zero_padded_rows)
      return plan_every_slot(sequence, item_rows, positions, plan);
    if (padded > 0) {
      push(0, spec_.positions == Positions::slot_or_zero ? 0 : padded - 1);
      plan.first_key_weight = static_cast<float>(padded);
      plan.zero_first_row = spec_.zero_padded_rows;
    }
    for (int64_t i = 0; i < len; ++i)
      push(sequence[i], spec_.positions == Positions::slot_or_zero ? padded + i + 1 : padded + i);
    plan.n_rows = (padded > 0 ? 1 : 0) + len;
  } else if (len > 0) {
    // Padded keys masked: real items only (their slots are 0..len-1 whichever side pads).
    const int64_t offset = spec_.padding == Padding::left ? spec_.max_len - len : 0;
    for (int64_t i = 0; i < len; ++i)
      push(sequence[i], spec_.positions == Positions::slot_or_zero ? offset + i + 1 : offset + i);
    plan.n_rows = len;
  } else {
    return plan_every_slot(sequence, item_rows, positions, plan);  // nothing real: every slot
  }
  plan.key_begin = 0;
  plan.key_end = plan.n_rows;
  plan.readout = plan.n_rows - 1;
}

// ---- computing -----------------------------------------------------------------------------

void Encoder::norm(const LayerNormWeights& w, const float* x, int64_t rows, float* y) const {
  kernels::layer_norm(x, spec_.d, rows, spec_.d, w.gamma, w.beta, spec_.ln_eps, y, spec_.d);
}

void Encoder::attend(const float* q, int64_t ld_q, bool readout_only, const float* k, const float* v, int64_t ld_kv,
                     Workspace& ws, float* context) const {
  const int64_t d = spec_.d, d_h = d / spec_.heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d_h));
  for (size_t b = 0; b < ws.plans.size(); ++b) {
    const SequencePlan& p = ws.plans[b];
    const int64_t q_row = readout_only ? static_cast<int64_t>(b) : p.first_row;
    const int64_t q_begin = readout_only ? p.readout : 0;
    const int64_t n_q = readout_only ? 1 : p.n_rows;
    for (int64_t h = 0; h < spec_.heads; ++h) {
      const int64_t col = h * d_h;
      kernels::attention_head(q + q_row * ld_q + col, ld_q, q_begin, n_q, k + p.first_row * ld_kv + col,
                              v + p.first_row * ld_kv + col, ld_kv, p.n_rows, d_h, p.key_begin, p.key_end, p.causal,
                              p.first_key_weight, scale, context + q_row * d + col, d, ws.scores.data());
    }
  }
}

kernels::NormParams Encoder::params(const LayerNormWeights& w) const { return {w.gamma, w.beta, spec_.ln_eps}; }

void Encoder::encode(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* hidden) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  if (batch == 0) return;
  const int64_t d = spec_.d;
  ws.item_rows.clear();
  ws.positions.clear();
  ws.plans.resize(static_cast<size_t>(batch));
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    plan(sequences[b], ws.item_rows, ws.positions, ws.plans[b]);
    longest = std::max(longest, ws.plans[b].n_rows);
  }
  const int64_t rows = static_cast<int64_t>(ws.item_rows.size());
  // Room for the padded row counts the GEMMs run on (kernels::padded_rows; rows >= batch).
  const int64_t capacity = kernels::padded_rows(rows);
  for (FloatBuffer* buffer : {&ws.x, &ws.normed, &ws.context, &ws.projected}) grow(*buffer, capacity * d);
  grow(ws.qkv, capacity * 3 * d);
  grow(ws.ffn, capacity * spec_.ffn_dim);
  grow(ws.scores, kernels::attention_scratch_floats(longest, d / spec_.heads));
  float* x = ws.x.data();
  float* normed = ws.normed.data();

  // Embedding: item (optionally * sqrt(d)) + position, then the optional embedding norm.
  const float item_scale = spec_.embed_scale ? std::sqrt(static_cast<float>(d)) : 1.0f;
  kernels::gather_rows(item_table_, d, ws.item_rows.data(), rows, item_scale, x, d);
  kernels::gather_add_rows(position_table_, d, ws.positions.data(), rows, x, d);
  if (spec_.embed_norm) norm(embed_norm_, x, rows, x);
  auto zero_padded = [&](float* base, bool readout_rows) {
    for (int64_t b = 0; b < batch; ++b) {
      const SequencePlan& p = ws.plans[b];
      if (!p.zero_first_row) continue;
      if (!readout_rows)
        std::fill(base + p.first_row * d, base + (p.first_row + 1) * d, 0.0f);
      else if (p.readout == 0)
        std::fill(base + b * d, base + (b + 1) * d, 0.0f);
    }
  };
  zero_padded(x, false);

  // The rows whose output is needed: all of them, except in the last block only the read-out rows.
  float* xr = hidden;  // [batch, d] the read-out rows' state through the last block
  auto gather_readout = [&](const float* from, float* to) {
    for (int64_t b = 0; b < batch; ++b) {
      const float* src = from + (ws.plans[b].first_row + ws.plans[b].readout) * d;
      std::copy(src, src + d, to + b * d);
    }
  };
  if (layers_.empty()) gather_readout(x, xr);

  for (size_t l = 0; l < layers_.size(); ++l) {
    const EncoderLayer& layer = layers_[l];
    const bool last = l + 1 == layers_.size();
    const int64_t n_q = last ? batch : rows;
    // q_src / kv_src: the attention inputs; base: what the attention output is added to.
    const float* kv_src = x;
    if (spec_.block != Block::post_ln) norm(layer.attention_norm, x, rows, normed);
    if (spec_.block == Block::pre_ln) kv_src = normed;
    const float* q_all = spec_.block == Block::post_ln ? x : normed;
    const float *q, *k, *v;
    int64_t ld_q, ld_kv;
    if (!last && q_all == kv_src) {  // one GEMM for Q | K | V
      layer.qkv.apply(kv_src, d, rows, ws.qkv.data());
      q = ws.qkv.data(), k = q + d, v = q + 2 * d, ld_q = ld_kv = 3 * d;
    } else {
      layer.kv.apply(kv_src, d, rows, ws.qkv.data());
      k = ws.qkv.data(), v = k + d, ld_kv = 2 * d;
      float* q_out = ws.qkv.data() + rows * 2 * d;  // room left by the fused layout
      if (last) {
        gather_readout(q_all, ws.context.data());  // borrow context as the gathered query input
        layer.q.apply(ws.context.data(), d, batch, q_out);
      } else {
        layer.q.apply(q_all, d, rows, q_out);
      }
      q = q_out, ld_q = d;
    }
    attend(q, ld_q, last, k, v, ld_kv, ws, ws.context.data());

    // The residual stream of the rows computed in this block.
    float* state = x;
    if (last) {
      gather_readout(spec_.block == Block::sasrec_original ? normed : x, xr);
      state = xr;
    }
    // The output projection and the FFN's second product add their residual (and apply the
    // norm that follows, if any) while the rows are in registers: see apply_add_norm.
    const kernels::NormParams attention_norm = params(layer.attention_norm), ffn_norm = params(layer.ffn_norm);
    const float* context = ws.context.data();
    float* scratch = ws.projected.data();
    switch (spec_.block) {
      case Block::pre_ln:  // x += Attn(LN(x)); x += FFN(LN(x))
        layer.out.apply_add_norm(context, d, n_q, state, state, &ffn_norm, normed, scratch);
        layer.ffn_inner.apply(normed, d, n_q, ws.ffn.data());  // activation fused
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), spec_.ffn_dim, n_q, state, state, nullptr, nullptr, scratch);
        break;
      case Block::post_ln:  // x = LN(x + Attn(x)); x = LN(x + FFN(x))
        layer.out.apply_add_norm(context, d, n_q, state, nullptr, &attention_norm, state, scratch);
        layer.ffn_inner.apply(state, d, n_q, ws.ffn.data());
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), spec_.ffn_dim, n_q, state, nullptr, &ffn_norm, state, scratch);
        break;
      case Block::sasrec_original:  // q = LN_a(x); x = q + Attn(q, x, x); x = LN_f(x); x += FFN(x)
        // The residual is the normed query rows (gathered into state for the last block).
        layer.out.apply_add_norm(context, d, n_q, last ? state : normed, nullptr, &ffn_norm, state, scratch);
        layer.ffn_inner.apply(state, d, n_q, ws.ffn.data());
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), spec_.ffn_dim, n_q, state, state, nullptr, nullptr, scratch);
        break;
    }
    zero_padded(state, last);
  }

  // Final norm and the optional head, on the read-out rows only.
  if (spec_.final_norm) norm(final_norm_, hidden, batch, hidden);
  if (spec_.head) {
    head_dense_.apply(hidden, d, batch, ws.projected.data());  // GELU fused
    norm(head_norm_, ws.projected.data(), batch, hidden);
  }
}

}  // namespace seqrec
