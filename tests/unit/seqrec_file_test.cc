// The .seqrec format: exact round trip, the writer against the documented layout, and the
// loader against every kind of bad file (semantic errors, truncation at every byte,
// single-byte corruption, absurd lengths). Meant to run under ASan + UBSan too.
#include "weights/seqrec_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <utility>

#include "engine/error.h"
#include "engine/scorer.h"

#include <map>
#include <xxhash.h>

namespace seqrec {
namespace {

namespace fs = std::filesystem;

struct Sizes {
  int64_t n_layers, d, heads, max_len, n_items;
};
constexpr Sizes kSmall = {2, 8, 2, 5, 7};
// Every kind of record, in as few bytes as possible: the hostile-input tests load it
// thousands of times.
constexpr Sizes kTiny = {1, 2, 1, 2, 3};

// A small random model with every enum off its default, popularity and a threshold set.
ModelFile small_model(uint32_t seed = 42, Sizes sizes = kSmall) {
  ModelFile m;
  ModelSpec& s = m.spec;
  s.blocks.kind = BlockKind::pre_ln;
  s.blocks.attention = AttentionKind::bidirectional;
  s.blocks.mask_padded_keys = true;
  s.input.embed_scale = true;
  s.input.embed_norm = true;
  s.input.positions = Positions::slot_index;
  s.input.padding = Padding::right;
  s.blocks.activation = Activation::gelu_tanh;
  s.readout.final_norm = true;
  s.readout.slot = Readout::mask_token_drop_first;
  s.readout.head = true;
  s.scorer.output_bias = true;
  s.scorer.separate_table = true;
  s.scorer.temperature = 0.25f;
  s.blocks.ln_eps = 1e-12f;
  s.scorer.score = ScoreKind::softmax;
  s.max_len = sizes.max_len;
  s.d = sizes.d;
  s.blocks.heads = sizes.heads;
  s.blocks.ffn_dim = 2 * sizes.d;
  s.blocks.n_layers = sizes.n_layers;
  s.n_items = sizes.n_items;

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& decl : required_tensors(s)) {
    Tensor t(decl.shape);
    for (auto& v : t.data) v = normal(rng);
    m.tensors.emplace(decl.name, std::move(t));
  }
  // Values a text or rounding round trip would lose: the comparison below is bitwise.
  float* w = m.tensors.at("embedding/item/weight").ptr();
  w[0] = -0.0f;
  w[1] = std::numeric_limits<float>::denorm_min();
  w[2] = std::numeric_limits<float>::max();
  w[3] = std::numeric_limits<float>::lowest();

  m.catalog = {"[PAD]"};
  m.popularity = {0};
  for (int64_t row = 1; row < s.n_items; ++row) {
    m.catalog.push_back("item_" + std::to_string(row));
    m.popularity.push_back(static_cast<uint64_t>(row * row % 5));
  }
  m.provenance = {"recbole", "RecBole 1.2 BERT4Rec", "bert4rec.pth", "0.1.0", 3.5};
  return m;
}

// The opposite corner: default enums, no optional tensors, popularity or threshold.
ModelFile plain_model() {
  ModelFile m;
  ModelSpec& s = m.spec;
  s.blocks.kind = BlockKind::sasrec_original;
  s.input.zero_padded_rows = true;
  s.max_len = 3;
  s.d = 4;
  s.blocks.heads = 1;
  s.blocks.ffn_dim = 4;
  s.blocks.n_layers = 1;
  s.n_items = 3;
  float next = 0.5f;
  for (const auto& decl : required_tensors(s)) {
    Tensor t(decl.shape);
    for (auto& v : t.data) v = next += 0.25f;
    m.tensors.emplace(decl.name, std::move(t));
  }
  m.catalog = {"", "a", "b"};
  m.provenance = {"pmixer", "variant=original", "SASRec.pth", "0.1.0", std::nullopt};
  return m;
}

void expect_same(const ModelFile& a, const ModelFile& b) {
  EXPECT_TRUE(a.spec == b.spec) << "every spec field, bit for bit";
  EXPECT_EQ(std::memcmp(&a.spec.blocks.ln_eps, &b.spec.blocks.ln_eps, sizeof(float)), 0);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    const Tensor& u = b.tensors.at(name);
    EXPECT_EQ(t.shape, u.shape) << name;
    ASSERT_EQ(t.numel(), u.numel()) << name;
    EXPECT_EQ(std::memcmp(t.ptr(), u.ptr(), t.numel() * sizeof(float)), 0) << name;
  }
  EXPECT_EQ(a.catalog, b.catalog);
  EXPECT_EQ(a.popularity, b.popularity);
  EXPECT_EQ(a.provenance.source, b.provenance.source);
  EXPECT_EQ(a.provenance.source_detail, b.provenance.source_detail);
  EXPECT_EQ(a.provenance.source_file, b.provenance.source_file);
  EXPECT_EQ(a.provenance.converter_version, b.provenance.converter_version);
  EXPECT_EQ(a.provenance.rating_threshold, b.provenance.rating_threshold);
}

// Independent encoders of the layouts documented in seqrec_file.h (plain byte appends, no
// cereal, no validation; XXH3 from libxxhash as the format names it), so tests can build files
// the real writer refuses to write. They record where fields sit: `framing` are the bytes whose
// corruption a loader must always reject; `padding` the zero bytes between sections, which
// nothing reads.
struct Encoded {
  std::string bytes;
  std::vector<std::pair<std::size_t, std::size_t>> framing;  // [begin, end)
  std::vector<std::pair<std::size_t, std::size_t>> padding;
  std::map<std::string, std::size_t> at;  // offsets of first occurrences

  template <class T>
  void pod(T v, bool frames) {
    if (frames) framing.emplace_back(bytes.size(), bytes.size() + sizeof v);
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void mark(const std::string& key) { at.emplace(key, bytes.size()); }
  void string(const std::string& s, bool text_is_framing) {
    pod<uint64_t>(s.size(), true);
    if (text_is_framing) framing.emplace_back(bytes.size(), bytes.size() + s.size());
    bytes += s;
  }
  static bool inside(const std::vector<std::pair<std::size_t, std::size_t>>& ranges, std::size_t offset) {
    for (const auto& [b, e] : ranges)
      if (offset >= b && offset < e) return true;
    return false;
  }
  bool is_framing(std::size_t offset) const { return inside(framing, offset); }
  bool is_padding(std::size_t offset) const { return inside(padding, offset); }
};

uint64_t xxh3(const std::string& bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }
uint64_t align64(uint64_t x) { return (x + 63) / 64 * 64; }

// Versions 2 and 3: prefix | header (spec fields, tensor directory, sections, provenance) | data.
// Tensors in required_tensors order, then any extra; `extra` sections after the catalog and
// popularity (version 3's derived tables, or damaged ones).
Encoded encode(const ModelFile& m, uint32_t version = kSeqrecFormatVersion,
               const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  std::vector<std::string> order;
  for (const auto& decl : required_tensors(m.spec))
    if (m.tensors.count(decl.name)) order.push_back(decl.name);
  for (const auto& [name, t] : m.tensors)
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
  std::string catalog;
  {
    const uint64_t n = m.catalog.size();
    catalog.append(reinterpret_cast<const char*>(&n), 8);
    uint64_t at = 0;
    for (uint64_t i = 0; i <= n; ++i) {
      catalog.append(reinterpret_cast<const char*>(&at), 8);
      if (i < n) at += m.catalog[i].size();
    }
    for (const auto& id : m.catalog) catalog += id;
  }
  std::string popularity(reinterpret_cast<const char*>(m.popularity.data()), m.popularity.size() * 8);
  std::vector<std::pair<std::string, const std::string*>> sections = {{"catalog", &catalog}};
  if (!m.popularity.empty()) sections.emplace_back("popularity", &popularity);
  for (const auto& [name, bytes] : extra) sections.emplace_back(name, &bytes);

  // The header twice: its length does not depend on the offsets.
  auto header = [&](const std::vector<uint64_t>& offsets, Encoded& h, std::size_t base) {
    auto mark = [&](const std::string& key) { h.at.emplace(key, base + h.bytes.size()); };
    auto frame = [&](std::size_t n) { h.framing.emplace_back(base + h.bytes.size() - n, base + h.bytes.size()); };
    auto pod64 = [&](uint64_t v) { h.bytes.append(reinterpret_cast<const char*>(&v), 8); frame(8); };
    auto str = [&](const std::string& v) { pod64(v.size()); h.bytes += v; frame(v.size()); };
    const SpecFields fields = spec_fields(m.spec);
    mark("spec count");
    pod64(fields.size());
    for (const auto& [name, value] : fields) {
      mark("spec " + name);
      str(name);
      mark("spec value " + name);
      str(value);
    }
    mark("tensor count");
    pod64(order.size());
    for (size_t i = 0; i < order.size(); ++i) {
      const Tensor& t = m.tensors.at(order[i]);
      mark("tensor name");
      str(order[i]);
      mark("dtype");
      str("f32");
      mark("rank");
      const uint32_t rank = static_cast<uint32_t>(t.shape.size());
      h.bytes.append(reinterpret_cast<const char*>(&rank), 4);
      frame(4);
      for (int64_t dim : t.shape) pod64(static_cast<uint64_t>(dim));
      mark("offset");
      pod64(offsets[i]);
      mark("byte length");
      pod64(t.numel() * 4);
      mark("checksum");
      pod64(XXH3_64bits(t.ptr(), t.numel() * 4));
    }
    mark("section count");
    pod64(sections.size());
    for (size_t i = 0; i < sections.size(); ++i) {
      mark("section name");
      str(sections[i].first);
      pod64(offsets[order.size() + i]);
      mark("section length " + sections[i].first);
      pod64(sections[i].second->size());
      pod64(xxh3(*sections[i].second));
    }
    const Provenance& p = m.provenance;
    mark("provenance.source");
    for (const auto* text : {&p.source, &p.source_detail, &p.source_file, &p.converter_version}) {
      pod64(text->size());
      h.bytes += *text;  // free text: any bytes load
    }
    h.bytes.push_back(p.rating_threshold.has_value() ? 1 : 0);
    frame(1);
    if (p.rating_threshold) h.bytes.append(reinterpret_cast<const char*>(&*p.rating_threshold), 8);
  };
  Encoded first;
  header(std::vector<uint64_t>(order.size() + sections.size(), 0), first, 32);
  std::vector<uint64_t> offsets;
  uint64_t at = align64(32 + first.bytes.size());
  for (const auto& name : order) {
    offsets.push_back(at);
    at = align64(at + m.tensors.at(name).numel() * 4);
  }
  for (const auto& [name, bytes] : sections) {
    offsets.push_back(at);
    at = align64(at + bytes->size());
  }
  Encoded h;
  header(offsets, h, 32);

  Encoded e;
  e.bytes.append("SEQREC\0\1", 8);
  e.framing.emplace_back(0, 8);
  e.mark("version");
  e.pod<uint32_t>(version, true);
  e.mark("reserved");
  e.pod<uint32_t>(0, true);
  e.mark("header length");
  e.pod<uint64_t>(h.bytes.size(), true);
  e.mark("header checksum");
  e.pod<uint64_t>(version >= 3 ? XXH3_64bits_withSeed(h.bytes.data(), h.bytes.size(), version) : xxh3(h.bytes), true);
  e.framing.emplace_back(32, 32 + h.bytes.size());  // every header byte is checksummed
  for (const auto& [key, offset] : h.at) e.at.emplace(key, offset);
  e.bytes += h.bytes;
  auto pad_to = [&](uint64_t offset) {
    e.padding.emplace_back(e.bytes.size(), offset);
    e.bytes.resize(offset, '\0');
  };
  for (size_t i = 0; i < order.size(); ++i) {
    pad_to(offsets[i]);
    const Tensor& t = m.tensors.at(order[i]);
    e.mark("tensor data");
    e.bytes.append(reinterpret_cast<const char*>(t.ptr()), t.numel() * 4);
  }
  for (size_t i = 0; i < sections.size(); ++i) {
    pad_to(offsets[order.size() + i]);
    e.mark("section " + sections[i].first);
    e.bytes += *sections[i].second;
  }
  return e;
}

// Version 1 (seqrec 0.1), which the loader still reads: the spec as fixed fields, tensors inline.
std::string encode_v1(const ModelFile& m) {
  Encoded e;
  e.bytes.append("SEQREC\0\1", 8);
  e.pod<uint32_t>(1, true);
  const ModelSpec& s = m.spec;
  e.string(to_string(s.blocks.kind), true);
  e.string(to_string(s.blocks.attention), true);
  for (bool b : {s.blocks.mask_padded_keys, s.input.zero_padded_rows, s.input.embed_scale, s.input.embed_norm})
    e.pod<uint8_t>(b, false);
  e.string(to_string(s.input.positions), true);
  e.string(to_string(s.input.padding), true);
  e.string(to_string(s.blocks.activation), true);
  e.pod<uint8_t>(s.readout.final_norm, false);
  e.string(to_string(s.readout.slot), true);
  e.pod<uint8_t>(s.readout.head, false);
  e.pod<uint8_t>(s.scorer.output_bias, false);
  e.pod<float>(s.blocks.ln_eps, false);
  e.string(to_string(s.scorer.score), true);
  for (int64_t v : {s.max_len, s.d, s.blocks.heads, s.blocks.ffn_dim, s.blocks.n_layers, s.n_items})
    e.pod<int64_t>(v, false);
  const auto decls = required_tensors(s);
  e.pod<uint64_t>(decls.size(), true);
  for (const auto& decl : decls) {
    const Tensor& t = m.tensors.at(decl.name);
    e.string(decl.name, true);
    e.string("f32", true);
    e.pod<uint32_t>(t.shape.size(), true);
    for (int64_t dim : t.shape) e.pod<int64_t>(dim, true);
    e.pod<uint64_t>(t.numel() * sizeof(float), true);
    e.bytes.append(reinterpret_cast<const char*>(t.ptr()), t.numel() * sizeof(float));
  }
  e.pod<uint64_t>(m.catalog.size(), true);
  for (const auto& id : m.catalog) e.string(id, false);
  e.pod<uint64_t>(m.popularity.size(), true);
  for (uint64_t c : m.popularity) e.pod<uint64_t>(c, false);
  const Provenance& p = m.provenance;
  for (const auto* text : {&p.source, &p.source_detail, &p.source_file, &p.converter_version}) e.string(*text, false);
  e.pod<uint8_t>(p.rating_threshold.has_value(), true);
  if (p.rating_threshold) e.pod<double>(*p.rating_threshold, false);
  return e.bytes;
}

class SeqrecFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("seqrec_file_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::create_directories(dir_);
    path_ = (dir_ / "model.seqrec").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write(const std::string& bytes) {
    // A fresh file, not a truncated one: ext4 flushes truncated-and-rewritten files on
    // close, which would make the thousands of writes below wait on the disk.
    fs::remove(path_);
    std::ofstream os(path_, std::ios::binary | std::ios::trunc);
    os.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(os.good());
  }
  static std::string read(const std::string& path) {
    std::ifstream is(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>()};
  }
  // Loads `bytes` and returns the error message; fails the test if loading succeeds or the
  // message is not one line starting with the file path and naming `expected`.
  std::string load_error(const std::string& bytes, const std::string& expected,
                         CatalogLoad catalog = CatalogLoad::as_strings) {
    write(bytes);
    try {
      load_model_file(path_, catalog);
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(path_ + ": ", 0), 0u) << message;
      EXPECT_NE(message.find(expected), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      return message;
    }
    ADD_FAILURE() << "loaded without error, expected one naming " << expected;
    return {};
  }

  fs::path dir_;
  std::string path_;
};

void patch_u64(std::string& bytes, std::size_t offset, uint64_t value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}
// After editing header bytes: the header checksum again, so the loader gets to the field.
void reseal(std::string& bytes) {
  uint64_t length;
  std::memcpy(&length, bytes.data() + 16, 8);
  uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  const auto n = static_cast<size_t>(length);
  patch_u64(bytes, 24, version >= 3 ? XXH3_64bits_withSeed(bytes.data() + 32, n, version) : XXH3_64bits(bytes.data() + 32, n));
}

// ---- round trip and layout ---------------------------------------------------------------

TEST_F(SeqrecFileTest, RoundTripIsExact) {
  const ModelFile model = small_model();
  save_model_file(model, path_);
  const ModelFile loaded = load_model_file(path_);
  expect_same(model, loaded);
  EXPECT_EQ(loaded.format_version, kSeqrecFormatVersion);
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
}

TEST_F(SeqrecFileTest, RoundTripWithoutOptionalParts) {
  const ModelFile model = plain_model();
  save_model_file(model, path_);
  const ModelFile loaded = load_model_file(path_);
  expect_same(model, loaded);
  EXPECT_TRUE(loaded.popularity.empty());
  EXPECT_FALSE(loaded.provenance.rating_threshold.has_value());
}

// A format change without a version bump would break old files: pin the bytes.
TEST_F(SeqrecFileTest, WriterMatchesDocumentedLayout) {
  for (const ModelFile& model : {small_model(), plain_model()}) {
    save_model_file(model, path_);
    const std::string bytes = read(path_);
    EXPECT_EQ(bytes, encode(model).bytes);
    // The data is used in place: every tensor 64-byte aligned in the file.
    for (const auto& [name, t] : model.tensors) {
      const auto at = bytes.find(std::string(reinterpret_cast<const char*>(t.ptr()), t.numel() * 4));
      ASSERT_NE(at, std::string::npos) << name;
      EXPECT_EQ(at % 64, 0u) << name;
    }
  }
}

// Files written by seqrec 0.1 still load, to the same model.
TEST_F(SeqrecFileTest, VersionOneFilesStillLoad) {
  for (ModelFile model : {small_model(), plain_model()}) {
    model.spec.scorer.separate_table = false;  // what version 1 could describe
    model.spec.scorer.temperature = 1.0f;
    model.tensors.erase("output/item/weight");
    write(encode_v1(model));
    const ModelFile loaded = load_model_file(path_);
    expect_same(model, loaded);
    EXPECT_EQ(loaded.format_version, 1u);
  }
}

// A model whose catalog the scorer pre-scans: version 3 stores its derived tables.
ModelFile prescanned_model() {
  ModelFile m = small_model();
  m.spec.n_items = 2100;
  m.spec.d = 32;
  m.spec.blocks.ffn_dim = 32;
  m.tensors.clear();
  float next = 0;
  for (const auto& decl : required_tensors(m.spec)) {
    Tensor t(decl.shape);
    for (auto& v : t.data) v = std::sin(next += 0.25f);
    m.tensors.emplace(decl.name, std::move(t));
  }
  m.catalog.assign({"[PAD]"});
  for (int64_t r = 1; r < m.spec.n_items; ++r) m.catalog.push_back("i" + std::to_string(r));
  m.popularity.clear();
  return m;
}

std::vector<std::pair<std::string, std::string>> derived_sections(const ModelFile& m) {
  const DerivedScorerTables d = Scorer::derive_tables(m.spec, m.tensors);
  return {{"scan_table", std::string(reinterpret_cast<const char*>(d.scan_table.data()), d.scan_table.size())},
          {"inverse_norms", std::string(reinterpret_cast<const char*>(d.inverse_norms.data()), d.inverse_norms.size() * 4)}};
}

TEST_F(SeqrecFileTest, VersionFourStoresTheScorersTables) {
  const ModelFile model = prescanned_model();
  save_model_file(model, path_);
  // A catalog this small streams from no memory: no int4 table (see the large-catalog test).
  EXPECT_EQ(read(path_), encode(model, 4, derived_sections(model)).bytes);
  const ModelFile loaded = load_model_file(path_);
  expect_same(model, loaded);
  EXPECT_NE(loaded.scorer_tables.scan_table, nullptr);
  EXPECT_NE(loaded.scorer_tables.inverse_norms, nullptr);
  EXPECT_EQ(loaded.scorer_tables.scan_table_int4, nullptr);
}

// The int4 table (version 4) is read with its size checked, only beside the int8 one; a
// version 3 file (none) still loads, and may not carry one.
TEST_F(SeqrecFileTest, TheInt4ScanTable) {
  const ModelFile model = prescanned_model();
  auto sections = derived_sections(model);
  const auto int4_bytes = static_cast<size_t>(
      kernels::quantized_table_bytes(model.spec.n_items, model.spec.d, kernels::ScanCode::int4));
  std::string int4(int4_bytes, '\x88');
  sections.emplace_back("scan_table_int4", int4);
  write(encode(model, 4, sections).bytes);
  const ModelFile loaded = load_model_file(path_);
  ASSERT_NE(loaded.scorer_tables.scan_table_int4, nullptr);
  EXPECT_EQ(loaded.scorer_tables.scan_table_int4_bytes, int4_bytes);
  EXPECT_EQ(loaded.scorer_tables.scan_table_int4[17], 0x88);

  write(encode(model, 3, derived_sections(model)).bytes);
  const ModelFile old = load_model_file(path_);
  EXPECT_EQ(old.format_version, 3u);
  EXPECT_NE(old.scorer_tables.scan_table, nullptr);
  EXPECT_EQ(old.scorer_tables.scan_table_int4, nullptr);
  load_error(encode(model, 3, sections).bytes, "section 'scan_table_int4': unknown section");

  auto shorter = sections;
  shorter[2].second.resize(int4_bytes - 64);
  load_error(encode(model, 4, shorter).bytes, "section 'scan_table_int4': " + std::to_string(int4_bytes - 64) +
                                                  " bytes, expected " + std::to_string(int4_bytes));
  load_error(encode(model, 4, {sections[1], sections[2]}).bytes, "section 'scan_table': missing");
  auto twice = sections;
  twice.push_back(sections[2]);
  load_error(encode(model, 4, twice).bytes, "section 'scan_table_int4': appears twice");
}

// Version 2 files (no derived tables) still load; the scorer makes its tables itself.
TEST_F(SeqrecFileTest, VersionTwoFilesStillLoad) {
  const ModelFile model = prescanned_model();
  write(encode(model, 2).bytes);
  const ModelFile loaded = load_model_file(path_);
  expect_same(model, loaded);
  EXPECT_EQ(loaded.format_version, 2u);
  EXPECT_EQ(loaded.scorer_tables.scan_table, nullptr);
  // A version 2 file may not carry version 3's sections.
  load_error(encode(model, 2, derived_sections(model)).bytes, "section 'scan_table': unknown section");
}

TEST_F(SeqrecFileTest, DamagedScorerTables) {
  const ModelFile model = prescanned_model();
  auto sections = derived_sections(model);
  const std::size_t scan_bytes = sections[0].second.size();
  load_error(encode(model, 4, {sections[0]}).bytes, "section 'inverse_norms': missing");
  load_error(encode(model, 4, {sections[1]}).bytes, "section 'scan_table': missing");
  auto shorter = sections;
  shorter[0].second.resize(scan_bytes - 64);
  load_error(encode(model, 4, shorter).bytes,
             "section 'scan_table': " + std::to_string(scan_bytes - 64) + " bytes, expected " + std::to_string(scan_bytes));
  auto fewer = sections;
  fewer[1].second.resize(4 * 100);
  load_error(encode(model, 4, fewer).bytes, "section 'inverse_norms': 400 bytes, expected 8400 (one f32 per item)");
  auto nan = sections;
  const float bad = std::nanf("");
  std::memcpy(nan[1].second.data() + 4 * 7, &bad, 4);
  load_error(encode(model, 4, nan).bytes, "section 'inverse_norms'");
  auto twice = sections;
  twice.push_back(sections[0]);
  load_error(encode(model, 4, twice).bytes, "section 'scan_table': appears twice");
}

TEST_F(SeqrecFileTest, SaveOverwritesAnExistingFile) {
  save_model_file(plain_model(), path_);
  const ModelFile model = small_model(7);
  save_model_file(model, path_);
  expect_same(model, load_model_file(path_));
}

TEST_F(SeqrecFileTest, SaveToUnwritablePathFails) {
  const std::string bad = (dir_ / "no_such_dir" / "model.seqrec").string();
  try {
    save_model_file(small_model(), bad);
    FAIL() << "saved to " << bad;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(bad + ": cannot write", 0), 0u) << e.what();
  }
  EXPECT_FALSE(fs::exists(bad));
  EXPECT_THROW(save_model_file(small_model(), dir_.string()), Error);  // a directory
}

TEST_F(SeqrecFileTest, SaveRefusesAnInvalidModelAndWritesNothing) {
  ModelFile model = small_model();
  model.tensors.at("head/dense/bias").ptr()[1] = std::nanf("");
  EXPECT_THROW(save_model_file(model, path_), Error);
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
}

TEST_F(SeqrecFileTest, LoadMissingFileNamesIt) {
  try {
    load_model_file(path_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path_ + ": cannot open: no such file");
  }
  EXPECT_THROW(load_model_file(dir_.string()), Error);
}

// ---- semantic errors, each through the loader ----------------------------------------------

TEST_F(SeqrecFileTest, MissingTensor) {
  ModelFile model = small_model();
  model.tensors.erase("encoder/layer_1/ffn/norm/bias");
  load_error(encode(model).bytes, "tensor 'encoder/layer_1/ffn/norm/bias': missing");
  EXPECT_THROW(validate_model_file(model, "mem"), Error);
}

TEST_F(SeqrecFileTest, ExtraTensor) {
  ModelFile model = small_model();
  model.tensors.emplace("encoder/layer_2/attention/q/weight", Tensor({8, 8}));
  load_error(encode(model).bytes, "tensor 'encoder/layer_2/attention/q/weight': unexpected");
  try {
    validate_model_file(model, "mem");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "mem: tensor 'encoder/layer_2/attention/q/weight': unexpected (not required by the spec)");
  }
}

TEST_F(SeqrecFileTest, DuplicateTensorRecord) {
  Encoded e = encode(small_model());
  // Rename the second record to the first one's name (same length: both layer_0 q/k weights).
  const std::string q = "encoder/layer_0/attention/q/weight", k = "encoder/layer_0/attention/k/weight";
  const auto at = e.bytes.find(k);
  ASSERT_NE(at, std::string::npos);
  e.bytes.replace(at, k.size(), q);
  reseal(e.bytes);
  load_error(e.bytes, "tensor '" + q + "': appears twice");
}

TEST_F(SeqrecFileTest, WrongShapeNamesTensorAndBothShapes) {
  ModelFile model = small_model();
  model.tensors.at("encoder/layer_0/attention/q/weight") = Tensor({8, 7});
  const std::string message = load_error(encode(model).bytes, "shape");
  EXPECT_EQ(message, path_ + ": tensor 'encoder/layer_0/attention/q/weight': shape [8, 7], expected [8, 8]");
}

TEST_F(SeqrecFileTest, WrongRank) {
  ModelFile model = small_model();
  model.tensors.at("output/bias") = Tensor({7, 1});
  load_error(encode(model).bytes, "tensor 'output/bias': shape [7, 1], expected [7]");
}

TEST_F(SeqrecFileTest, NaNNamesTensorAndFlatIndex) {
  ModelFile model = small_model();
  model.tensors.at("encoder/layer_1/ffn/inner/weight").ptr()[37] = std::nanf("");
  load_error(encode(model).bytes, "tensor 'encoder/layer_1/ffn/inner/weight': value at flat index 37 is nan");
}

TEST_F(SeqrecFileTest, InfNamesTensorAndFlatIndex) {
  ModelFile model = small_model();
  model.tensors.at("embedding/position/weight").ptr()[5] = -std::numeric_limits<float>::infinity();
  load_error(encode(model).bytes, "tensor 'embedding/position/weight': value at flat index 5 is -inf");
  model.tensors.at("embedding/position/weight").ptr()[5] = std::numeric_limits<float>::infinity();
  load_error(encode(model).bytes, "value at flat index 5 is inf");
}

TEST_F(SeqrecFileTest, DuplicateCatalogIdNamesIdAndRows) {
  ModelFile model = small_model();
  model.catalog[5] = "item_2";
  load_error(encode(model).bytes, "catalog: duplicate id 'item_2' at rows 2 and 5");
  load_error(encode(model).bytes, "catalog: duplicate id 'item_2' at rows 2 and 5", CatalogLoad::in_place);
  ModelFile numeric = small_model();
  for (size_t r = 1; r < numeric.catalog.size(); ++r) numeric.catalog[r] = std::to_string(10 * r);
  numeric.catalog[6] = "30";
  load_error(encode(numeric).bytes, "catalog: duplicate id '30' at rows 3 and 6", CatalogLoad::in_place);
}

// Served models keep their ids where the mapped file holds them: the same ids, the same rows.
TEST_F(SeqrecFileTest, CatalogInPlace) {
  for (ModelFile model : {small_model(), prescanned_model()}) {
    model.catalog[0] = model.catalog[3];  // the padding row may repeat an id; lookups never return row 0
    write(encode(model).bytes);
    const ModelFile loaded = load_model_file(path_, CatalogLoad::in_place);
    EXPECT_TRUE(loaded.catalog.empty());
    ASSERT_NE(loaded.catalog_in_place, nullptr);
    const Catalog& c = *loaded.catalog_in_place;
    ASSERT_EQ(c.size(), static_cast<int64_t>(model.catalog.size()));
    for (size_t r = 0; r < model.catalog.size(); ++r) {
      EXPECT_EQ(c.id(static_cast<int32_t>(r)), model.catalog[r]);
      if (r > 0) {
        EXPECT_EQ(c.row(model.catalog[r]), static_cast<int32_t>(r));
      }
    }
    EXPECT_EQ(c.row(model.catalog[3]), 3);
    EXPECT_EQ(c.row("nope"), -1);
    EXPECT_EQ(c.row(""), -1);
  }
}

TEST_F(SeqrecFileTest, PaddingRowMayRepeatAnId) {
  ModelFile model = small_model();
  model.catalog[0] = "item_3";
  write(encode(model).bytes);
  EXPECT_EQ(load_model_file(path_).catalog[0], "item_3");
}

TEST_F(SeqrecFileTest, EmptyCatalogId) {
  ModelFile model = small_model();
  model.catalog[4].clear();
  load_error(encode(model).bytes, "catalog: row 4: empty id");
  load_error(encode(model).bytes, "catalog: row 4: empty id", CatalogLoad::in_place);
}

TEST_F(SeqrecFileTest, CatalogSizeMismatch) {
  ModelFile model = small_model();
  model.catalog.pop_back();
  load_error(encode(model).bytes, "catalog: 6 ids, expected n_items = 7");
}

TEST_F(SeqrecFileTest, PopularitySizeMismatch) {
  ModelFile model = small_model();
  model.popularity.push_back(1);
  load_error(encode(model).bytes, "popularity: 8 counts, expected 0 or n_items = 7");
}

TEST_F(SeqrecFileTest, NonFiniteThreshold) {
  ModelFile model = small_model();
  model.provenance.rating_threshold = std::nan("");
  load_error(encode(model).bytes, "provenance.rating_threshold");
}

TEST_F(SeqrecFileTest, InconsistentSpec) {
  ModelFile model = small_model();
  model.spec.blocks.heads = 3;  // does not divide d = 8
  load_error(encode(model).bytes, "model spec: heads = 3 does not divide d = 8");
}

TEST_F(SeqrecFileTest, UnknownEnumTextNamesField) {
  Encoded e = encode(small_model());
  const auto at = e.bytes.find("gelu_tanh");
  ASSERT_NE(at, std::string::npos);
  e.bytes[at + 4] = '\n';  // garbage must not break the one-line message
  reseal(e.bytes);
  load_error(e.bytes, "spec 'activation': unknown value 'gelu?tanh' (expected none|relu|gelu|");
}

TEST_F(SeqrecFileTest, BadFlagValueNamesField) {
  Encoded e = encode(small_model());
  const std::size_t at = e.at.at("spec value mask_padded_keys") + 8;
  ASSERT_EQ(e.bytes.substr(at, 4), "true");
  e.bytes.replace(at, 4, "yes!");
  reseal(e.bytes);
  load_error(e.bytes, "spec 'mask_padded_keys': 'yes!', expected true|false");
}

TEST_F(SeqrecFileTest, UnknownSpecFieldIsAnError) {
  Encoded e = encode(small_model());
  const std::size_t at = e.at.at("spec head") + 8;
  e.bytes.replace(at, 4, "hedd");
  reseal(e.bytes);
  load_error(e.bytes, "'head': missing");
}

TEST_F(SeqrecFileTest, WrongDtype) {
  Encoded e = encode(small_model());
  e.bytes[e.at.at("dtype") + 8 + 2] = '6';  // "f32" -> "f36"
  reseal(e.bytes);
  load_error(e.bytes, "tensor 'embedding/item/weight': dtype 'f36', expected 'f32'");
}

TEST_F(SeqrecFileTest, WrongByteLength) {
  Encoded e = encode(small_model());
  patch_u64(e.bytes, e.at.at("byte length"), 4);
  reseal(e.bytes);
  load_error(e.bytes, "tensor 'embedding/item/weight': byte length 4, expected 256");
}

TEST_F(SeqrecFileTest, MisplacedTensorData) {
  Encoded e = encode(small_model());
  std::string bytes = e.bytes;
  uint64_t offset;
  std::memcpy(&offset, bytes.data() + e.at.at("offset"), 8);
  patch_u64(bytes, e.at.at("offset"), offset + 4);
  reseal(bytes);
  load_error(bytes, "tensor 'embedding/item/weight': offset " + std::to_string(offset + 4) + " is not 64-byte aligned");
  bytes = e.bytes;
  patch_u64(bytes, e.at.at("offset"), 0);
  reseal(bytes);
  load_error(bytes, "tensor 'embedding/item/weight': offset 0, expected >= ");
  bytes = e.bytes;
  patch_u64(bytes, e.at.at("offset"), align64(bytes.size()));
  reseal(bytes);
  load_error(bytes, "run past the end of the file");
}

TEST_F(SeqrecFileTest, DamagedDataFailsItsChecksum) {
  Encoded e = encode(small_model());
  std::string bytes = e.bytes;
  bytes[e.at.at("tensor data") + 5] ^= 0x01;  // a float's low bit: still finite
  load_error(bytes, "tensor 'embedding/item/weight': checksum");
  bytes = e.bytes;
  bytes[e.at.at("section catalog") + 30] ^= 0x01;
  load_error(bytes, "section 'catalog': checksum");
  bytes = e.bytes;
  bytes[e.at.at("provenance.source") + 9] ^= 0x01;
  load_error(bytes, "header: checksum mismatch");
}

TEST_F(SeqrecFileTest, BadMagic) {
  std::string bytes = encode(small_model()).bytes;
  bytes[0] = 'P';
  const std::string message = load_error(bytes, "not a .seqrec file");
  EXPECT_EQ(message.find("PEQ"), std::string::npos) << "errors never echo the file's bytes: " << message;
  load_error("PK\3\4", "not a .seqrec file");
  load_error("", "not a .seqrec file");
}

TEST_F(SeqrecFileTest, NewerAndOlderFormatVersions) {
  load_error(encode(small_model(), kSeqrecFormatVersion + 1).bytes, "written by a newer seqrec");
  load_error(encode(small_model(), 0).bytes, "format version 0, expected 1 to 4");
}

TEST_F(SeqrecFileTest, TrailingBytes) {
  load_error(encode(small_model()).bytes + "x", "trailing bytes");
}

// ---- hostile files ---------------------------------------------------------------------------

TEST_F(SeqrecFileTest, TruncationAtEveryOffsetFailsCleanly) {
  for (const std::string& full : {encode(small_model(42, kTiny)).bytes, encode_v1(plain_model())}) {
    int succeeded = 0, wrong_exception = 0;
    for (std::size_t n = 0; n < full.size(); ++n) {
      write(full.substr(0, n));
      try {
        load_model_file(path_);
        ++succeeded;
      } catch (const Error&) {
      } catch (...) {
        ++wrong_exception;
      }
    }
    EXPECT_EQ(succeeded, 0);
    EXPECT_EQ(wrong_exception, 0);
  }
}

// Every byte is checksummed but the zero padding between sections: a flipped bit anywhere
// else is refused; in the padding it changes nothing.
TEST_F(SeqrecFileTest, SingleByteCorruptionIsRefusedOrChangesNothing) {
  const ModelFile model = small_model(42, kTiny);
  const Encoded original = encode(model);
  int rejected = 0, accepted = 0;
  for (std::size_t offset = 0; offset < original.bytes.size(); ++offset) {
    for (unsigned char mask : {0x01, 0x80, 0xff}) {
      std::string bytes = original.bytes;
      bytes[offset] = static_cast<char>(bytes[offset] ^ mask);
      write(bytes);
      try {
        const ModelFile loaded = load_model_file(path_);
        ++accepted;
        EXPECT_TRUE(original.is_padding(offset)) << "offset " << offset << " mask " << int(mask);
        EXPECT_EQ(encode(loaded).bytes, original.bytes) << "offset " << offset << " mask " << int(mask);
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST_F(SeqrecFileTest, HugeLengthFieldsFailWithoutAllocating) {
  // Under ASan an attempt to allocate 2^62 bytes aborts the test; without it, it would
  // surface as std::length_error / bad_alloc rather than seqrec::Error.
  const Encoded e = encode(small_model());
  const std::pair<const char*, const char*> fields[] = {
      {"spec count", "spec field count"}, {"spec block", "spec field name"}, {"tensor count", "tensor count"},
      {"tensor name", "tensor name"},     {"dtype", "dtype"},                {"byte length", "byte length"},
      {"section count", "section count"}, {"section name", "section name"},  {"provenance.source", "provenance.source"},
  };
  for (uint64_t huge : {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{1} << 32}) {
    for (const auto& [key, expected] : fields) {
      std::string bytes = e.bytes;
      patch_u64(bytes, e.at.at(key), huge);
      reseal(bytes);
      load_error(bytes, expected);
    }
    std::string bytes = e.bytes;
    patch_u64(bytes, e.at.at("header length"), huge);
    load_error(bytes, "header length");
  }
  std::string bytes = e.bytes;
  const uint32_t rank = 0x7fffffff;
  std::memcpy(bytes.data() + e.at.at("rank"), &rank, sizeof rank);
  reseal(bytes);
  load_error(bytes, "tensor 'embedding/item/weight': rank 2147483647, expected 2");
  // A catalog whose count claims more ids than its bytes hold.
  ModelFile model = small_model();
  bytes = encode(model).bytes;
  const std::size_t catalog = encode(model).at.at("section catalog");
  patch_u64(bytes, catalog, uint64_t{1} << 61);
  // (the section checksum would catch it first: recompute it in the header)
  load_error(bytes, "section 'catalog': checksum");
}

// ---- in-memory validation ----------------------------------------------------------------

TEST(ValidateModelFile, TensorDataMustMatchItsShape) {
  ModelFile model = small_model();
  model.tensors.at("output/bias").data.resize(3);
  // (validate_model_file checks an owned tensor's value count against its shape)
  try {
    validate_model_file(model, "converter");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "converter: tensor 'output/bias': holds 3 values, shape [7] needs 7");
  }
  EXPECT_NO_THROW(validate_model_file(small_model(), "converter"));
}

}  // namespace
}  // namespace seqrec
