// The transformer block kinds (pre_ln, post_ln, sasrec_original): SASRec.pytorch, RecBole's
// SASRec and BERT4Rec, gSASRec. Multi-head scaled dot-product attention (optionally without
// an output projection), a two-layer FFN, residuals and LayerNorms placed by the kind:
//   pre_ln:           x += Attn(LN(x)); x += FFN(LN(x))
//   post_ln:          x = LN(x + Attn(x)); x = LN(x + FFN(x))
//   sasrec_original:  q = LN_a(x); x = q + Attn(query=q, key=x, value=x); x = LN_f(x); x += FFN(x)
//
// Weights, layer i: encoder/layer_i/attention/{q,k,v,out}/{weight [d, d], bias [d]} (no out
// without out_projection), attention/norm, ffn/inner [ffn_dim, d], ffn/outer [d, ffn_dim],
// ffn/norm. The last block computes keys and values for every row but everything else only
// for the read-out rows: nothing else is read.
#include <algorithm>
#include <cmath>

#include "engine/blocks/block_kind.h"
#include "engine/error.h"
#include "engine/workspace.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"

namespace seqrec {

namespace {

using kernels::PackedLinear;

kernels::Epilogue epilogue_of(Activation a) {
  switch (a) {
    case Activation::none: return kernels::Epilogue::none;
    case Activation::relu: return kernels::Epilogue::relu;
    case Activation::gelu: return kernels::Epilogue::gelu_erf;
    case Activation::gelu_tanh: return kernels::Epilogue::gelu_tanh;
    case Activation::swish: return kernels::Epilogue::swish;
    case Activation::tanh: return kernels::Epilogue::tanh;
    case Activation::sigmoid: return kernels::Epilogue::sigmoid;
  }
  return kernels::Epilogue::none;
}

// Encoder layers run on row counts known only per batch (padded shapes, kernels/gemm.h).
// Layers that only ever see the read-out rows (a few per batch) run exact row counts: a 1-row
// product padded to 16 would cost 3x.
PackedLinear packed(const LinearWeights& w, kernels::Epilogue epilogue, kernels::Rows rows) {
  return PackedLinear(w.weight, w.bias, w.out, w.in, epilogue, true, rows);
}

// Stacks linears that read the same input into one: [out_1 + out_2 + ..., in]. The stacked
// weights go to `storage` (a layer too large to pack reads them in place).
PackedLinear fuse(std::initializer_list<LinearWeights> parts, kernels::Rows rows, std::vector<FloatBuffer>& storage) {
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
  return PackedLinear(w, storage.back().data(), out, in, kernels::Epilogue::none, true, rows);
}

struct Layer {
  // Only the projections the layer's path uses are packed: Q | K | V fused where one input
  // feeds all three (pre_ln, post_ln, every block but the last), else Q apart and K | V fused.
  PackedLinear qkv, q, kv;
  PackedLinear out;  // empty without an output projection
  kernels::NormParams attention_norm;
  PackedLinear ffn_inner, ffn_outer;  // the activation is fused into ffn_inner
  kernels::NormParams ffn_norm;
};

class TransformerStack final : public BlockStack {
 public:
  TransformerStack(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
    const int64_t d = spec.d;
    const BlockSpec& b = spec.blocks;
    fused_.reserve(static_cast<size_t>(4 * b.n_layers));  // pointers into it must stay put
    for (int64_t i = 0; i < b.n_layers; ++i) {
      const std::string p = tensor_names::layer(i);
      const bool last = i + 1 == b.n_layers;
      Layer layer;
      // The last block computes everything but keys and values for the read-out rows only.
      const kernels::Rows rows = last ? kernels::Rows::exact : kernels::Rows::padded;
      const LinearWeights q = linear_weights(weights, p + "/attention/q", d, d);
      const LinearWeights k = linear_weights(weights, p + "/attention/k", d, d);
      const LinearWeights v = linear_weights(weights, p + "/attention/v", d, d);
      if (fused_qkv(last)) {
        layer.qkv = fuse({q, k, v}, kernels::Rows::padded, fused_);
      } else {
        layer.q = packed(q, kernels::Epilogue::none, rows);
        layer.kv = fuse({k, v}, kernels::Rows::padded, fused_);
      }
      if (b.out_projection)
        layer.out = packed(linear_weights(weights, p + "/attention/out", d, d), kernels::Epilogue::none, rows);
      layer.attention_norm = norm_weights(weights, p + "/attention/norm", d, b.ln_eps);
      layer.ffn_inner = packed(linear_weights(weights, p + "/ffn/inner", b.ffn_dim, d), epilogue_of(b.activation), rows);
      layer.ffn_outer = packed(linear_weights(weights, p + "/ffn/outer", d, b.ffn_dim), kernels::Epilogue::none, rows);
      layer.ffn_norm = norm_weights(weights, p + "/ffn/norm", d, b.ln_eps);
      layers_.push_back(std::move(layer));
    }
    // Compile the GEMM shapes of one request now (~0.2 ms each), not on the first requests.
    const int64_t one_request = spec.n_slots() + 1;
    for (const Layer& layer : layers_) {
      for (const PackedLinear* l : {&layer.qkv, &layer.q, &layer.kv, &layer.out, &layer.ffn_inner})
        if (l->out() > 0) l->prepare(one_request, d);
      layer.ffn_outer.prepare(one_request, b.ffn_dim);
    }
  }

  void run(Workspace& ws, float* x, float* state_out) const override;

 private:
  bool fused_qkv(bool last) const { return !last && spec_.blocks.kind != BlockKind::sasrec_original; }
  // context rows (one per query) = attention of the given query rows over each sequence's keys.
  void attend(const float* q, int64_t ld_q, bool readout_only, const float* k, const float* v, int64_t ld_kv,
              Workspace& ws, float* context) const;
  // s = context·Woᵀ + b (or context itself without an output projection) + residual, then
  // sum_out = s (if not null) and normed_out = LN(s) (if norm): see PackedLinear::apply_add_norm.
  void project_add_norm(const Layer& layer, const float* context, int64_t rows, const float* residual, float* sum_out,
                        const kernels::NormParams* norm, float* normed_out, float* scratch) const;

  ModelSpec spec_;
  std::vector<FloatBuffer> fused_;  // the stacked projection weights
  std::vector<Layer> layers_;
};

void TransformerStack::attend(const float* q, int64_t ld_q, bool readout_only, const float* k, const float* v,
                              int64_t ld_kv, Workspace& ws, float* context) const {
  const int64_t d = spec_.d, heads = spec_.blocks.heads, d_h = d / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d_h));
  for (size_t b = 0; b < ws.plans.size(); ++b) {
    const SequencePlan& p = ws.plans[b];
    const int64_t q_row = readout_only ? static_cast<int64_t>(b) : p.first_row;
    const int64_t q_begin = readout_only ? p.readout : 0;
    const int64_t n_q = readout_only ? 1 : p.n_rows;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t col = h * d_h;
      kernels::attention_head(q + q_row * ld_q + col, ld_q, q_begin, n_q, k + p.first_row * ld_kv + col,
                              v + p.first_row * ld_kv + col, ld_kv, p.n_rows, d_h, p.key_begin, p.key_end, p.causal,
                              p.first_key_weight, scale, context + q_row * d + col, d, ws.scores.data());
    }
  }
}

void TransformerStack::project_add_norm(const Layer& layer, const float* context, int64_t rows, const float* residual,
                                        float* sum_out, const kernels::NormParams* norm, float* normed_out,
                                        float* scratch) const {
  if (layer.out.out() > 0)
    return layer.out.apply_add_norm(context, spec_.d, rows, residual, sum_out, norm, normed_out, scratch);
  // No output projection (gSASRec): the heads' outputs are added to the residual as they are.
  const int64_t d = spec_.d;
  float* sum = sum_out ? sum_out : normed_out;
  for (int64_t i = 0; i < rows * d; ++i) sum[i] = context[i] + residual[i];
  if (norm) kernels::layer_norm(sum, d, rows, d, norm->gamma, norm->beta, norm->eps, normed_out, d);
}

void TransformerStack::run(Workspace& ws, float* x, float* xr) const {
  const int64_t batch = static_cast<int64_t>(ws.plans.size());
  const int64_t d = spec_.d, ffn_dim = spec_.blocks.ffn_dim;
  const int64_t rows = static_cast<int64_t>(ws.item_rows.size());
  const int64_t capacity = kernels::padded_rows(std::max(rows, batch));
  int64_t longest = 0;
  for (const SequencePlan& p : ws.plans) longest = std::max(longest, p.n_rows);
  for (FloatBuffer* buffer : {&ws.normed, &ws.context, &ws.projected}) ws.grow(*buffer, capacity * d);
  ws.grow(ws.qkv, capacity * 3 * d);
  ws.grow(ws.ffn, capacity * ffn_dim);
  ws.grow(ws.scores, kernels::attention_scratch_floats(longest, d / spec_.blocks.heads));
  float* normed = ws.normed.data();
  const BlockKind kind = spec_.blocks.kind;

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
  // xr: [batch, d] the read-out rows' state through the last block.
  auto gather_readout = [&](const float* from, float* to) {
    for (int64_t b = 0; b < batch; ++b) {
      const float* src = from + (ws.plans[b].first_row + ws.plans[b].readout) * d;
      std::copy(src, src + d, to + b * d);
    }
  };
  if (layers_.empty()) gather_readout(x, xr);

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const bool last = l + 1 == layers_.size();
    const int64_t n_q = last ? batch : rows;
    // kv_src: the attention's key/value input; q_all: its query input.
    const float* kv_src = x;
    if (kind != BlockKind::post_ln) kernels::layer_norm(x, d, rows, d, layer.attention_norm.gamma,
                                                        layer.attention_norm.beta, layer.attention_norm.eps, normed, d);
    if (kind == BlockKind::pre_ln) kv_src = normed;
    const float* q_all = kind == BlockKind::post_ln ? x : normed;
    const float *q, *k, *v;
    int64_t ld_q, ld_kv;
    if (fused_qkv(last)) {  // one GEMM for Q | K | V
      layer.qkv.apply(kv_src, d, rows, ws.qkv.data());
      q = ws.qkv.data(), k = q + d, v = q + 2 * d, ld_q = ld_kv = 3 * d;
    } else {
      layer.kv.apply(kv_src, d, rows, ws.qkv.data());
      k = ws.qkv.data(), v = k + d, ld_kv = 2 * d;
      float* q_out = ws.qkv.data() + capacity * 2 * d;  // room left by the fused layout
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
      gather_readout(kind == BlockKind::sasrec_original ? normed : x, xr);
      state = xr;
    }
    // The output projection and the FFN's second product add their residual (and apply the
    // norm that follows, if any) while the rows are in registers: see apply_add_norm.
    const float* context = ws.context.data();
    float* scratch = ws.projected.data();
    switch (kind) {
      case BlockKind::pre_ln:  // x += Attn(LN(x)); x += FFN(LN(x))
        project_add_norm(layer, context, n_q, state, state, &layer.ffn_norm, normed, scratch);
        layer.ffn_inner.apply(normed, d, n_q, ws.ffn.data());  // activation fused
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), ffn_dim, n_q, state, state, nullptr, nullptr, scratch);
        break;
      case BlockKind::post_ln:  // x = LN(x + Attn(x)); x = LN(x + FFN(x))
        project_add_norm(layer, context, n_q, state, nullptr, &layer.attention_norm, state, scratch);
        layer.ffn_inner.apply(state, d, n_q, ws.ffn.data());
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), ffn_dim, n_q, state, nullptr, &layer.ffn_norm, state, scratch);
        break;
      default:  // sasrec_original: q = LN_a(x); x = q + Attn(q, x, x); x = LN_f(x); x += FFN(x)
        // The residual is the normed query rows (gathered into state for the last block).
        project_add_norm(layer, context, n_q, last ? state : normed, nullptr, &layer.ffn_norm, state, scratch);
        layer.ffn_inner.apply(state, d, n_q, ws.ffn.data());
        layer.ffn_outer.apply_add_norm(ws.ffn.data(), ffn_dim, n_q, state, state, nullptr, nullptr, scratch);
        break;
    }
    zero_padded(state, last);
  }
}

// ---- the kind ------------------------------------------------------------------------------

void write_fields(const BlockSpec& b, FieldWriter& w) {
  w.enumeration("attention", b.attention);
  w.flag("mask_padded_keys", b.mask_padded_keys);
  w.enumeration("activation", b.activation);
  w.number("ln_eps", b.ln_eps);
  w.integer("heads", b.heads);
  w.integer("ffn_dim", b.ffn_dim);
  w.integer("n_layers", b.n_layers);
  w.flag("out_projection", b.out_projection);
}

void read_fields(FieldReader& r, BlockSpec& b) {
  b.attention = r.enumeration("attention", parse_attention);
  b.mask_padded_keys = r.flag("mask_padded_keys");
  b.activation = r.enumeration("activation", parse_activation);
  b.ln_eps = r.number("ln_eps");
  b.heads = r.integer("heads");
  b.ffn_dim = r.integer("ffn_dim");
  b.n_layers = r.integer("n_layers");
  b.out_projection = r.flag_or("out_projection", true);
}

void validate(const ModelSpec& s) {
  const BlockSpec& b = s.blocks;
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("model spec: " + message);
  };
  require(s.d % b.heads == 0, "heads = " + std::to_string(b.heads) + " does not divide d = " + std::to_string(s.d));
  require(b.ffn_dim > 0 && b.ffn_dim <= (int64_t{1} << 18), "ffn_dim = " + std::to_string(b.ffn_dim) + " (expected > 0)");
  require(s.input.positions != Positions::none, "positions = none needs a block kind with positions inside attention");
  require(!(s.input.padding == Padding::right && !b.mask_padded_keys && b.attention == AttentionKind::bidirectional),
          "right padding with bidirectional attention needs mask_padded_keys");
}

void declare_tensors(const ModelSpec& s, std::vector<TensorDecl>& out) {
  const int64_t d = s.d;
  for (int64_t i = 0; i < s.blocks.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    declare_linear(out, p + "/attention/q", d, d);
    declare_linear(out, p + "/attention/k", d, d);
    declare_linear(out, p + "/attention/v", d, d);
    if (s.blocks.out_projection) declare_linear(out, p + "/attention/out", d, d);
    declare_norm(out, p + "/attention/norm", d);
    declare_linear(out, p + "/ffn/inner", s.blocks.ffn_dim, d);
    declare_linear(out, p + "/ffn/outer", d, s.blocks.ffn_dim);
    declare_norm(out, p + "/ffn/norm", d);
  }
}

PaddedSlots padded_slots(const ModelSpec& s) {
  if (s.blocks.mask_padded_keys) return PaddedSlots::skipped;
  // Causal attention over right padding: no real row ever reaches a padded slot.
  if (s.input.padding == Padding::right) return PaddedSlots::skipped;
  // Left-padded unmasked keys stay identical when they share a position (0) or are zeroed.
  if (s.input.positions == Positions::slot_or_zero || s.input.zero_padded_rows) return PaddedSlots::collapsed;
  return PaddedSlots::computed;
}

std::unique_ptr<BlockStack> make(const ModelSpec& spec, const WeightMap& weights) {
  return std::make_unique<TransformerStack>(spec, weights);
}

}  // namespace

const BlockKindInfo& transformer_kind() {
  static const BlockKindInfo info{write_fields, read_fields, validate, declare_tensors, padded_slots, make};
  return info;
}

}  // namespace seqrec
