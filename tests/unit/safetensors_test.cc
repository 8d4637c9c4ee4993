// The safetensors reader / writer (weights/safetensors.h) and the --from safetensors mapper
// (weights/sources/safetensors_source.h): round trips, dtype conversion, and hostile input —
// each refused with one seqrec::Error line naming the tensor / key and expected vs. found.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/error.h"
#include "test_models.h"
#include "weights/safetensors.h"
#include "weights/sources/safetensors_source.h"

namespace seqrec {
namespace {

namespace fs = std::filesystem;
using safetensors::File;

// A file from a header text and data bytes: u64 LE length | header | data.
std::vector<uint8_t> file_bytes(const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

template <class T>
std::vector<uint8_t> raw(std::initializer_list<T> values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  std::memcpy(out.data(), std::data(values), out.size());
  return out;
}

// The message of the seqrec::Error `parse` throws; fails the test if it throws nothing.
std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    File::from_memory("t.safetensors", bytes);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted";
  return "";
}

void expect_error(const std::string& header, const std::vector<uint8_t>& data,
                  std::initializer_list<const char*> must_mention) {
  const std::string message = error_of(file_bytes(header, data));
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.rfind("t.safetensors: ", 0), 0u) << message;
  for (const char* word : must_mention) EXPECT_NE(message.find(word), std::string::npos) << message << " / " << word;
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("seqrec_safetensors_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

using SafetensorsFile = TempDir;

TEST_F(SafetensorsFile, WriteThenReadKeepsNamesShapesValuesAndMetadata) {
  Tensor a({2, 3});
  for (size_t i = 0; i < a.numel(); ++i) a.data[i] = 0.5f * static_cast<float>(i) - 1.0f;
  Tensor b({4});
  b.data = {1e-30f, -3.25f, 7.0f, 0.0f};
  Tensor empty({0, 5});
  const std::map<std::string, std::string> meta = {{"k", "v \"quoted\"\n\\ ü"}, {"n", "12"}};
  safetensors::write(path("a.safetensors"), {{"layer/a", &a}, {"b", &b}, {"empty", &empty}}, meta);

  const File f = File::open(path("a.safetensors"));
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), 3u);
  const auto* ia = f.find("layer/a");
  ASSERT_NE(ia, nullptr);
  EXPECT_EQ(ia->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ia->dtype, safetensors::DType::F32);
  EXPECT_EQ(f.read(*ia).data, a.data);
  EXPECT_EQ(f.read(*f.find("b")).data, b.data);
  EXPECT_EQ(f.read(*f.find("empty")).numel(), 0u);
  EXPECT_EQ(f.find("missing"), nullptr);
  // The header is padded to a multiple of 8 bytes, as the reference writer does.
  std::ifstream in(path("a.safetensors"), std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(SafetensorsFile, WriterRefusesBadNamesAndNonUtf8) {
  Tensor a({1});
  EXPECT_THROW(safetensors::write(path("x"), {{"__metadata__", &a}}, {}), Error);
  EXPECT_THROW(safetensors::write(path("x"), {{"a", &a}, {"a", &a}}, {}), Error);
  EXPECT_THROW(safetensors::write(path("x"), {{"", &a}}, {}), Error);
  EXPECT_THROW(safetensors::write(path("x"), {{"a", &a}}, {{"k", std::string("\xff\xfe")}}), Error);
}

TEST(SafetensorsReader, ConvertsF16Bf16F64ToFloat) {
  // F16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal); BF16: 1.0, -0.5; F64: 0.1, -1e300 -> -inf
  const auto f16 = raw<uint16_t>({0x3C00, 0xC000, 0x7BFF, 0x0001});
  const auto bf16 = raw<uint16_t>({0x3F80, 0xBF00});
  const auto f64 = raw<double>({0.1, 3.0});
  std::vector<uint8_t> data = f16;
  data.insert(data.end(), bf16.begin(), bf16.end());
  data.insert(data.end(), f64.begin(), f64.end());
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("d":{"dtype":"F64","shape":[2],"data_offsets":[12,28]}})";
  const File f = File::from_memory("t", file_bytes(header, data));
  EXPECT_EQ(f.read(*f.find("h")).data, (FloatBuffer{1.0f, -2.0f, 65504.0f, 5.9604645e-08f}));
  EXPECT_EQ(f.read(*f.find("b")).data, (FloatBuffer{1.0f, -0.5f}));
  EXPECT_EQ(f.read(*f.find("d")).data, (FloatBuffer{0.1f, 3.0f}));
  EXPECT_TRUE(f.metadata().empty());
}

TEST(SafetensorsReader, AcceptsEntriesInAnyHeaderOrderAndNullMetadata) {
  const std::string header =
      R"({"__metadata__":null,"second":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
      R"("first":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}   )";
  const File f = File::from_memory("t", file_bytes(header, raw<float>({1.5f, 2.5f})));
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "first");  // offset order
  EXPECT_EQ(f.read(*f.find("first")).data, (FloatBuffer{1.5f}));
  EXPECT_EQ(f.read(*f.find("second")).data, (FloatBuffer{2.5f}));
}

TEST(SafetensorsReader, RefusesHostileInputWithOneLineNamingTheProblem) {
  const auto four = raw<float>({1, 2, 3, 4});
  // Framing.
  EXPECT_NE(error_of({1, 2, 3}).find("too short"), std::string::npos);
  {
    std::vector<uint8_t> huge(16, 0);
    const uint64_t n = 200'000'000;
    std::memcpy(huge.data(), &n, 8);
    EXPECT_NE(error_of(huge).find("exceeds the limit"), std::string::npos);
    const uint64_t past = 9;
    std::memcpy(huge.data(), &past, 8);
    EXPECT_NE(error_of(huge).find("only 8 bytes follow"), std::string::npos);
  }
  expect_error("{\"a\": [", {}, {"not valid JSON"});
  expect_error("[1, 2]", {}, {"an array", "expected a JSON object"});
  // Entries.
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               raw<float>({1, 2}), {"'a'", "twice"});
  expect_error(R"({"a":1})", {}, {"'a'", "expected an object"});
  expect_error(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four, {"'a'", "missing 'dtype'"});
  expect_error(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", four, {"missing 'shape'"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1]}})", four, {"missing 'data_offsets'"});
  expect_error(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", raw<int64_t>({1}),
               {"'I64'", "F32|F16|BF16|F64"});
  expect_error(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", four, {"'dtype' is an integer"});
  expect_error(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four, {"negative dimension -1"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", four, {"'shape' holds a number"});
  expect_error(R"({"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", four, {"'shape' is a string"});
  expect_error(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", four,
               {"too large"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", four, {"[begin, end]"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", four, {"integers >= 0"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", four, {"end before begin"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,20]}})", four, {"past the end", "16 bytes"});
  expect_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, {"4 bytes in data_offsets", "expected 8",
                                                                                  "F32 [2]"});
  // Layout of the data section.
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", raw<float>({1, 2}), {"'a'", "gap", "expected 0"});
  expect_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
               raw<float>({1, 2, 3}), {"'b'", "overlaps"});
  expect_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", raw<float>({1, 2}), {"4 bytes of data after"});
  // Metadata.
  expect_error(R"({"__metadata__":{"k":1}})", {}, {"__metadata__ key 'k'", "expected a string"});
  expect_error(R"({"__metadata__":[1]})", {}, {"__metadata__ is an array"});
  // Hostile bytes in names are shown printable, on one line.
  const std::string message = error_of(file_bytes("{\"a\\nb\\u0001\":5}"));
  EXPECT_EQ(message.find('\n'), std::string::npos);
  EXPECT_NE(message.find("a\\x0Ab\\x01"), std::string::npos) << message;
}

TEST_F(SafetensorsFile, TruncationsAndByteFlipsNeverCrash) {
  Tensor a({3, 4});
  for (size_t i = 0; i < a.numel(); ++i) a.data[i] = static_cast<float>(i);
  Tensor b({5});
  safetensors::write(path("ok.safetensors"), {{"a", &a}, {"b", &b}}, {{"m", "x"}});
  std::ifstream in(path("ok.safetensors"), std::ios::binary);
  const std::vector<uint8_t> good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(File::from_memory("cut", cut), Error) << n;
  }
  std::mt19937 rng(11);
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> bad = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    try {
      const File f = File::from_memory("flip", bad);
      for (const auto& t : f.tensors()) (void)f.read(t);
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
}

// ---- --from safetensors / export ------------------------------------------------------------

ModelFile small_bert4rec_like() {
  ModelSpec s = testing::small_spec(9, 5, 8, 2);
  s.blocks.attention = AttentionKind::bidirectional;
  s.input.padding = Padding::right;
  s.input.positions = Positions::slot_index;
  s.input.embed_scale = false;
  s.input.embed_norm = true;
  s.readout.final_norm = false;
  s.blocks.mask_padded_keys = true;
  s.readout.slot = Readout::mask_token_drop_first;
  s.readout.head = true;
  s.scorer.output_bias = true;
  s.blocks.activation = Activation::gelu;
  s.blocks.ln_eps = 1e-12f;
  s.scorer.score = ScoreKind::softmax;
  ModelFile m;
  m.spec = s;
  m.tensors = testing::random_weights(s, 3);
  m.catalog = {"[PAD]", "i1", "it\"em 2", "x", "ü", "5", "6", "7", "8"};
  m.popularity = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  m.provenance.source = "recbole";
  m.provenance.source_detail = "test";
  m.provenance.rating_threshold = 3.3;
  return m;
}

using SafetensorsSource = TempDir;

TEST_F(SafetensorsSource, ExportThenConvertGivesTheSameModelFile) {
  const ModelFile m = small_bert4rec_like();
  export_safetensors(m, path("m.safetensors"));
  EXPECT_FALSE(fs::exists(path("m.safetensors.tmp")));
  ConvertOptions options;
  options.checkpoint = path("m.safetensors");
  const ModelFile back = convert_safetensors(options);
  EXPECT_TRUE(back.spec == m.spec) << "every field, ln_eps bit-identical";
  EXPECT_EQ(back.catalog, m.catalog);
  EXPECT_EQ(back.popularity, m.popularity);
  EXPECT_EQ(back.provenance.rating_threshold, m.provenance.rating_threshold);
  EXPECT_EQ(back.provenance.source, "safetensors");
  ASSERT_EQ(back.tensors.size(), m.tensors.size());
  for (const auto& [name, t] : m.tensors) {
    ASSERT_TRUE(back.tensors.count(name)) << name;
    EXPECT_EQ(back.tensors.at(name).shape, t.shape) << name;
    EXPECT_EQ(std::memcmp(back.tensors.at(name).ptr(), t.ptr(), t.numel() * 4), 0) << name;
  }
  EXPECT_NO_THROW(validate_model_file(back, "back"));
}

TEST_F(SafetensorsSource, FlagsOverrideMetadataAndItemIdsReplaceTheCatalog) {
  ModelFile m = small_bert4rec_like();
  export_safetensors(m, path("m.safetensors"));
  std::ofstream(path("ids.txt")) << "[PAD]\na\nb\nc\nd\ne\nf\ng\nh\n";
  ConvertOptions options;
  options.checkpoint = path("m.safetensors");
  options.item_ids_file = path("ids.txt");
  options.score = ScoreKind::raw;
  options.rating_threshold = 4.0;
  const ModelFile back = convert_safetensors(options);
  EXPECT_EQ(back.catalog[8], "h");
  EXPECT_EQ(back.spec.scorer.score, ScoreKind::raw);
  EXPECT_EQ(back.provenance.rating_threshold, 4.0);
  std::ofstream(path("short.txt")) << "[PAD]\na\n";
  options.item_ids_file = path("short.txt");
  try {
    convert_safetensors(options);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected 9"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsSource, MetadataErrorsNameTheKey) {
  const ModelFile m = small_bert4rec_like();
  auto refused = [&](std::map<std::string, std::string> meta, const std::string& must_mention) {
    std::vector<std::pair<std::string, const Tensor*>> tensors;
    for (const auto& decl : required_tensors(m.spec)) tensors.emplace_back(decl.name, &m.tensors.at(decl.name));
    safetensors::write(path("bad.safetensors"), tensors, meta);
    ConvertOptions options;
    options.checkpoint = path("bad.safetensors");
    try {
      convert_safetensors(options);
      ADD_FAILURE() << "accepted; expected an error mentioning " << must_mention;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(must_mention), std::string::npos) << e.what();
    }
  };
  const auto good = safetensors_metadata(m);
  for (const char* key : {"block", "attention", "mask_padded_keys", "zero_padded_rows", "embed_scale", "embed_norm",
                          "positions", "padding", "activation", "final_norm", "readout", "head", "output_bias",
                          "ln_eps", "score", "max_len", "d", "heads", "ffn_dim", "n_layers", "n_items"}) {
    auto meta = good;
    meta.erase(key);
    refused(meta, std::string("__metadata__ '") + key + "': missing");
  }
  auto meta = good;
  meta["ln_eps"] = "nan";
  refused(meta, "'ln_eps'");
  meta = good;
  meta["max_len"] = "6";  // the position table is [5, d]
  refused(meta, "embedding/position/weight");
  meta = good;
  meta["catalog"] = "[\"a\", 2]";
  refused(meta, "catalog");
  meta = good;
  meta["popularity"] = "[1, 2]";
  refused(meta, "popularity");
  meta = good;
  meta["rating_threshold"] = "high";
  refused(meta, "rating_threshold");
  meta = good;
  meta["readout"] = "last_slot";  // head needs a mask-token readout
  refused(meta, "head needs a mask-token readout");
}

}  // namespace
}  // namespace seqrec
