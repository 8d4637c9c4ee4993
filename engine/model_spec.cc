#include "engine/model_spec.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "engine/blocks/block_kind.h"
#include "engine/error.h"
#include "engine/spec_fields.h"
#include "engine/weights.h"

namespace seqrec {

int64_t ModelSpec::n_slots() const { return readout.slot == Readout::mask_token ? max_len + 1 : max_len; }

int64_t ModelSpec::n_positions() const {
  switch (input.positions) {
    case Positions::none: return 0;
    case Positions::slot_or_zero: return n_slots() + 1;
    case Positions::slot_index: return n_slots();
  }
  return 0;
}

int64_t ModelSpec::item_table_rows() const { return readout.slot == Readout::last_slot ? n_items : n_items + 1; }

bool ModelSpec::uses_time() const { return blocks.kind == BlockKind::tisasrec || blocks.kind == BlockKind::hstu; }

bool ModelSpec::uses_now() const { return blocks.kind == BlockKind::hstu; }

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw Error("model spec: " + message);
}
std::string value(const char* field, int64_t v) { return std::string(field) + " = " + std::to_string(v); }
bool is_transformer(BlockKind k) {
  return k == BlockKind::pre_ln || k == BlockKind::post_ln || k == BlockKind::sasrec_original;
}
}  // namespace

void ModelSpec::validate() const {
  // Upper bounds keep a corrupt file from asking for absurd allocations before any check fails.
  constexpr int64_t kMaxDim = 1 << 16;
  constexpr int64_t kMaxLen = 1 << 16;
  constexpr int64_t kMaxItems = int64_t{1} << 31;
  require(d > 0 && d <= kMaxDim, value("d", d) + " (expected 1.." + std::to_string(kMaxDim) + ")");
  require(max_len > 0 && max_len <= kMaxLen, value("max_len", max_len) + " (expected 1.." + std::to_string(kMaxLen) + ")");
  require(n_items >= 2 && n_items <= kMaxItems,
          value("n_items", n_items) + " (expected 2..2^31: row 0 is padding, at least one item)");
  require(blocks.n_layers >= 0 && blocks.n_layers <= 256, value("n_layers", blocks.n_layers) + " (expected 0..256)");
  require(blocks.heads > 0 && blocks.heads <= d, value("heads", blocks.heads) + " (expected 1..d = " + std::to_string(d) + ")");
  require(std::isfinite(blocks.ln_eps) && blocks.ln_eps > 0 && blocks.ln_eps < 1,
          "ln_eps = " + std::to_string(blocks.ln_eps) + " (expected 0 < eps < 1)");
  require(!(input.zero_padded_rows && input.padding != Padding::left), "zero_padded_rows needs padding = left");
  require(!(readout.head && readout.slot == Readout::last_slot), "head needs a mask-token readout");
  if (readout.slot != Readout::last_slot) {
    require(is_transformer(blocks.kind), "a mask-token readout needs a transformer block (pre_ln|post_ln|sasrec_original)");
    require(input.padding == Padding::right, "mask-token readout needs padding = right");
    require(blocks.attention == AttentionKind::bidirectional, "mask-token readout needs bidirectional attention");
    require(blocks.mask_padded_keys, "mask-token readout needs mask_padded_keys");
  }
  require(std::isfinite(scorer.temperature) && scorer.temperature > 0,
          "temperature = " + std::to_string(scorer.temperature) + " (expected a finite number > 0)");
  block_kind_info(blocks.kind).validate(*this);
}

std::string tensor_names::layer(int64_t i) { return "encoder/layer_" + std::to_string(i); }

std::vector<TensorDecl> required_tensors(const ModelSpec& s) {
  std::vector<TensorDecl> out;
  // Input stage.
  out.push_back({"embedding/item/weight", {s.item_table_rows(), s.d}});
  if (s.input.positions != Positions::none) out.push_back({"embedding/position/weight", {s.n_positions(), s.d}});
  if (s.input.embed_norm) declare_norm(out, "embedding/norm", s.d);
  // Block stack.
  block_kind_info(s.blocks.kind).declare_tensors(s, out);
  // Read-out.
  if (s.readout.final_norm) declare_norm(out, "encoder/final_norm", s.d);
  if (s.readout.head) {
    declare_linear(out, "head/dense", s.d, s.d);
    declare_norm(out, "head/norm", s.d);
  }
  // Scorer.
  if (s.scorer.separate_table) out.push_back({"output/item/weight", {s.n_items, s.d}});
  if (s.scorer.output_bias) out.push_back({"output/bias", {s.n_items}});
  return out;
}

// ---- fields --------------------------------------------------------------------------------

void FieldWriter::number(const char* name, float value) {
  char buffer[32];
  for (int digits = 6; digits <= 9; ++digits) {  // the shortest of these that reads back exactly
    std::snprintf(buffer, sizeof buffer, "%.*g", digits, static_cast<double>(value));
    if (std::strtof(buffer, nullptr) == value) break;
  }
  text(name, buffer);
}

FieldReader::FieldReader(const SpecFields& fields, std::string where) : fields_(fields), where_(std::move(where)) {
  std::set<std::string> seen;
  for (const auto& [name, value] : fields_)
    if (!seen.insert(name).second) throw Error(where_ + " '" + name + "': appears twice");
}

bool FieldReader::has(const char* name) const {
  for (const auto& [n, v] : fields_)
    if (n == name) return true;
  return false;
}

const std::string& FieldReader::text(const char* name) {
  for (const auto& [n, v] : fields_)
    if (n == name) {
      read_.insert(n);
      return v;
    }
  throw Error(field(name) + ": missing (every model field is given by name; see the README)");
}

void FieldReader::bad(const char* name, const std::string& expected) {
  std::string shown = text(name);
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  throw Error(field(name) + ": '" + shown + "', expected " + expected);
}

bool FieldReader::flag(const char* name) {
  const std::string& v = text(name);
  if (v == "true") return true;
  if (v == "false") return false;
  bad(name, "true|false");
}

int64_t FieldReader::integer(const char* name) {
  const std::string& v = text(name);
  int64_t out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size()) bad(name, "a decimal integer");
  return out;
}

float FieldReader::number(const char* name) {
  const std::string& v = text(name);
  double out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(out)) bad(name, "a finite decimal number");
  return static_cast<float>(out);
}

void FieldReader::require_all_read() const {
  for (const auto& [name, value] : fields_)
    if (!read_.count(name))
      throw Error(where_ + " '" + name + "': not a field of this model kind (written by a newer seqrec, or a typo)");
}

SpecFields spec_fields(const ModelSpec& s) {
  SpecFields fields;
  FieldWriter w(fields);
  w.enumeration("block", s.blocks.kind);
  w.integer("d", s.d);
  w.integer("max_len", s.max_len);
  w.integer("n_items", s.n_items);
  // Input stage.
  w.flag("embed_scale", s.input.embed_scale);
  w.enumeration("positions", s.input.positions);
  w.enumeration("padding", s.input.padding);
  w.flag("embed_norm", s.input.embed_norm);
  w.flag("zero_padded_rows", s.input.zero_padded_rows);
  // Block stack: the kind's own fields.
  block_kind_info(s.blocks.kind).write_fields(s.blocks, w);
  // Read-out.
  w.enumeration("readout", s.readout.slot);
  w.flag("final_norm", s.readout.final_norm);
  w.flag("head", s.readout.head);
  w.flag("l2_normalize", s.readout.l2_normalize);
  // Scorer.
  w.text("output_table", s.scorer.separate_table ? "separate" : "tied");
  w.flag("output_bias", s.scorer.output_bias);
  w.enumeration("score", s.scorer.score);
  w.number("temperature", s.scorer.temperature);
  w.flag("padding_in_softmax", s.scorer.padding_in_softmax);
  return fields;
}

ModelSpec parse_spec_fields(const SpecFields& fields, const std::string& where, bool unknown_fields_are_errors) {
  FieldReader r(fields, where);
  ModelSpec s;
  s.blocks.kind = r.enumeration("block", parse_block);
  s.d = r.integer("d");
  s.max_len = r.integer("max_len");
  s.n_items = r.integer("n_items");
  s.input.embed_scale = r.flag("embed_scale");
  s.input.positions = r.enumeration("positions", parse_positions);
  s.input.padding = r.enumeration("padding", parse_padding);
  s.input.embed_norm = r.flag("embed_norm");
  s.input.zero_padded_rows = r.flag("zero_padded_rows");
  block_kind_info(s.blocks.kind).read_fields(r, s.blocks);
  s.readout.slot = r.enumeration("readout", parse_readout);
  s.readout.final_norm = r.flag("final_norm");
  s.readout.head = r.flag("head");
  s.readout.l2_normalize = r.flag_or("l2_normalize", false);
  if (r.has("output_table")) {
    const std::string& table = r.text("output_table");
    if (table != "tied" && table != "separate") r.bad("output_table", "tied|separate");
    s.scorer.separate_table = table == "separate";
  }
  s.scorer.output_bias = r.flag("output_bias");
  s.scorer.score = r.enumeration("score", parse_score);
  s.scorer.temperature = r.number_or("temperature", 1.0f);
  s.scorer.padding_in_softmax = r.flag_or("padding_in_softmax", true);
  if (unknown_fields_are_errors) r.require_all_read();
  try {
    s.validate();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  return s;
}

// ---- enum text ---------------------------------------------------------------------------
//
// Each table lists the names in the enum's order; the static_asserts tie its length to the
// enum's last value, and tests/unit/model_spec_test.cc checks every value round-trips.

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
  std::string shown = text.size() > 40 ? text.substr(0, 37) + "..." : text;
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  throw Error(field + ": unknown value '" + shown + "' (expected " + expected + ")");
}
constexpr const char* kPadding[] = {"left", "right"};
constexpr const char* kPositions[] = {"none", "slot_or_zero", "slot_index"};
constexpr const char* kBlock[] = {"pre_ln", "post_ln", "sasrec_original", "tisasrec", "hstu"};
constexpr const char* kAttention[] = {"causal", "bidirectional"};
constexpr const char* kActivation[] = {"none", "relu", "gelu", "gelu_tanh", "swish", "tanh", "sigmoid"};
constexpr const char* kReadout[] = {"last_slot", "mask_token", "mask_token_drop_first"};
constexpr const char* kScore[] = {"sigmoid", "softmax", "raw"};
static_assert(std::size(kPadding) == static_cast<std::size_t>(Padding::right) + 1);
static_assert(std::size(kPositions) == static_cast<std::size_t>(Positions::slot_index) + 1);
static_assert(std::size(kBlock) == static_cast<std::size_t>(BlockKind::hstu) + 1);
static_assert(std::size(kAttention) == static_cast<std::size_t>(AttentionKind::bidirectional) + 1);
static_assert(std::size(kActivation) == static_cast<std::size_t>(Activation::sigmoid) + 1);
static_assert(std::size(kReadout) == static_cast<std::size_t>(Readout::mask_token_drop_first) + 1);
static_assert(std::size(kScore) == static_cast<std::size_t>(ScoreKind::raw) + 1);
}  // namespace

const char* to_string(Padding v) { return kPadding[static_cast<int>(v)]; }
const char* to_string(Positions v) { return kPositions[static_cast<int>(v)]; }
const char* to_string(BlockKind v) { return kBlock[static_cast<int>(v)]; }
const char* to_string(AttentionKind v) { return kAttention[static_cast<int>(v)]; }
const char* to_string(Activation v) { return kActivation[static_cast<int>(v)]; }
const char* to_string(Readout v) { return kReadout[static_cast<int>(v)]; }
const char* to_string(ScoreKind v) { return kScore[static_cast<int>(v)]; }

Padding parse_padding(const std::string& f, const std::string& t) { return parse_enum<Padding>(f, t, kPadding); }
Positions parse_positions(const std::string& f, const std::string& t) { return parse_enum<Positions>(f, t, kPositions); }
BlockKind parse_block(const std::string& f, const std::string& t) { return parse_enum<BlockKind>(f, t, kBlock); }
AttentionKind parse_attention(const std::string& f, const std::string& t) {
  return parse_enum<AttentionKind>(f, t, kAttention);
}
Activation parse_activation(const std::string& f, const std::string& t) {
  return parse_enum<Activation>(f, t, kActivation);
}
Readout parse_readout(const std::string& f, const std::string& t) { return parse_enum<Readout>(f, t, kReadout); }
ScoreKind parse_score(const std::string& f, const std::string& t) { return parse_enum<ScoreKind>(f, t, kScore); }

}  // namespace seqrec
