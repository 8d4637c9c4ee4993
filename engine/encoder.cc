#include "engine/encoder.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"

namespace seqrec {

void Linear::apply(const float* x, int64_t ld_x, int64_t rows, float* y) const {
  kernels::sgemm(false, true, rows, out, in, 1.0f, x, ld_x, weight, in, 0.0f, y, out);
  kernels::add_bias(y, rows, out, bias);
}

namespace {

const float* lookup(const WeightMap& weights, const std::string& name, const std::vector<int64_t>& shape) {
  auto it = weights.find(name);
  if (it == weights.end()) throw Error("model weights: missing tensor '" + name + "'");
  if (it->second.shape != shape)
    throw Error("model weights: tensor '" + name + "': shape " + shape_string(it->second.shape) + ", expected " +
                shape_string(shape));
  return it->second.ptr();
}

Linear linear(const WeightMap& w, const std::string& prefix, int64_t out, int64_t in) {
  return Linear{lookup(w, prefix + "/weight", {out, in}), lookup(w, prefix + "/bias", {out}), out, in};
}

LayerNormWeights layer_norm(const WeightMap& w, const std::string& prefix, int64_t d) {
  return LayerNormWeights{lookup(w, prefix + "/weight", {d}), lookup(w, prefix + "/bias", {d})};
}

void grow(FloatBuffer& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
}

}  // namespace

Encoder::Encoder(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
  spec_.validate();
  const int64_t d = spec_.d;
  item_table_ = lookup(weights, "embedding/item/weight", {spec_.item_table_rows(), d});
  position_table_ = lookup(weights, "embedding/position/weight", {spec_.n_positions(), d});
  if (spec_.embed_norm) embed_norm_ = layer_norm(weights, "embedding/norm", d);
  for (int64_t i = 0; i < spec_.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    EncoderLayer layer;
    layer.q = linear(weights, p + "/attention/q", d, d);
    layer.k = linear(weights, p + "/attention/k", d, d);
    layer.v = linear(weights, p + "/attention/v", d, d);
    layer.out = linear(weights, p + "/attention/out", d, d);
    layer.attention_norm = layer_norm(weights, p + "/attention/norm", d);
    layer.ffn_inner = linear(weights, p + "/ffn/inner", spec_.ffn_dim, d);
    layer.ffn_outer = linear(weights, p + "/ffn/outer", d, spec_.ffn_dim);
    layer.ffn_norm = layer_norm(weights, p + "/ffn/norm", d);
    layers_.push_back(layer);
  }
  if (spec_.final_norm) final_norm_ = layer_norm(weights, "encoder/final_norm", d);
  if (spec_.head) {
    head_dense_ = linear(weights, "head/dense", d, d);
    head_norm_ = layer_norm(weights, "head/norm", d);
  }
}

SlotLayout Encoder::layout(std::span<const int32_t> sequence) const {
  const int64_t slots = spec_.n_slots();
  const int64_t mask_row = spec_.n_items;  // the [MASK] row follows the catalog rows
  // The most recent max_len items are the model's input.
  if (static_cast<int64_t>(sequence.size()) > spec_.max_len) sequence = sequence.last(spec_.max_len);
  const int64_t len = static_cast<int64_t>(sequence.size());

  SlotLayout out;
  out.item_rows.assign(slots, 0);
  switch (spec_.readout) {
    case Readout::last_slot:
      if (spec_.padding == Padding::left) {
        out.valid_begin = slots - len;
        out.valid_end = slots;
        out.readout = slots - 1;
      } else {
        out.valid_begin = 0;
        out.valid_end = len;
        out.readout = std::max<int64_t>(len - 1, 0);
      }
      std::copy(sequence.begin(), sequence.end(), out.item_rows.begin() + out.valid_begin);
      break;
    case Readout::mask_token:  // L+1 slots: the items, then [MASK]
      std::copy(sequence.begin(), sequence.end(), out.item_rows.begin());
      out.item_rows[len] = mask_row;
      out.valid_end = len + 1;
      out.readout = len;
      break;
    case Readout::mask_token_drop_first: {  // append [MASK] to L slots, then drop the first slot
      const int64_t kept = std::max<int64_t>(len - 1, 0);
      std::copy(sequence.end() - kept, sequence.end(), out.item_rows.begin());
      out.item_rows[kept] = mask_row;
      out.valid_end = kept + 1;
      out.readout = kept;
      break;
    }
  }
  out.positions.resize(slots);
  for (int64_t s = 0; s < slots; ++s) {
    const bool valid = s >= out.valid_begin && s < out.valid_end;
    out.positions[s] = static_cast<int32_t>(spec_.positions == Positions::slot_or_zero ? (valid ? s + 1 : 0) : s);
  }
  return out;
}

void Encoder::norm(const LayerNormWeights& w, const float* x, int64_t rows, float* y) const {
  kernels::layer_norm(x, spec_.d, rows, spec_.d, w.gamma, w.beta, spec_.ln_eps, y, spec_.d);
}

void Encoder::activate(float* x, int64_t n) const {
  switch (spec_.activation) {
    case Activation::relu: kernels::relu(x, n); break;
    case Activation::gelu: kernels::gelu_erf(x, n); break;
    case Activation::gelu_tanh: kernels::gelu_tanh(x, n); break;
    case Activation::swish: kernels::swish(x, n); break;
    case Activation::tanh: kernels::tanh(x, n); break;
    case Activation::sigmoid: kernels::sigmoid(x, n); break;
  }
}

// out = MultiHeadAttention(query = query_src, key = value = kv_src), both [batch * slots, d].
void Encoder::attention(const EncoderLayer& layer, const float* query_src, const float* kv_src, int64_t batch,
                        Workspace& ws, float* out) const {
  const int64_t d = spec_.d, slots = spec_.n_slots(), rows = batch * slots;
  const int64_t d_h = d / spec_.heads;
  layer.q.apply(query_src, d, rows, ws.q.data());
  layer.k.apply(kv_src, d, rows, ws.k.data());
  layer.v.apply(kv_src, d, rows, ws.v.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d_h));
  const bool causal = spec_.attention == AttentionKind::causal;
  for (int64_t b = 0; b < batch; ++b) {
    const SlotLayout& lay = ws.layouts[b];
    const int64_t key_begin = spec_.mask_padded_keys ? lay.valid_begin : 0;
    const int64_t key_end = spec_.mask_padded_keys ? lay.valid_end : slots;
    const int64_t base = b * slots * d;
    for (int64_t h = 0; h < spec_.heads; ++h) {
      const int64_t off = base + h * d_h;
      kernels::attention_head(ws.q.data() + off, d, 0, slots, ws.k.data() + off, ws.v.data() + off, d, slots, d_h,
                              key_begin, key_end, causal, scale, ws.context.data() + off, d, ws.scores.data());
    }
  }
  layer.out.apply(ws.context.data(), d, rows, out);
}

void Encoder::feed_forward(const EncoderLayer& layer, const float* x, int64_t rows, Workspace& ws,
                           float* out) const {
  layer.ffn_inner.apply(x, spec_.d, rows, ws.ffn.data());
  activate(ws.ffn.data(), rows * spec_.ffn_dim);
  layer.ffn_outer.apply(ws.ffn.data(), spec_.ffn_dim, rows, out);
}

void Encoder::encode(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* hidden) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  const int64_t d = spec_.d, slots = spec_.n_slots(), rows = batch * slots;
  if (batch == 0) return;
  for (FloatBuffer* buffer : {&ws.x, &ws.normed, &ws.q, &ws.k, &ws.v, &ws.context, &ws.projected})
    grow(*buffer, static_cast<size_t>(rows * d));
  grow(ws.ffn, static_cast<size_t>(rows * spec_.ffn_dim));
  grow(ws.scores, static_cast<size_t>(slots));
  ws.layouts.resize(batch);
  float* x = ws.x.data();
  float* normed = ws.normed.data();
  float* projected = ws.projected.data();

  // Embedding: item (optionally * sqrt(d)) + position, then the optional embedding norm.
  const float item_scale = spec_.embed_scale ? std::sqrt(static_cast<float>(d)) : 1.0f;
  for (int64_t b = 0; b < batch; ++b) {
    ws.layouts[b] = layout(sequences[b]);
    float* xb = x + b * slots * d;
    kernels::gather_rows(item_table_, d, ws.layouts[b].item_rows.data(), slots, item_scale, xb, d);
    kernels::gather_add_rows(position_table_, d, ws.layouts[b].positions.data(), slots, xb, d);
  }
  if (spec_.embed_norm) norm(embed_norm_, x, rows, x);

  // Old SASRec.pytorch multiplies padded rows by 0 after the embedding and every block.
  auto zero_padded_rows = [&] {
    if (!spec_.zero_padded_rows) return;
    for (int64_t b = 0; b < batch; ++b)
      std::fill(x + b * slots * d, x + (b * slots + ws.layouts[b].valid_begin) * d, 0.0f);
  };
  auto add = [&](float* y, const float* a) {
    for (int64_t i = 0; i < rows * d; ++i) y[i] += a[i];
  };
  zero_padded_rows();

  for (const EncoderLayer& layer : layers_) {
    switch (spec_.block) {
      case Block::pre_ln:  // x += Attn(LN(x)); x += FFN(LN(x))
        norm(layer.attention_norm, x, rows, normed);
        attention(layer, normed, normed, batch, ws, projected);
        add(x, projected);
        norm(layer.ffn_norm, x, rows, normed);
        feed_forward(layer, normed, rows, ws, projected);
        add(x, projected);
        break;
      case Block::post_ln:  // x = LN(x + Attn(x)); x = LN(x + FFN(x))
        attention(layer, x, x, batch, ws, projected);
        add(x, projected);
        norm(layer.attention_norm, x, rows, x);
        feed_forward(layer, x, rows, ws, projected);
        add(x, projected);
        norm(layer.ffn_norm, x, rows, x);
        break;
      case Block::sasrec_original:  // q = LN_a(x); x = q + Attn(q, x, x); x = LN_f(x); x += FFN(x)
        norm(layer.attention_norm, x, rows, normed);
        attention(layer, normed, x, batch, ws, projected);
        for (int64_t i = 0; i < rows * d; ++i) x[i] = normed[i] + projected[i];
        norm(layer.ffn_norm, x, rows, x);
        feed_forward(layer, x, rows, ws, projected);
        add(x, projected);
        break;
    }
    zero_padded_rows();
  }

  // Readout: one slot per sequence, then the final norm and the optional head.
  for (int64_t b = 0; b < batch; ++b) {
    const float* src = x + (b * slots + ws.layouts[b].readout) * d;
    std::copy(src, src + d, hidden + b * d);
  }
  if (spec_.final_norm) norm(final_norm_, hidden, batch, hidden);
  if (spec_.head) {
    grow(ws.hidden, static_cast<size_t>(batch * d));
    head_dense_.apply(hidden, d, batch, ws.hidden.data());
    kernels::gelu_erf(ws.hidden.data(), batch * d);
    norm(head_norm_, ws.hidden.data(), batch, hidden);
  }
}

}  // namespace seqrec
