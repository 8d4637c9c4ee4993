// Writes the binary seed inputs of the fuzzers that read model files, with the product's own
// writers so they always match the current formats (and need no checksum code of their own):
//   OUT/seqrec_file/   .seqrec version 2 files (save_model_file) of each block kind, and
//                      version 1 files (the seqrec 0.1 layout, written here) of the transformer
//   OUT/safetensors/   the same models as export_safetensors writes them
// Tiny models (a handful of items, d = 4): each file is a few KB. scripts/fuzz.sh runs this.
//
// Usage: seqrec_fuzz_make_seeds OUT
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/model_spec.h"
#include "tests/unit/test_models.h"
#include "weights/seqrec_file.h"
#include "weights/sources/safetensors_source.h"

namespace {

using namespace seqrec;

struct Seed {
  std::string name;
  ModelFile model;
  bool version1 = false;  // also as a version 1 file (seqrec 0.1 knew these models only)
};

ModelFile tiny(const ModelSpec& spec, bool with_popularity, std::optional<double> threshold) {
  ModelFile m;
  m.spec = spec;
  m.tensors = testing::random_weights(spec, 11);
  m.catalog = testing::offset_ids(spec.n_items);
  if (with_popularity)
    for (int64_t row = 0; row < spec.n_items; ++row) m.popularity.push_back(static_cast<uint64_t>(row % 3));
  m.provenance.source = "fuzz";
  m.provenance.source_detail = "seed";
  m.provenance.source_file = "seed.pth";
  m.provenance.converter_version = SEQREC_VERSION;
  m.provenance.rating_threshold = threshold;
  return m;
}

std::vector<Seed> seeds() {
  std::vector<Seed> out;
  ModelSpec pre_ln = testing::small_spec(5, 3, 4, 2);
  pre_ln.blocks.kind = BlockKind::pre_ln;
  pre_ln.scorer.score = ScoreKind::sigmoid;
  ModelSpec bert = testing::small_spec(5, 3, 4, 1);  // RecBole >= 1.2's BERT4Rec: [MASK] slot, output head
  bert.blocks.attention = AttentionKind::bidirectional;
  bert.blocks.mask_padded_keys = true;
  bert.input.padding = Padding::right;
  bert.input.positions = Positions::slot_index;
  bert.input.embed_scale = false;
  bert.input.embed_norm = true;
  bert.readout.slot = Readout::mask_token_drop_first;
  bert.readout.final_norm = false;
  bert.readout.head = true;
  bert.scorer.output_bias = true;
  bert.scorer.score = ScoreKind::softmax;
  out.push_back({"post_ln", tiny(testing::small_spec(5, 3, 4, 2), true, 3.5), true});
  out.push_back({"pre_ln", tiny(pre_ln, false, std::nullopt), true});
  out.push_back({"bert4rec", tiny(bert, false, std::nullopt), true});
  out.push_back({"gsasrec", tiny(testing::gsasrec_spec(5, 3, 4, 1), false, std::nullopt)});
  out.push_back({"tisasrec", tiny(testing::tisasrec_spec(5, 3, 4, 1, 3), false, 1.0)});
  out.push_back({"hstu", tiny(testing::hstu_spec(5, 3, 4, 1), true, std::nullopt)});
  return out;
}

// ---- the version 1 layout (weights/seqrec_file.cc read_v1), which nothing writes any more ----

class V1Writer {
 public:
  void u8(uint8_t v) { bytes_.push_back(v); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void i64(int64_t v) { raw(&v, 8); }
  void f32(float v) { raw(&v, 4); }
  void f64(double v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

std::vector<uint8_t> version1(const ModelFile& m) {
  const SpecFields fields = spec_fields(m.spec);
  auto field = [&](const char* name) -> std::string {
    for (const auto& [key, value] : fields)
      if (key == name) return value;
    throw Error(std::string("version 1 seed: the spec has no field ") + name);
  };
  auto flag = [&](const char* name) { return static_cast<uint8_t>(field(name) == "true"); };
  V1Writer w;
  w.raw("SEQREC\0\1", 8);
  w.u32(1);
  w.str(field("block"));
  w.str(field("attention"));
  w.u8(flag("mask_padded_keys"));
  w.u8(flag("zero_padded_rows"));
  w.u8(flag("embed_scale"));
  w.u8(flag("embed_norm"));
  w.str(field("positions"));
  w.str(field("padding"));
  w.str(field("activation"));
  w.u8(flag("final_norm"));
  w.str(field("readout"));
  w.u8(flag("head"));
  w.u8(flag("output_bias"));
  w.f32(std::stof(field("ln_eps")));
  w.str(field("score"));
  for (const char* name : {"max_len", "d", "heads", "ffn_dim", "n_layers", "n_items"}) w.i64(std::stoll(field(name)));
  const auto decls = required_tensors(m.spec);
  w.u64(decls.size());
  for (const TensorDecl& decl : decls) {
    const Tensor& t = m.tensors.at(decl.name);
    w.str(decl.name);
    w.str("f32");
    w.u32(static_cast<uint32_t>(t.shape.size()));
    for (int64_t dim : t.shape) w.i64(dim);
    w.u64(t.numel() * sizeof(float));
    w.raw(t.ptr(), t.numel() * sizeof(float));
  }
  w.u64(m.catalog.size());
  for (const std::string& id : m.catalog) w.str(id);
  w.u64(m.popularity.size());
  for (uint64_t count : m.popularity) w.u64(count);
  w.str(m.provenance.source);
  w.str(m.provenance.source_detail);
  w.str(m.provenance.source_file);
  w.str(m.provenance.converter_version);
  w.u8(m.provenance.rating_threshold ? 1 : 0);
  if (m.provenance.rating_threshold) w.f64(*m.provenance.rating_threshold);
  return w.bytes();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out = argv[1];
  try {
    std::filesystem::create_directories(out / "seqrec_file");
    std::filesystem::create_directories(out / "safetensors");
    int written = 0;
    for (const Seed& seed : seeds()) {
      save_model_file(seed.model, (out / "seqrec_file" / (seed.name + ".seqrec")).string());
      export_safetensors(seed.model, (out / "safetensors" / (seed.name + ".safetensors")).string());
      written += 2;
      if (seed.version1) {
        const std::vector<uint8_t> v1 = version1(seed.model);
        const std::filesystem::path path = out / "seqrec_file" / (seed.name + ".v1.seqrec");
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(v1.data()), v1.size());
        load_model_file(path.string());  // a seed the loader refuses would seed nothing useful
        ++written;
      }
    }
    std::fprintf(stderr, "seqrec_fuzz_make_seeds: wrote %d seed files under %s\n", written, out.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seqrec_fuzz_make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
