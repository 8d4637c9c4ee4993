// The torch.save reader (zip + pickle VM) against files written by real torch.save, with
// the expected contents written by PyTorch itself (tests/data/torch/make_fixtures.py), and
// against hostile input: truncation at every byte, byte corruption, hand-built malformed
// files and pickles, random opcode streams. Meant to run under ASan + UBSan too.
#include "weights/torch_checkpoint.h"

#include <gtest/gtest.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "weights/pickle.h"
#include "weights/zip_reader.h"

namespace seqrec {
namespace {

namespace fs = std::filesystem;
using namespace std::string_view_literals;  // pickles hold NUL bytes
using pickle::Kind;
using pickle::Value;

const std::string kDir = std::string(SEQREC_TEST_DATA_DIR) + "/torch/";

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<uint8_t> bytes(std::string_view text) { return {text.begin(), text.end()}; }

Value load_pickle(std::string_view text, const pickle::Limits& limits = {}) {
  auto data = bytes(text);
  return pickle::load(data, "test.pkl", limits);
}

// The message of the seqrec::Error that `f` throws ("" and a test failure if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a seqrec::Error";
  return "";
}

#define EXPECT_ERROR_HAS(statement, text)                   \
  do {                                                      \
    std::string message_ = error_of([&] { statement; });    \
    EXPECT_NE(message_.find(text), std::string::npos) << message_; \
    EXPECT_EQ(message_.find('\n'), std::string::npos) << message_; \
  } while (0)

// --- expected values, as PyTorch wrote them -----------------------------------------------

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<Expected> expected_tensors(simdjson::dom::array array) {
  std::vector<Expected> out;
  for (simdjson::dom::element t : array) {
    Expected e;
    e.name = std::string(std::string_view(t["name"]));
    for (simdjson::dom::element d : t["shape"].get_array()) e.shape.push_back(int64_t(d));
    for (simdjson::dom::element v : t["values"].get_array()) e.values.push_back(static_cast<float>(double(v)));
    out.push_back(std::move(e));
  }
  return out;
}

void expect_same(const Expected& want, const std::string& name, const Tensor& got) {
  EXPECT_EQ(want.name, name);
  EXPECT_EQ(want.shape, got.shape) << name;
  ASSERT_EQ(want.values.size(), got.numel()) << name;
  for (std::size_t i = 0; i < want.values.size(); ++i)
    ASSERT_EQ(want.values[i], got.data[i]) << name << "[" << i << "]";  // exact: same conversion as torch
}

void expect_state_dict(const std::vector<Expected>& want, const std::vector<std::pair<std::string, Tensor>>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (std::size_t i = 0; i < want.size(); ++i) expect_same(want[i], got[i].first, got[i].second);
}

// --- real torch.save files ----------------------------------------------------------------

TEST(TorchCheckpoint, ModuleStateDictMatchesPyTorch) {
  simdjson::dom::parser parser;
  simdjson::dom::element json = parser.load(kDir + "module_state_dict.json");
  auto want = expected_tensors(json["tensors"].get_array());

  TorchCheckpoint checkpoint = TorchCheckpoint::open(kDir + "module_state_dict.pt");
  EXPECT_EQ(checkpoint.prefix(), "module_state_dict");
  EXPECT_TRUE(checkpoint.root().is_dict());
  auto tensors = checkpoint.state_dict();
  expect_state_dict(want, tensors);
  // The names torch gives MultiheadAttention, Conv1d, LayerNorm and Embedding parameters.
  std::vector<std::string> names;
  for (const auto& [name, tensor] : tensors) names.push_back(name);
  EXPECT_NE(std::find(names.begin(), names.end(), "attention.in_proj_weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "attention.out_proj.bias"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "conv.weight"), names.end());
  // The OrderedDict's attributes (state_dict()._metadata) arrive as its BUILD state.
  ASSERT_NE(checkpoint.root().state(), nullptr);
  EXPECT_NE(checkpoint.root().state()->find("_metadata"), nullptr);
}

TEST(TorchCheckpoint, DtypesViewsAndSharedStoragesMatchPyTorch) {
  simdjson::dom::parser parser;
  simdjson::dom::element json = parser.load(kDir + "dtypes.json");
  auto want = expected_tensors(json["tensors"].get_array());

  TorchCheckpoint checkpoint = TorchCheckpoint::open(kDir + "dtypes.pt");
  expect_state_dict(want, checkpoint.state_dict());

  const Value& root = checkpoint.root();
  EXPECT_EQ(pickle::dtype_name(root.at("f64").tensor().storage.dtype), std::string("float64"));
  EXPECT_EQ(pickle::dtype_name(root.at("bf16").tensor().storage.dtype), std::string("bfloat16"));
  EXPECT_EQ(pickle::dtype_name(root.at("f16").tensor().storage.dtype), std::string("float16"));
  EXPECT_EQ(pickle::dtype_name(root.at("i64").tensor().storage.dtype), std::string("int64"));
  // The same tensor object twice comes through the memo; the transpose shares its storage.
  EXPECT_EQ(&root.at("weight"), &root.at("weight_tied"));
  EXPECT_EQ(root.at("weight").tensor().storage.key, root.at("weight_t").tensor().storage.key);
  EXPECT_EQ(root.at("weight_t").tensor().stride, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(root.at("grid_slice").tensor().offset, 6);
  EXPECT_TRUE(root.at("scalar").tensor().size.empty());
}

TEST(TorchCheckpoint, RecBoleCheckpointProtocol4) {
  simdjson::dom::parser parser;
  simdjson::dom::element json = parser.load(kDir + "recbole_checkpoint.json");
  TorchCheckpoint checkpoint = TorchCheckpoint::open(kDir + "recbole_checkpoint.pt");
  const Value& root = checkpoint.root();
  ASSERT_TRUE(root.is_dict());

  EXPECT_EQ(root.at("epoch").as_int(), int64_t(json["epoch"]));
  EXPECT_EQ(root.at("cur_step").as_int(), int64_t(json["cur_step"]));
  EXPECT_EQ(root.at("best_valid_score").as_float(), double(json["best_valid_score"]));
  EXPECT_TRUE(root.at("other_parameter").is_none());

  // The config: an opaque object of RecBole's class whose state holds final_config_dict.
  const Value& config = root.at("config");
  ASSERT_TRUE(config.is_object());
  EXPECT_EQ(config.qualified_name(), "recbole.config.configurator.Config");
  EXPECT_EQ(config.at("model").as_string(), "SASRec");  // find() looks in the object's state
  const Value& final_config = config.at("final_config_dict");
  ASSERT_TRUE(final_config.is_dict());
  for (auto [key, value] : json["config"].get_object()) {
    const Value& got = final_config.at(key);
    switch (value.type()) {
      case simdjson::dom::element_type::STRING: EXPECT_EQ(got.as_string(), std::string_view(value)) << key; break;
      case simdjson::dom::element_type::INT64: EXPECT_EQ(got.as_int(), int64_t(value)) << key; break;
      case simdjson::dom::element_type::DOUBLE: EXPECT_EQ(got.as_float(), double(value)) << key; break;
      default: ADD_FAILURE() << "unexpected JSON type for " << key;
    }
  }
  const Value& device = final_config.at("device");
  ASSERT_TRUE(device.is_object());
  EXPECT_EQ(device.qualified_name(), "torch.device");
  EXPECT_EQ(device.args().at(0).as_string(), "cpu");
  const Value& model_type = final_config.at("MODEL_TYPE");  // enum member, via getattr
  ASSERT_TRUE(model_type.is_global());
  EXPECT_EQ(model_type.module(), "recbole.utils.enum_type");
  EXPECT_EQ(model_type.name(), "ModelType.SEQUENTIAL");
  EXPECT_EQ(&final_config.at("metrics"), &final_config.at("valid_metric_names"));  // one list, memoised
  ASSERT_EQ(final_config.at("metrics").size(), 2u);
  EXPECT_EQ(final_config.at("metrics").at(1).as_string(), "NDCG");
  EXPECT_TRUE(final_config.at("repeatable").as_bool());
  EXPECT_EQ(final_config.at("big").kind(), Kind::BigInt);
  EXPECT_ERROR_HAS(final_config.at("big").as_int(), "fits in 64 bits");
  EXPECT_EQ(final_config.at("eval_args").at("split").at("RS").at(0).as_float(), 0.8);
  EXPECT_TRUE(final_config.at("load_col").at("inter").is_tuple());
  EXPECT_EQ(final_config.at("load_col").at("inter").at(3).as_string(), "timestamp");
  EXPECT_EQ(final_config.at("unused_fields").kind(), Kind::Set);
  EXPECT_EQ(final_config.at("data_bytes").as_bytes(), std::string("\x00\xff" "ab", 4));
  EXPECT_TRUE(final_config.at("nothing").is_none());
  EXPECT_EQ(final_config.find("no such key"), nullptr);
  EXPECT_ERROR_HAS(final_config.at("no such key"), "'no such key' not found");
  EXPECT_ERROR_HAS(final_config.at("model").as_int(),
                   "recbole_checkpoint.pt: recbole_checkpoint/data.pkl: expected an int, found str 'SASRec'");

  expect_state_dict(expected_tensors(json["tensors"].get_array()), checkpoint.state_dict(root.at("state_dict")));

  // The optimizer: int keys, tuples, and tensors of its own.
  const Value& optimizer = root.at("optimizer");
  const Value& group = optimizer.at("param_groups").at(0);
  EXPECT_EQ(group.at("lr").as_float(), double(json["optimizer"]["lr"]));
  EXPECT_EQ(group.at("betas").at(1).as_float(), double(json["optimizer"]["betas"].get_array().at(1)));
  EXPECT_EQ(group.at("params").size(), json["optimizer"]["params"].get_array().size());
  const Value* state0 = optimizer.at("state").find_int(0);
  ASSERT_NE(state0, nullptr);
  auto want = expected_tensors(json["optimizer"]["state0"].get_array());
  ASSERT_EQ(want.size(), state0->size());
  for (const auto& w : want) expect_same(w, w.name, checkpoint.read_tensor(state0->at(w.name).tensor(), w.name));

  // The whole checkpoint dict is not a state_dict.
  EXPECT_ERROR_HAS(checkpoint.state_dict(), "state_dict entry 'config' is recbole.config.configurator.Config object, "
                                            "expected a tensor");
  EXPECT_ERROR_HAS(checkpoint.state_dict(root.at("epoch")), "expected a state_dict");
}

TEST(TorchCheckpoint, HandBuiltZipWithoutZip64Records) {
  TorchCheckpoint checkpoint = TorchCheckpoint::open(kDir + "handmade_ok.pt");
  auto tensors = checkpoint.state_dict();
  ASSERT_EQ(tensors.size(), 1u);
  expect_same({"w", {3}, {1, 2, 3}}, tensors[0].first, tensors[0].second);
}

// --- malformed files --------------------------------------------------------------------

TEST(TorchCheckpoint, MalformedFilesSayWhatIsWrong) {
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "missing_storage.pt"), "storage '7' has no zip entry 'missing_storage/data/7'");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "missing_storage.pt"), "missing_storage.pt: ");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "tensor_out_of_storage.pt"), "tensor 'w'");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "tensor_out_of_storage.pt"), "reaches element 4, expected < 4");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "stride_out_of_storage.pt"), "reaches element 4, expected < 4");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "storage_entry_short.pt"), "to have at least 32 bytes, found 16");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "unknown_opcode.pt"),
                   "unknown_opcode.pt: unknown_opcode/data.pkl: at offset 3: unknown opcode 0xff");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "legacy.pt"), "legacy torch.save format");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "deflated.pt"), "compression method 8 is not supported");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir + "no_such_file.pt"), "cannot open");
  EXPECT_ERROR_HAS(TorchCheckpoint::open(kDir), "not a regular file");
}

TEST(TorchCheckpoint, EmptyAndNonZipFiles) {
  EXPECT_ERROR_HAS(TorchCheckpoint::from_memory("empty.pt", {}), "empty.pt: empty file");
  EXPECT_ERROR_HAS(TorchCheckpoint::from_memory("text.pt", bytes("hello, world\n")), "text.pt: not a zip archive");
  EXPECT_ERROR_HAS(TorchCheckpoint::from_memory("tiny.pt", bytes("PK")), "not a zip archive");
  EXPECT_ERROR_HAS(TorchCheckpoint::from_memory("nodir.pt", bytes(std::string("PK\x03\x04", 4) + std::string(40, '\0'))),
                   "no zip end-of-central-directory record");

  // And from disk, through open().
  const fs::path dir = fs::temp_directory_path() / ("seqrec_torch_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream((dir / "empty.pt").string()).close();
  std::ofstream((dir / "text.pt").string()) << "not a checkpoint";
  EXPECT_ERROR_HAS(TorchCheckpoint::open((dir / "empty.pt").string()), "empty.pt: empty file");
  EXPECT_ERROR_HAS(TorchCheckpoint::open((dir / "text.pt").string()), "not a zip archive");
  fs::remove_all(dir);
}

// Opens and converts, comparing with the intact file: a damaged file must either fail with a
// seqrec::Error or (damage in bytes nobody reads, like header padding) give the same tensors.
void expect_error_or_same(const std::string& name, std::vector<uint8_t> data, const std::string& state_dict_key,
                          const std::vector<std::pair<std::string, Tensor>>& intact) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  try {
    TorchCheckpoint checkpoint = TorchCheckpoint::from_memory(name, std::move(data));
    tensors = state_dict_key.empty() ? checkpoint.state_dict()
                                     : checkpoint.state_dict(checkpoint.root().at(state_dict_key));
  } catch (const Error&) {
    return;
  }
  ASSERT_EQ(tensors.size(), intact.size()) << name;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_EQ(tensors[i].first, intact[i].first) << name;
    ASSERT_EQ(tensors[i].second.shape, intact[i].second.shape) << name;
    ASSERT_EQ(tensors[i].second.data, intact[i].second.data) << name;
  }
}

struct Fixture {
  const char* file;
  const char* state_dict_key;
};
const Fixture kFixtures[] = {{"module_state_dict.pt", ""}, {"dtypes.pt", ""}, {"recbole_checkpoint.pt", "state_dict"},
                             {"handmade_ok.pt", ""}};

std::vector<std::pair<std::string, Tensor>> intact_tensors(const Fixture& f) {
  TorchCheckpoint checkpoint = TorchCheckpoint::open(kDir + f.file);
  return *f.state_dict_key ? checkpoint.state_dict(checkpoint.root().at(f.state_dict_key)) : checkpoint.state_dict();
}

TEST(TorchCheckpoint, TruncatedAtEveryByteThrows) {
  for (const Fixture& f : kFixtures) {
    const auto data = read_file(kDir + f.file);
    for (std::size_t n = 0; n < data.size(); ++n) {
      std::vector<uint8_t> cut(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
      std::string name = std::string(f.file) + " cut at " + std::to_string(n);
      std::string message = error_of([&] { TorchCheckpoint::from_memory(name, std::move(cut)); });
      ASSERT_FALSE(message.empty()) << name;
    }
  }
}

TEST(TorchCheckpoint, CorruptedBytesThrowOrChangeNothing) {
  std::mt19937 rng(20240601);
  for (const Fixture& f : kFixtures) {
    const auto data = read_file(kDir + f.file);
    const auto intact = intact_tensors(f);
    // Every byte once with a random change, plus random multi-byte damage.
    for (std::size_t at = 0; at < data.size(); ++at) {
      auto bad = data;
      bad[at] = static_cast<uint8_t>(bad[at] ^ (1 + rng() % 255));
      expect_error_or_same(std::string(f.file) + " byte " + std::to_string(at), std::move(bad), f.state_dict_key,
                           intact);
    }
    for (int round = 0; round < 300; ++round) {
      auto bad = data;
      for (int k = 0; k < 4; ++k) bad[rng() % bad.size()] = static_cast<uint8_t>(rng());
      expect_error_or_same(std::string(f.file) + " round " + std::to_string(round), std::move(bad), f.state_dict_key,
                           intact);
    }
  }
}

// The file with its data.pkl replaced by `pickle` (same length) and its CRC-32 fields
// updated, so the zip is sound and only the pickle is hostile.
std::vector<uint8_t> with_pickle(std::vector<uint8_t> file, const ZipReader::Entry& entry,
                                 std::span<const uint8_t> pickle) {
  std::copy(pickle.begin(), pickle.end(), file.begin() + static_cast<std::ptrdiff_t>(entry.data_offset));
  const uint32_t crc = ZipReader::crc32(pickle);
  for (std::size_t at = 0; at + 4 <= file.size(); ++at) {
    if (at + 4 > entry.data_offset && at < entry.data_offset + entry.size) continue;
    uint32_t found;
    std::memcpy(&found, &file[at], 4);
    if (found == entry.crc32) std::memcpy(&file[at], &crc, 4);
  }
  return file;
}

TEST(TorchCheckpoint, MutatedPicklesInSoundZipsThrowOrLoad) {
  std::mt19937 rng(99);
  for (const Fixture& f : kFixtures) {
    const auto data = read_file(kDir + f.file);
    ZipReader zip = ZipReader::from_memory(f.file, data);
    const ZipReader::Entry& entry = zip.entries().front();
    ASSERT_NE(entry.name.find("data.pkl"), std::string::npos);
    const auto pkl = zip.data(entry);
    // Sanity: an unchanged pickle through with_pickle still loads.
    EXPECT_NO_THROW(TorchCheckpoint::from_memory(f.file, with_pickle(data, entry, pkl)));
    int loaded = 0;
    for (std::size_t at = 0; at < pkl.size(); ++at) {
      std::vector<uint8_t> bad(pkl.begin(), pkl.end());
      bad[at] = static_cast<uint8_t>(bad[at] ^ (1 + rng() % 255));
      try {
        TorchCheckpoint checkpoint = TorchCheckpoint::from_memory(f.file, with_pickle(data, entry, bad));
        const Value* dict = *f.state_dict_key ? checkpoint.root().find(f.state_dict_key) : &checkpoint.root();
        if (dict) (void)checkpoint.state_dict(*dict);
        (void)checkpoint.root().describe();
        ++loaded;
      } catch (const Error&) {
      }
    }
    // Some changes are harmless (a float in the config, a key's spelling): the machine must
    // accept those rather than reject everything.
    EXPECT_GT(loaded, 0) << f.file;
  }
}

// --- the zip reader ----------------------------------------------------------------------

TEST(ZipReader, ReadsTorchZip64Archive) {
  ZipReader zip = ZipReader::open(kDir + "module_state_dict.pt");
  ASSERT_NE(zip.find("module_state_dict/version"), nullptr);
  auto version = zip.data("module_state_dict/version");
  EXPECT_EQ(std::string(version.begin(), version.end()), "3\n");
  EXPECT_EQ(zip.entries().front().name, "module_state_dict/data.pkl");
  EXPECT_EQ(zip.find("nope"), nullptr);
  EXPECT_ERROR_HAS(zip.data("nope"), "zip entry 'nope' not found");
  for (const auto& entry : zip.entries()) {
    EXPECT_EQ(ZipReader::crc32(zip.data(entry)), entry.crc32) << entry.name;
    if (entry.name.find("/data/") != std::string::npos) {
      EXPECT_EQ(entry.data_offset % 64, 0u) << entry.name;  // torch aligns storages
    }
  }
}

TEST(ZipReader, Crc32OfCheckValue) {
  EXPECT_EQ(ZipReader::crc32(bytes("123456789")), 0xCBF43926u);
  EXPECT_EQ(ZipReader::crc32(bytes("")), 0u);
}

// --- the pickle machine ------------------------------------------------------------------

TEST(Pickle, TextProtocolOpcodes) {
  // Protocol 0: (dp0\nS'a'\np1\nI5\nsS'b'\n(lp2\nF1.5\naL-7L\naV\u00e9\\u20ac\naI01\nas.
  Value v = load_pickle(
      "(dp0\nS'a\\'\\n'\np1\nI5\nsS'b'\n(lp2\nF1.5\naL-7L\naV\xe9\\u20ac\naI01\nasg1\n(I1\nI2\ntp3\ns.");
  ASSERT_TRUE(v.is_dict());
  ASSERT_EQ(v.items().size(), 3u);
  EXPECT_EQ(v.items()[0].key->as_string(), "a'\n");
  EXPECT_EQ(v.items()[0].value->as_int(), 5);
  const Value& list = v.at("b");
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list.at(0).as_float(), 1.5);
  EXPECT_EQ(list.at(1).as_int(), -7);
  EXPECT_EQ(list.at(2).as_string(), "\xc3\xa9\xe2\x82\xac");  // U+00E9 U+20AC in UTF-8
  EXPECT_TRUE(list.at(3).as_bool());
  // g1 fetched the key "a'\n" again and set it to (1, 2): the last one wins, as in Python.
  EXPECT_EQ(v.items()[2].key, v.items()[0].key);
  EXPECT_EQ(v.at("a'\n").at(1).as_int(), 2);
}

TEST(Pickle, BinaryIntsLongsFloats) {
  // PROTO 2, MARK, BININT -2, BININT1 255, BININT2 65535, LONG1 2^63-1, LONG1 -2^63,
  // LONG1 2^64 (big), LONG1 0, BINFLOAT -2.5, LONG4 -1, TUPLE, STOP
  std::string p = "\x80\x02(";
  p += std::string("J\xfe\xff\xff\xff", 5);
  p += "K\xff";
  p += "M\xff\xff";
  p += std::string("\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f", 10);
  p += std::string("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80", 10);
  p += std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01", 11);
  p += std::string("\x8a\x00", 2);
  p += std::string("G\xc0\x04\x00\x00\x00\x00\x00\x00", 9);
  p += std::string("\x8b\x01\x00\x00\x00\xff", 6);
  p += "t.";
  Value v = load_pickle(p);
  ASSERT_TRUE(v.is_tuple());
  ASSERT_EQ(v.size(), 9u);
  EXPECT_EQ(v.at(0).as_int(), -2);
  EXPECT_EQ(v.at(1).as_int(), 255);
  EXPECT_EQ(v.at(2).as_int(), 65535);
  EXPECT_EQ(v.at(3).as_int(), INT64_MAX);
  EXPECT_EQ(v.at(4).as_int(), INT64_MIN);
  EXPECT_EQ(v.at(5).kind(), Kind::BigInt);
  EXPECT_EQ(v.at(6).as_int(), 0);
  EXPECT_EQ(v.at(7).as_float(), -2.5);
  EXPECT_EQ(v.at(8).as_int(), -1);
}

TEST(Pickle, MemoSharesMutableObjectsAndCyclesAreSafe) {
  // l = []; d = {'x': l, 'y': l}; l.append(l); l.append(1)  — the list is memoised empty,
  // filled later, and contains itself.
  auto p = "\x80\x02}q\x00(X\x01\x00\x00\x00x]q\x01(h\x01K\x01" "eX\x01\x00\x00\x00yh\x01u."sv;
  Value v = load_pickle(p);
  const Value& x = v.at("x");
  EXPECT_EQ(&x, &v.at("y"));
  ASSERT_EQ(x.size(), 2u);
  EXPECT_EQ(&x.at(0), &x);
  EXPECT_EQ(x.at(1).as_int(), 1);
  EXPECT_EQ(pickle::reachable(v).size(), 5u);  // the dict, 'x', the list, 1, 'y': each once
}

TEST(Pickle, TorchRebuildFunctionsBecomeTensors) {
  // _rebuild_parameter(_rebuild_tensor_v2(pid, 1, (2, 3), (3, 1), False, OrderedDict()), True, OrderedDict())
  auto p =
      "\x80\x02" "ctorch._utils\n_rebuild_parameter\n"
      "ctorch._utils\n_rebuild_tensor_v2\n"
      "((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x00" "5X\x03\x00\x00\x00" "cpuK\x07tQ"
      "K\x01K\x02K\x03\x86K\x03K\x01\x86\x89" "ccollections\nOrderedDict\n)Rtq\x00R"
      "\x88" "ccollections\nOrderedDict\n)R\x87R."sv;
  Value v = load_pickle(p);
  ASSERT_TRUE(v.is_tensor()) << v.describe();
  const pickle::TensorRef& t = v.tensor();
  EXPECT_EQ(t.storage.key, "5");
  EXPECT_EQ(t.storage.dtype, pickle::DType::F16);
  EXPECT_EQ(t.storage.numel, 7);
  EXPECT_EQ(t.storage.location, "cpu");
  EXPECT_EQ(t.offset, 1);
  EXPECT_EQ(t.size, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.stride, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(v.describe(), "tensor float16 [2, 3]");
}

TEST(Pickle, UnknownClassesStayObjects) {
  // Protocol 2 NEWOBJ + BUILD of an unknown class, an old-style enum REDUCE(cls, (2,)),
  // bytes written by Python 3 at protocol 2 (_codecs.encode), and set(...).
  auto p =
      "\x80\x02(crecbole.config.configurator\nConfig\n)\x81}X\x01\x00\x00\x00kK\x01sb"
      "crecbole.utils.enum_type\nModelType\nK\x02\x85R"
      "c_codecs\nencode\nX\x04\x00\x00\x00\xc3\xbf" "abX\x06\x00\x00\x00latin1\x86R"
      "c__builtin__\nset\n]K\x07\x61\x85Rt."sv;
  Value v = load_pickle(p);
  ASSERT_EQ(v.size(), 4u);
  const Value& config = v.at(0);
  EXPECT_EQ(config.qualified_name(), "recbole.config.configurator.Config");
  EXPECT_EQ(config.at("k").as_int(), 1);
  EXPECT_EQ(config.args().size(), 0u);
  const Value& member = v.at(1);
  EXPECT_EQ(member.name(), "ModelType");
  EXPECT_EQ(member.args().at(0).as_int(), 2);
  EXPECT_EQ(v.at(2).as_bytes(), "\xff" "ab");
  EXPECT_EQ(v.at(3).kind(), Kind::Set);
  EXPECT_EQ(v.at(3).at(0).as_int(), 7);
}

TEST(Pickle, ErrorsNameOpcodeAndOffset) {
  EXPECT_ERROR_HAS(load_pickle("\x80\x02\xff."), "test.pkl: at offset 2: unknown opcode 0xff");
  EXPECT_ERROR_HAS(load_pickle(""), "test.pkl: empty pickle");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02}"), "test.pkl: at offset 3: the pickle ends without a STOP opcode");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02X\x05\x00"sv), "opcode BINUNICODE at offset 2: needs 4 bytes, only 2 left");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02."), "opcode STOP at offset 2: stack underflow");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02h\x05."), "opcode BINGET at offset 2: memo key 5 not found");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02X\xff\xff\xff\x7f" "abc."), "opcode BINUNICODE at offset 2: length 2147483647");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02" "0."), "opcode POP at offset 2: stack underflow");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02K\x01(R."), "opcode REDUCE at offset 5: stack underflow (below the MARK)");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02K\x01K\x02K\x03s."), "expected a dict to set items in, found int 1");
  EXPECT_ERROR_HAS(load_pickle("\x80\x09N."), "protocol 9 is not supported");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02t."), "no MARK");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nK\x00K\x00K\x00tQ."sv),
                   "opcode BINPERSID at offset 42: expected a storage key string, found int 0");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02(X\x07\x00\x00\x00storagectorch\nComplexFloatStorage\n"
                               "X\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x00tQ."sv),
                   "storage class torch.ComplexFloatStorage is not supported");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02" "c\x01\x02"), "expected a newline-terminated argument");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02I12x\n."), "expected a decimal integer");
}

TEST(Pickle, LimitsStopHostileInput) {
  pickle::Limits limits;
  limits.max_stack = 100;
  EXPECT_ERROR_HAS(load_pickle("\x80\x02" + std::string(200, 'N') + ".", limits), "stack deeper than 100");
  EXPECT_ERROR_HAS(load_pickle("\x80\x02" + std::string(200, '(') + ".", limits), "stack deeper than 100");
  limits = {};
  limits.max_objects = 50;
  EXPECT_ERROR_HAS(load_pickle("\x80\x02]" + std::string(100, ']') + ".", limits), "more than 50 objects");
  limits = {};
  limits.max_memo = 10;
  std::string puts = "\x80\x02N";
  for (int i = 0; i < 20; ++i) puts += "q" + std::string(1, static_cast<char>(i));
  EXPECT_ERROR_HAS(load_pickle(puts + ".", limits), "memo larger than 10");
  // set(l) rebuilt from one memoised list again and again would copy without end.
  std::string copies = std::string("\x80\x02]q\x00("sv) + std::string(1000, 'N') + "e";
  for (int i = 0; i < 4000; ++i) copies += "c__builtin__\nset\nh\x00\x85R0"sv;
  EXPECT_ERROR_HAS(load_pickle(copies + "N."), "copy budget");
}

TEST(Pickle, DeepNestingNeitherRecursesNorCrashes) {
  // A million nested 1-tuples: ((((...),),),) — destroyed and walked without recursion.
  std::string p = "\x80\x02N" + std::string(1000000, '\x85') + ".";
  Value v = load_pickle(p);
  EXPECT_TRUE(v.is_tuple());
  EXPECT_EQ(pickle::reachable(v).size(), 1000001u);
  const Value* inner = &v;
  for (int i = 0; i < 1000000; ++i) inner = &inner->at(0);
  EXPECT_TRUE(inner->is_none());
}

TEST(Pickle, EveryTruncationOfARealPickleThrows) {
  ZipReader zip = ZipReader::open(kDir + "recbole_checkpoint.pt");
  auto pkl = zip.data("recbole_checkpoint/data.pkl");
  for (std::size_t n = 0; n < pkl.size(); ++n)
    ASSERT_FALSE(error_of([&] { pickle::load(pkl.first(n), "cut.pkl"); }).empty()) << n;
}

TEST(Pickle, RandomOpcodeStreamsNeverCrash) {
  // Streams of valid opcodes with short random arguments: exercises every error path of the
  // machine. Any outcome but a seqrec::Error or a Value is a failure (ASan/UBSan watch too).
  const std::string opcodes = "(.012FIJKLMNPQRSTUVXabcd}eghijl]opqrst)uGBC";
  const std::string high = "\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98";
  std::mt19937 rng(7);
  int loaded = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string p = "\x80\x04";
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      p += rng() % 4 ? opcodes[rng() % opcodes.size()] : high[rng() % high.size()];
      const int args = static_cast<int>(rng() % 4);
      for (int k = 0; k < args; ++k) p += static_cast<char>(rng() % 3 ? rng() % 8 : rng());
      if (rng() % 8 == 0) p += "\n";
    }
    if (rng() % 2) p += ".";
    try {
      Value v = load_pickle(p);
      (void)v.describe();
      (void)pickle::reachable(v);
      ++loaded;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(loaded, 0);
}

}  // namespace
}  // namespace seqrec
