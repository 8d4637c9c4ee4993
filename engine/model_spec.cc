#include "engine/model_spec.h"

#include <cmath>

#include "engine/error.h"

namespace seqrec {

int64_t ModelSpec::n_slots() const { return readout == Readout::mask_token ? max_len + 1 : max_len; }

int64_t ModelSpec::n_positions() const {
  return positions == Positions::slot_or_zero ? n_slots() + 1 : n_slots();
}

int64_t ModelSpec::item_table_rows() const {
  return readout == Readout::last_slot ? n_items : n_items + 1;
}

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw Error("model spec: " + message);
}
std::string value(const char* field, int64_t v) { return std::string(field) + " = " + std::to_string(v); }
}  // namespace

void ModelSpec::validate() const {
  // Upper bounds keep a corrupt file from asking for absurd allocations before any check fails.
  constexpr int64_t kMaxDim = 1 << 16;
  constexpr int64_t kMaxLen = 1 << 16;
  constexpr int64_t kMaxItems = int64_t{1} << 31;
  require(d > 0 && d <= kMaxDim, value("d", d) + " (expected 1.." + std::to_string(kMaxDim) + ")");
  require(heads > 0 && heads <= d, value("heads", heads) + " (expected 1..d = " + std::to_string(d) + ")");
  require(d % heads == 0, value("heads", heads) + " does not divide d = " + std::to_string(d));
  require(ffn_dim > 0 && ffn_dim <= kMaxDim * 4, value("ffn_dim", ffn_dim) + " (expected > 0)");
  require(n_layers >= 0 && n_layers <= 256, value("n_layers", n_layers) + " (expected 0..256)");
  require(max_len > 0 && max_len <= kMaxLen, value("max_len", max_len) + " (expected 1.." + std::to_string(kMaxLen) + ")");
  require(n_items >= 2 && n_items <= kMaxItems,
          value("n_items", n_items) + " (expected 2..2^31: row 0 is padding, at least one item)");
  require(std::isfinite(ln_eps) && ln_eps > 0 && ln_eps < 1, "ln_eps = " + std::to_string(ln_eps) + " (expected 0 < eps < 1)");
  require(!(zero_padded_rows && padding != Padding::left), "zero_padded_rows needs padding = left");
  require(!(head && readout == Readout::last_slot), "head needs a mask-token readout");
  require(!(readout != Readout::last_slot && padding != Padding::right), "mask-token readout needs padding = right");
  require(!(readout != Readout::last_slot && attention != AttentionKind::bidirectional),
          "mask-token readout needs bidirectional attention");
  require(!(readout != Readout::last_slot && !mask_padded_keys), "mask-token readout needs mask_padded_keys");
}

std::string tensor_names::layer(int64_t i) { return "encoder/layer_" + std::to_string(i); }

std::vector<TensorDecl> required_tensors(const ModelSpec& s) {
  std::vector<TensorDecl> out;
  const int64_t d = s.d;
  auto linear = [&](const std::string& prefix, int64_t out_dim, int64_t in_dim) {
    out.push_back({prefix + "/weight", {out_dim, in_dim}});  // torch Linear layout: [out, in]
    out.push_back({prefix + "/bias", {out_dim}});
  };
  auto norm = [&](const std::string& prefix) {
    out.push_back({prefix + "/weight", {d}});
    out.push_back({prefix + "/bias", {d}});
  };
  out.push_back({"embedding/item/weight", {s.item_table_rows(), d}});
  out.push_back({"embedding/position/weight", {s.n_positions(), d}});
  if (s.embed_norm) norm("embedding/norm");
  for (int64_t i = 0; i < s.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    linear(p + "/attention/q", d, d);
    linear(p + "/attention/k", d, d);
    linear(p + "/attention/v", d, d);
    linear(p + "/attention/out", d, d);
    norm(p + "/attention/norm");
    linear(p + "/ffn/inner", s.ffn_dim, d);
    linear(p + "/ffn/outer", d, s.ffn_dim);
    norm(p + "/ffn/norm");
  }
  if (s.final_norm) norm("encoder/final_norm");
  if (s.head) {
    linear("head/dense", d, d);
    norm("head/norm");
  }
  if (s.output_bias) out.push_back({"output/bias", {s.n_items}});
  return out;
}

// ---- enum text ---------------------------------------------------------------------------

namespace {
template <class E, std::size_t N>
E parse_enum(const std::string& field, const std::string& text, const char* const (&names)[N]) {
  for (std::size_t i = 0; i < N; ++i)
    if (text == names[i]) return static_cast<E>(i);
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    if (i) expected += '|';
    expected += names[i];
  }
  throw Error(field + ": unknown value '" + text + "' (expected " + expected + ")");
}
constexpr const char* kBlock[] = {"pre_ln", "post_ln", "sasrec_original"};
constexpr const char* kAttention[] = {"causal", "bidirectional"};
constexpr const char* kPadding[] = {"left", "right"};
constexpr const char* kPositions[] = {"slot_or_zero", "slot_index"};
constexpr const char* kActivation[] = {"relu", "gelu", "gelu_tanh", "swish", "tanh", "sigmoid"};
constexpr const char* kReadout[] = {"last_slot", "mask_token", "mask_token_drop_first"};
constexpr const char* kScore[] = {"sigmoid", "softmax", "raw"};
}  // namespace

const char* to_string(Block v) { return kBlock[static_cast<int>(v)]; }
const char* to_string(AttentionKind v) { return kAttention[static_cast<int>(v)]; }
const char* to_string(Padding v) { return kPadding[static_cast<int>(v)]; }
const char* to_string(Positions v) { return kPositions[static_cast<int>(v)]; }
const char* to_string(Activation v) { return kActivation[static_cast<int>(v)]; }
const char* to_string(Readout v) { return kReadout[static_cast<int>(v)]; }
const char* to_string(ScoreKind v) { return kScore[static_cast<int>(v)]; }

Block parse_block(const std::string& f, const std::string& t) { return parse_enum<Block>(f, t, kBlock); }
AttentionKind parse_attention(const std::string& f, const std::string& t) {
  return parse_enum<AttentionKind>(f, t, kAttention);
}
Padding parse_padding(const std::string& f, const std::string& t) { return parse_enum<Padding>(f, t, kPadding); }
Positions parse_positions(const std::string& f, const std::string& t) {
  return parse_enum<Positions>(f, t, kPositions);
}
Activation parse_activation(const std::string& f, const std::string& t) {
  return parse_enum<Activation>(f, t, kActivation);
}
Readout parse_readout(const std::string& f, const std::string& t) { return parse_enum<Readout>(f, t, kReadout); }
ScoreKind parse_score(const std::string& f, const std::string& t) { return parse_enum<ScoreKind>(f, t, kScore); }

}  // namespace seqrec
