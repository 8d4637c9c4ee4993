// TiSASRec (Li et al., WSDM'20; pmixer/TiSASRec.pytorch): self-attention over time intervals.
//
// Per block, over the left-padded window of L slots (docs/sources/tisasrec.md has the source's lines):
//   q = LN_a(x);  Q = q·W_qᵀ + b_q;  K = x·W_kᵀ + b_k;  V = x·W_vᵀ + b_v   (K, V from x itself)
//   s_ij = (Q_i·(K_j + P^K_j) + Q_i·T^K[r_ij]) / sqrt(d_h)   causal; padded keys are NOT masked
//   x = q + Σ_j softmax(s)_ij · (V_j + P^V_j + T^V[r_ij])   (no output projection)
//   f = LN_f(x);  x = f + FFN(f)   (ReLU, or none in the published 2020-09 generation)
// P^K, P^V: absolute position tables [L, d] (slot j's row, padding included); T^K, T^V: time
// interval tables [time_span + 1, d]; r_ij = min(|t'_i − t'_j|, time_span) with t' the
// source's time normalisation (below) and t' = 0 for padded slots. Padded rows are zero after
// every block, so they are never computed: a padded key is just b_k + P^K_j (value b_v + P^V_j)
// and its interval to query i is min(t'_i, time_span).
//
// Weights: encoder/position_{key,value}/weight [L, d], encoder/time_{key,value}/weight
// [time_span + 1, d], and per layer i: encoder/layer_i/attention/{q,k,v}, attention/norm,
// ffn/inner, ffn/outer [d, d], ffn/norm.
#include <algorithm>
#include <cmath>

#include "engine/blocks/block_kind.h"
#include "engine/error.h"
#include "engine/workspace.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"
#include "kernels/relative_attention.h"

namespace seqrec {

namespace {

using kernels::PackedLinear;

struct Layer {
  PackedLinear q, kv;  // Q from the normed rows; K | V fused, from x
  const float* k_bias = nullptr;  // [d]: a padded slot's key (its x is 0)
  const float* v_bias = nullptr;
  kernels::NormParams attention_norm, ffn_norm;
  PackedLinear ffn_inner, ffn_outer;
};

// t' of the source's data pipeline (TiSASRec.pytorch utils.py, cleanAndsort): over the whole
// history (oldest first), scale = the smallest non-zero gap between consecutive timestamps (1
// if none), t' = round_half_even((t − t_min) / scale) + 1 in double. Writes the last `kept`.
void normalised_times(std::span<const int64_t> times, int64_t kept, int64_t* out) {
  const int64_t n = static_cast<int64_t>(times.size());
  int64_t scale = 0;
  for (int64_t k = 1; k < n; ++k) {
    const int64_t gap = times[k] - times[k - 1];
    if (gap != 0 && (scale == 0 || gap < scale)) scale = gap;
  }
  if (scale == 0) scale = 1;
  const int64_t t_min = n > 0 ? *std::min_element(times.begin(), times.end()) : 0;
  for (int64_t k = n - kept; k < n; ++k)
    out[k - (n - kept)] =
        static_cast<int64_t>(std::nearbyint(static_cast<double>(times[k] - t_min) / static_cast<double>(scale))) + 1;
}

class TisasrecStack final : public BlockStack {
 public:
  TisasrecStack(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
    const int64_t d = spec.d, L = spec.max_len, span = spec.blocks.time_span;
    position_key_ = weight(weights, "encoder/position_key/weight", {L, d});
    position_value_ = weight(weights, "encoder/position_value/weight", {L, d});
    time_key_ = weight(weights, "encoder/time_key/weight", {span + 1, d});
    time_value_ = weight(weights, "encoder/time_value/weight", {span + 1, d});
    const kernels::Epilogue act =
        spec.blocks.activation == Activation::relu ? kernels::Epilogue::relu : kernels::Epilogue::none;
    fused_.reserve(static_cast<size_t>(2 * spec.blocks.n_layers));
    for (int64_t i = 0; i < spec.blocks.n_layers; ++i) {
      const std::string p = tensor_names::layer(i);
      const bool last = i + 1 == spec.blocks.n_layers;
      const kernels::Rows rows = last ? kernels::Rows::exact : kernels::Rows::padded;
      Layer layer;
      const LinearWeights q = linear_weights(weights, p + "/attention/q", d, d);
      const LinearWeights k = linear_weights(weights, p + "/attention/k", d, d);
      const LinearWeights v = linear_weights(weights, p + "/attention/v", d, d);
      layer.q = PackedLinear(q.weight, q.bias, d, d, kernels::Epilogue::none, true, rows);
      FloatBuffer kv_weight(static_cast<size_t>(2 * d * d)), kv_bias(static_cast<size_t>(2 * d));
      std::copy(k.weight, k.weight + d * d, kv_weight.begin());
      std::copy(v.weight, v.weight + d * d, kv_weight.begin() + d * d);
      std::copy(k.bias, k.bias + d, kv_bias.begin());
      std::copy(v.bias, v.bias + d, kv_bias.begin() + d);
      fused_.push_back(std::move(kv_weight));
      fused_.push_back(std::move(kv_bias));
      layer.kv = PackedLinear(fused_[fused_.size() - 2].data(), fused_.back().data(), 2 * d, d,
                              kernels::Epilogue::none, true, kernels::Rows::padded);
      layer.k_bias = k.bias;
      layer.v_bias = v.bias;
      layer.attention_norm = norm_weights(weights, p + "/attention/norm", d, spec.blocks.ln_eps);
      layer.ffn_norm = norm_weights(weights, p + "/ffn/norm", d, spec.blocks.ln_eps);
      const LinearWeights inner = linear_weights(weights, p + "/ffn/inner", d, d);
      const LinearWeights outer = linear_weights(weights, p + "/ffn/outer", d, d);
      layer.ffn_inner = PackedLinear(inner.weight, inner.bias, d, d, act, true, rows);
      layer.ffn_outer = PackedLinear(outer.weight, outer.bias, d, d, kernels::Epilogue::none, true, rows);
      layers_.push_back(std::move(layer));
    }
  }

  void run(Workspace& ws, float* x, float* state) const override;

 private:
  ModelSpec spec_;
  const float* position_key_ = nullptr;    // [L, d]
  const float* position_value_ = nullptr;  // [L, d]
  const float* time_key_ = nullptr;        // [time_span + 1, d]
  const float* time_value_ = nullptr;
  std::vector<FloatBuffer> fused_;
  std::vector<Layer> layers_;
};

void TisasrecStack::run(Workspace& ws, float* x, float* state) const {
  const int64_t batch = static_cast<int64_t>(ws.plans.size());
  const int64_t d = spec_.d, L = spec_.max_len, span = spec_.blocks.time_span;
  const int64_t heads = spec_.blocks.heads, d_h = d / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d_h));
  const int64_t rows = static_cast<int64_t>(ws.item_rows.size());
  const int64_t capacity = kernels::padded_rows(std::max(rows, batch));
  for (FloatBuffer* buffer : {&ws.normed, &ws.context, &ws.projected, &ws.ffn}) ws.grow(*buffer, capacity * d);
  ws.grow(ws.qkv, capacity * 3 * d);
  ws.grow(ws.pair_keys, batch * L * d);
  ws.grow(ws.pair_values, batch * L * d);
  ws.grow(ws.scores, kernels::relation_attention_scratch_floats(L, span + 1));

  // Each sequence's intervals r_ij = min(|t'_i − t'_slot|, span) over its L slots (t' = 0 for
  // padding), for its real rows i: [n_rows, L] from ws.relations[first_row * L].
  ws.relations.resize(static_cast<size_t>(rows * L));
  std::vector<int64_t>& t = ws.row_times;
  for (int64_t b = 0; b < batch; ++b) {
    const SequencePlan& p = ws.plans[b];
    if (p.n_rows == 0) continue;
    const SequenceInput& in = ws.inputs[b];
    if (static_cast<int64_t>(in.times.size()) != static_cast<int64_t>(in.items.size()))
      throw Error("tisasrec: every interaction of the sequence needs a timestamp");
    t.assign(static_cast<size_t>(L), 0);
    normalised_times(in.times, p.kept, t.data() + p.first_slot);
    for (int64_t i = 0; i < p.n_rows; ++i) {
      int32_t* r = ws.relations.data() + (p.first_row + i) * L;
      const int64_t ti = t[p.first_slot + i];
      for (int64_t j = 0; j < L; ++j) r[j] = static_cast<int32_t>(std::min<int64_t>(std::abs(ti - t[j]), span));
    }
  }

  float* normed = ws.normed.data();
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const bool last = l + 1 == layers_.size();
    kernels::layer_norm(x, d, rows, d, layer.attention_norm.gamma, layer.attention_norm.beta,
                        layer.attention_norm.eps, normed, d);
    float* kv = ws.qkv.data();                 // [rows, 2d]: K | V of the real rows
    float* q = ws.qkv.data() + capacity * 2 * d;  // [rows or batch, d]
    layer.kv.apply(x, d, rows, kv);
    // The query rows: every row, or in the last block only each sequence's read-out row.
    const float* q_input = normed;
    int64_t n_q_rows = rows;
    if (last) {
      for (int64_t b = 0; b < batch; ++b) {
        const SequencePlan& p = ws.plans[b];
        const float* src = p.n_rows > 0 ? normed + (p.first_row + p.readout) * d : nullptr;
        if (src)
          std::copy(src, src + d, ws.projected.data() + b * d);
        else
          std::fill(ws.projected.data() + b * d, ws.projected.data() + (b + 1) * d, 0.0f);
      }
      q_input = ws.projected.data();
      n_q_rows = batch;
    }
    layer.q.apply(q_input, d, n_q_rows, q);

    float* context = ws.context.data();  // [n_q_rows, d]
    for (int64_t b = 0; b < batch; ++b) {
      const SequencePlan& p = ws.plans[b];
      if (p.n_rows == 0) {  // an empty history: its read-out row is a zeroed padded slot
        if (last) std::fill(context + b * d, context + (b + 1) * d, 0.0f);
        continue;
      }
      // The L slots' keys and values: padded slots (x = 0) hold the projections' biases.
      float* keys = ws.pair_keys.data() + b * L * d;
      float* values = ws.pair_values.data() + b * L * d;
      for (int64_t s = 0; s < L; ++s) {
        const bool real = s >= p.first_slot;
        const float* k_src = real ? kv + (p.first_row + s - p.first_slot) * 2 * d : layer.k_bias;
        const float* v_src = real ? kv + (p.first_row + s - p.first_slot) * 2 * d + d : layer.v_bias;
        for (int64_t c = 0; c < d; ++c) {
          keys[s * d + c] = k_src[c] + position_key_[s * d + c];
          values[s * d + c] = v_src[c] + position_value_[s * d + c];
        }
      }
      const int64_t q_row = last ? b : p.first_row;
      const int64_t n_q = last ? 1 : p.n_rows;
      const int64_t first_query = last ? p.readout : 0;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t col = h * d_h;
        kernels::relation_attention_head(q + q_row * d + col, d, n_q, keys + col, values + col, d, L, d_h,
                                         time_key_ + col, time_value_ + col, d, span + 1,
                                         ws.relations.data() + (p.first_row + first_query) * L, L,
                                         p.first_slot + first_query, scale, context + q_row * d + col, d,
                                         ws.scores.data());
      }
    }
    // x = q + attention (the normed query rows are the residual); f = LN_f(x); x = f + FFN(f).
    float* out = last ? state : x;
    const float* residual = last ? ws.projected.data() : normed;
    for (int64_t i = 0; i < n_q_rows * d; ++i) out[i] = residual[i] + context[i];
    kernels::layer_norm(out, d, n_q_rows, d, layer.ffn_norm.gamma, layer.ffn_norm.beta, layer.ffn_norm.eps, out, d);
    layer.ffn_inner.apply(out, d, n_q_rows, ws.ffn.data());
    layer.ffn_outer.apply_add_norm(ws.ffn.data(), d, n_q_rows, out, out, nullptr, nullptr, ws.context.data());
    if (last)
      for (int64_t b = 0; b < batch; ++b)
        if (ws.plans[b].n_rows == 0) std::fill(state + b * d, state + (b + 1) * d, 0.0f);
  }
  if (layers_.empty())
    gather_readout_rows(x, d, {ws.plans.data(), static_cast<size_t>(batch)}, state);
}

// ---- the kind ------------------------------------------------------------------------------

void write_fields(const BlockSpec& b, FieldWriter& w) {
  w.enumeration("activation", b.activation);
  w.number("ln_eps", b.ln_eps);
  w.integer("heads", b.heads);
  w.integer("n_layers", b.n_layers);
  w.integer("time_span", b.time_span);
}

void read_fields(FieldReader& r, BlockSpec& b) {
  b.activation = r.enumeration("activation", parse_activation);
  b.ln_eps = r.number("ln_eps");
  b.heads = r.integer("heads");
  b.n_layers = r.integer("n_layers");
  b.time_span = r.integer("time_span");
  b.attention = AttentionKind::causal;
  b.mask_padded_keys = false;
  b.out_projection = false;
}

void validate(const ModelSpec& s) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("model spec: " + message);
  };
  const BlockSpec& b = s.blocks;
  require(s.d % b.heads == 0, "heads = " + std::to_string(b.heads) + " does not divide d = " + std::to_string(s.d));
  require(b.activation == Activation::none || b.activation == Activation::relu,
          std::string("tisasrec: activation = ") + to_string(b.activation) + " (expected none|relu)");
  require(b.time_span >= 1 && b.time_span <= (int64_t{1} << 24),
          "tisasrec: time_span = " + std::to_string(b.time_span) + " (expected 1..2^24)");
  require(s.input.positions == Positions::none && s.input.padding == Padding::left && !s.input.embed_norm,
          "tisasrec: the input is the item embedding alone, left padded (positions = none, padding = left, "
          "embed_norm = false)");
}

void declare_tensors(const ModelSpec& s, std::vector<TensorDecl>& out) {
  const int64_t d = s.d;
  out.push_back({"encoder/position_key/weight", {s.max_len, d}});
  out.push_back({"encoder/position_value/weight", {s.max_len, d}});
  out.push_back({"encoder/time_key/weight", {s.blocks.time_span + 1, d}});
  out.push_back({"encoder/time_value/weight", {s.blocks.time_span + 1, d}});
  for (int64_t i = 0; i < s.blocks.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    declare_norm(out, p + "/attention/norm", d);
    declare_linear(out, p + "/attention/q", d, d);
    declare_linear(out, p + "/attention/k", d, d);
    declare_linear(out, p + "/attention/v", d, d);
    declare_norm(out, p + "/ffn/norm", d);
    declare_linear(out, p + "/ffn/inner", d, d);
    declare_linear(out, p + "/ffn/outer", d, d);
  }
}

PaddedSlots padded_slots(const ModelSpec&) { return PaddedSlots::by_kind; }

std::unique_ptr<BlockStack> make(const ModelSpec& spec, const WeightMap& weights) {
  return std::make_unique<TisasrecStack>(spec, weights);
}

}  // namespace

const BlockKindInfo& tisasrec_kind() {
  static const BlockKindInfo info{write_fields, read_fields, validate, declare_tensors, padded_slots, make};
  return info;
}

}  // namespace seqrec
