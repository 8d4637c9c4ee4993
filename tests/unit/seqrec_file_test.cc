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
  s.block = Block::pre_ln;
  s.attention = AttentionKind::bidirectional;
  s.mask_padded_keys = true;
  s.embed_scale = true;
  s.embed_norm = true;
  s.positions = Positions::slot_index;
  s.padding = Padding::right;
  s.activation = Activation::gelu_tanh;
  s.final_norm = true;
  s.readout = Readout::mask_token_drop_first;
  s.head = true;
  s.output_bias = true;
  s.ln_eps = 1e-12f;
  s.score = ScoreKind::softmax;
  s.max_len = sizes.max_len;
  s.d = sizes.d;
  s.heads = sizes.heads;
  s.ffn_dim = 2 * sizes.d;
  s.n_layers = sizes.n_layers;
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
  s.block = Block::sasrec_original;
  s.zero_padded_rows = true;
  s.max_len = 3;
  s.d = 4;
  s.heads = 1;
  s.ffn_dim = 4;
  s.n_layers = 1;
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
  EXPECT_EQ(required_tensors(a.spec).size(), required_tensors(b.spec).size());
  const ModelSpec &x = a.spec, &y = b.spec;
  EXPECT_EQ(x.block, y.block);
  EXPECT_EQ(x.attention, y.attention);
  EXPECT_EQ(x.mask_padded_keys, y.mask_padded_keys);
  EXPECT_EQ(x.zero_padded_rows, y.zero_padded_rows);
  EXPECT_EQ(x.embed_scale, y.embed_scale);
  EXPECT_EQ(x.embed_norm, y.embed_norm);
  EXPECT_EQ(x.positions, y.positions);
  EXPECT_EQ(x.padding, y.padding);
  EXPECT_EQ(x.activation, y.activation);
  EXPECT_EQ(x.final_norm, y.final_norm);
  EXPECT_EQ(x.readout, y.readout);
  EXPECT_EQ(x.head, y.head);
  EXPECT_EQ(x.output_bias, y.output_bias);
  EXPECT_EQ(std::memcmp(&x.ln_eps, &y.ln_eps, sizeof x.ln_eps), 0);
  EXPECT_EQ(x.score, y.score);
  EXPECT_EQ(x.max_len, y.max_len);
  EXPECT_EQ(x.d, y.d);
  EXPECT_EQ(x.heads, y.heads);
  EXPECT_EQ(x.ffn_dim, y.ffn_dim);
  EXPECT_EQ(x.n_layers, y.n_layers);
  EXPECT_EQ(x.n_items, y.n_items);

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

// An independent encoder of the layout documented in seqrec_file.h (plain byte appends, no
// cereal, no validation), so tests can build files the real writer refuses to write. It
// records where fields sit: `framing` are the bytes whose corruption a loader must always
// reject (magic, version, lengths, counts, names, enum text, dtype, rank, shape, flags);
// corrupting any other byte may still give a valid file.
struct Encoded {
  std::string bytes;
  std::vector<std::pair<std::size_t, std::size_t>> framing;  // [begin, end)
  std::map<std::string, std::size_t> at;                     // offsets of first occurrences

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
  bool is_framing(std::size_t offset) const {
    for (const auto& [b, e] : framing)
      if (offset >= b && offset < e) return true;
    return false;
  }
};

Encoded encode(const ModelFile& m, uint32_t version = kSeqrecFormatVersion) {
  Encoded e;
  e.bytes.append("SEQREC\0\1", 8);
  e.framing.emplace_back(0, 8);
  e.mark("version");
  e.pod<uint32_t>(version, true);
  const ModelSpec& s = m.spec;
  e.mark("spec.block");
  e.string(to_string(s.block), true);
  e.string(to_string(s.attention), true);
  e.mark("spec.mask_padded_keys");
  for (bool b : {s.mask_padded_keys, s.zero_padded_rows, s.embed_scale, s.embed_norm}) e.pod<uint8_t>(b, false);
  e.string(to_string(s.positions), true);
  e.string(to_string(s.padding), true);
  e.string(to_string(s.activation), true);
  e.pod<uint8_t>(s.final_norm, false);
  e.string(to_string(s.readout), true);
  e.pod<uint8_t>(s.head, false);
  e.pod<uint8_t>(s.output_bias, false);
  e.pod<float>(s.ln_eps, false);
  e.string(to_string(s.score), true);
  const std::pair<const char*, int64_t> sizes[] = {{"spec.max_len", s.max_len},   {"spec.d", s.d},
                                                    {"spec.heads", s.heads},       {"spec.ffn_dim", s.ffn_dim},
                                                    {"spec.n_layers", s.n_layers}, {"spec.n_items", s.n_items}};
  for (const auto& [key, v] : sizes) {
    e.mark(key);
    e.pod<int64_t>(v, false);
  }

  // Required tensors in canonical order (as the writer does), then any extras.
  std::vector<std::string> order;
  for (const auto& decl : required_tensors(s))
    if (m.tensors.count(decl.name)) order.push_back(decl.name);
  for (const auto& [name, t] : m.tensors)
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
  e.mark("tensor count");
  e.pod<uint64_t>(order.size(), true);
  for (const auto& name : order) {
    const Tensor& t = m.tensors.at(name);
    e.mark("tensor name");
    e.string(name, true);
    e.mark("dtype");
    e.string("f32", true);
    e.mark("rank");
    e.pod<uint32_t>(t.shape.size(), true);
    for (int64_t dim : t.shape) e.pod<int64_t>(dim, true);
    e.mark("byte length");
    e.pod<uint64_t>(t.numel() * sizeof(float), true);
    e.mark("tensor data");
    e.bytes.append(reinterpret_cast<const char*>(t.ptr()), t.numel() * sizeof(float));
  }
  e.mark("catalog count");
  e.pod<uint64_t>(m.catalog.size(), true);
  e.mark("catalog id");
  for (const auto& id : m.catalog) e.string(id, false);
  e.mark("popularity count");
  e.pod<uint64_t>(m.popularity.size(), true);
  for (uint64_t c : m.popularity) e.pod<uint64_t>(c, false);
  const Provenance& p = m.provenance;
  e.mark("provenance.source");
  for (const auto* text : {&p.source, &p.source_detail, &p.source_file, &p.converter_version}) e.string(*text, false);
  e.pod<uint8_t>(p.rating_threshold.has_value(), true);
  if (p.rating_threshold) e.pod<double>(*p.rating_threshold, false);
  return e;
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
  std::string load_error(const std::string& bytes, const std::string& expected) {
    write(bytes);
    try {
      load_model_file(path_);
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

// ---- round trip and layout ---------------------------------------------------------------

TEST_F(SeqrecFileTest, RoundTripIsExact) {
  const ModelFile model = small_model();
  save_model_file(model, path_);
  expect_same(model, load_model_file(path_));
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
    EXPECT_EQ(read(path_), encode(model).bytes);
  }
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
  model.spec.heads = 3;  // does not divide d = 8
  load_error(encode(model).bytes, "model spec: heads = 3 does not divide d = 8");
}

TEST_F(SeqrecFileTest, UnknownEnumTextNamesField) {
  Encoded e = encode(small_model());
  const auto at = e.bytes.find("gelu_tanh");
  ASSERT_NE(at, std::string::npos);
  e.bytes[at + 4] = '\n';  // garbage must not break the one-line message
  load_error(e.bytes, "spec.activation: unknown value 'gelu\\x0atanh' (expected relu|gelu|");
}

TEST_F(SeqrecFileTest, BoolByteOtherThanZeroOrOne) {
  Encoded e = encode(small_model());
  e.bytes[e.at.at("spec.mask_padded_keys")] = 2;
  load_error(e.bytes, "spec.mask_padded_keys: 2, expected 0 or 1");
}

TEST_F(SeqrecFileTest, WrongDtype) {
  Encoded e = encode(small_model());
  e.bytes[e.at.at("dtype") + 8 + 2] = '6';  // "f32" -> "f36"
  load_error(e.bytes, "tensor 'embedding/item/weight': dtype 'f36', expected 'f32'");
}

TEST_F(SeqrecFileTest, WrongByteLength) {
  Encoded e = encode(small_model());
  patch_u64(e.bytes, e.at.at("byte length"), 4);
  load_error(e.bytes, "tensor 'embedding/item/weight': byte length 4, expected 256");
}

TEST_F(SeqrecFileTest, BadMagic) {
  std::string bytes = encode(small_model()).bytes;
  bytes[0] = 'P';
  load_error(bytes, "not a .seqrec file");
  load_error("PK\3\4", "not a .seqrec file");
  load_error("", "not a .seqrec file");
}

TEST_F(SeqrecFileTest, NewerAndOlderFormatVersions) {
  load_error(encode(small_model(), kSeqrecFormatVersion + 1).bytes, "written by a newer seqrec");
  load_error(encode(small_model(), 0).bytes, "format version 0, expected " + std::to_string(kSeqrecFormatVersion));
}

TEST_F(SeqrecFileTest, TrailingBytes) {
  load_error(encode(small_model()).bytes + "x", "trailing bytes: 1");
}

// ---- hostile files ---------------------------------------------------------------------------

TEST_F(SeqrecFileTest, TruncationAtEveryOffsetFailsCleanly) {
  const std::string full = encode(small_model(42, kTiny)).bytes;
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

TEST_F(SeqrecFileTest, SingleByteCorruptionFailsCleanlyOrLoadsExactly) {
  const Encoded original = encode(small_model(42, kTiny));
  int rejected = 0, accepted = 0;
  for (std::size_t offset = 0; offset < original.bytes.size(); ++offset) {
    for (unsigned char mask : {0x01, 0x80, 0xff}) {
      std::string bytes = original.bytes;
      bytes[offset] = static_cast<char>(bytes[offset] ^ mask);
      write(bytes);
      try {
        const ModelFile loaded = load_model_file(path_);
        ++accepted;
        // Only payload (float data, ids, counts, some spec values) may change and still load,
        // and then the loader must have taken exactly what the file says.
        EXPECT_FALSE(original.is_framing(offset)) << "offset " << offset << " mask " << int(mask);
        EXPECT_EQ(encode(loaded).bytes, bytes) << "offset " << offset << " mask " << int(mask);
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);
}

TEST_F(SeqrecFileTest, HugeLengthFieldsFailWithoutAllocating) {
  // Under ASan an attempt to allocate 2^62 bytes aborts the test; without it, it would
  // surface as std::length_error / bad_alloc rather than seqrec::Error.
  const Encoded e = encode(small_model());
  const std::pair<const char*, const char*> fields[] = {
      {"spec.block", "spec.block"},           {"tensor count", "tensor count"},
      {"tensor name", "tensor name"},         {"dtype", "dtype"},
      {"byte length", "byte length"},         {"catalog count", "catalog count"},
      {"catalog id", "catalog id"},           {"popularity count", "popularity count"},
      {"provenance.source", "provenance.source"},
  };
  for (uint64_t huge : {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{1} << 32}) {
    for (const auto& [key, expected] : fields) {
      std::string bytes = e.bytes;
      patch_u64(bytes, e.at.at(key), huge);
      load_error(bytes, expected);
    }
  }
  std::string bytes = e.bytes;
  const uint32_t rank = 0x7fffffff;
  std::memcpy(bytes.data() + e.at.at("rank"), &rank, sizeof rank);
  load_error(bytes, "tensor 'embedding/item/weight': rank 2147483647, expected 2");
  bytes = e.bytes;
  patch_u64(bytes, e.at.at("spec.d"), uint64_t{1} << 62);
  load_error(bytes, "model spec: d = ");
}

// ---- in-memory validation ----------------------------------------------------------------

TEST(ValidateModelFile, TensorDataMustMatchItsShape) {
  ModelFile model = small_model();
  model.tensors.at("output/bias").data.resize(3);
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
