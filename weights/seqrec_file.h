// The .seqrec model file: a versioned cereal binary archive (little-endian).
//
//   magic "SEQREC\0\1" (8 bytes) | format version (u32) | spec | tensors | catalog |
//   popularity | provenance
//
// str = u64 byte length + bytes; bool = u8 (0/1). In file order:
//   spec        block, attention (str) | mask_padded_keys, zero_padded_rows, embed_scale,
//               embed_norm (bool) | positions, padding, activation (str) | final_norm (bool) |
//               readout (str) | head, output_bias (bool) | ln_eps (f32) | score (str) |
//               max_len, d, heads, ffn_dim, n_layers, n_items (i64)
//               Enums are their to_string() names, so reordering an enum keeps old files valid.
//   tensors     u64 count, then per tensor: name (str), dtype (str, "f32"), rank (u32),
//               shape (rank x i64), byte length (u64, = numel * 4), raw f32 data.
//               Written in required_tensors() order; read in any order.
//   catalog     u64 count, then one str per row
//   popularity  u64 count (0 or n_items), then count x u64
//   provenance  source, source_detail, source_file, converter_version (str) |
//               has rating_threshold (bool) [| rating_threshold (f64)]
//   then end of file: trailing bytes are an error.
//
// Tensors are fp32, named by the canonical /-scoped names of engine/model_spec.h
// (required_tensors). The loader checks every count, length, shape and value (finite)
// before it allocates or accepts, and throws seqrec::Error naming the file and the field,
// with expected vs. found.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/model_spec.h"
#include "engine/tensor.h"

namespace seqrec {

inline constexpr uint32_t kSeqrecFormatVersion = 1;

// Where the model came from and how it is served by default.
struct Provenance {
  std::string source;             // "pmixer", "recbole", "safetensors"
  std::string source_detail;      // e.g. "variant=post_ln", "RecBole 1.2 BERT4Rec"
  std::string source_file;        // checkpoint file name as given to convert
  std::string converter_version;  // seqrec version that wrote the file
  std::optional<double> rating_threshold;  // positives: rating >= threshold (none: all positive)
};

struct ModelFile {
  ModelSpec spec;
  std::map<std::string, Tensor> tensors;  // exactly required_tensors(spec)
  std::vector<std::string> catalog;       // raw item id per row; row 0 = padding (its text is ignored)
  std::vector<uint64_t> popularity;       // empty, or one count per row (training interactions)
  Provenance provenance;
};

// Checks the whole ModelFile as the loader would (spec, tensor set and shapes, finite
// values, catalog size and uniqueness, popularity size). Throws seqrec::Error.
void validate_model_file(const ModelFile& model, const std::string& what);

void save_model_file(const ModelFile& model, const std::string& path);
ModelFile load_model_file(const std::string& path);

}  // namespace seqrec
