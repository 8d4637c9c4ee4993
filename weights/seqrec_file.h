// The .seqrec model file (docs/models.md "The .seqrec file").
//
// Version 4 (written by this version), little-endian:
//
//   [0, 8)    magic "SEQREC\0\1"
//   [8, 12)   format version (u32) = 4
//   [12, 16)  reserved (u32) = 0
//   [16, 24)  header length H (u64)
//   [24, 32)  XXH3-64 of the header, seeded with the format version (version 2: unseeded)
//   [32, 32 + H)  header, a cereal binary archive:
//       spec         u64 count, then per field: name (str), value (str)  (engine/model_spec.h spec_fields)
//       tensors      u64 count, then per tensor: name (str), dtype (str "f32"), rank (u32),
//                    shape (rank x i64), offset (u64), byte length (u64), XXH3-64 (u64)
//       sections     u64 count, then per section: name (str), offset (u64), byte length (u64), XXH3-64 (u64)
//                      "catalog"     u64 n, u64 offsets[n + 1] (into the bytes that follow), the ids' bytes
//                      "popularity"  u64 counts[n_items]  (absent: no counts)
//                      "scan_table"  kernels::quantize_table of the scoring table,
//                                    kernels::quantized_table_bytes(n_items, d) bytes
//                      "inverse_norms"  f32[n_items]: 1 / ||row|| of the scoring table (0 for a zero row)
//                      "scan_table_int4"  kernels::quantize_table(..., ScanCode::int4) of it,
//                                    kernels::quantized_table_bytes(n_items, d, ScanCode::int4) bytes
//                    The last three (version 3; the int4 table from version 4) are derived from
//                    the tensors at conversion and only for catalogs the scorer pre-scans (the int4
//                    table: tables that stream from memory; engine/scorer_tables.h); a load uses
//                    them in place. Absent (older files, small catalogs): made at load.
//       provenance   source, source_detail, source_file, converter_version (str) |
//                    has rating_threshold (u8) [| rating_threshold (f64)]
//   data: every tensor and section at a 64-byte aligned offset after the header, in header
//   order, back to back (zero padding between); the file ends where the last one ends.
//   str = u64 byte length + bytes.
//
// The loader reads the file once into 64-byte aligned memory and the tensors are views of it:
// no per-tensor copies. It checks every count, length, offset and shape against the file's
// size before it allocates or reads, every checksum, and that every value is finite (in the
// same pass as the checksum), and names the field at fault with expected vs. found.
// Version 3 files (no int4 table), version 2 files (the same layout without the derived
// sections) and version 1 files (seqrec 0.1: the spec as fixed fields, tensors inline) still load.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/model_spec.h"
#include "engine/scorer_tables.h"
#include "engine/tensor.h"

namespace seqrec {

inline constexpr uint32_t kSeqrecFormatVersion = 4;

// Where the model came from and how it is served by default.
struct Provenance {
  std::string source;             // "pmixer", "recbole", "tisasrec", "gsasrec", "hstu", "safetensors"
  std::string source_detail;      // e.g. "variant=post_ln", "RecBole 1.2 BERT4Rec"
  std::string source_file;        // checkpoint file name as given to convert
  std::string converter_version;  // seqrec version that wrote the file
  std::optional<double> rating_threshold;  // positives: rating >= threshold (none: all positive)
};

struct ModelFile {
  ModelSpec spec;
  std::map<std::string, Tensor> tensors;  // exactly required_tensors(spec)
  std::vector<std::string> catalog;       // raw item id per row; row 0 = padding (its text is ignored)
  // Instead of `catalog` when loaded with CatalogLoad::in_place: the ids where the mapped file
  // holds them, indexed (no copy; a million ids cost the index alone).
  std::shared_ptr<Catalog> catalog_in_place;
  std::vector<uint64_t> popularity;       // empty, or one count per row (training interactions)
  Provenance provenance;
  StoredScorerTables scorer_tables;       // as read (version 3); never written from here: derived anew
  uint32_t format_version = kSeqrecFormatVersion;  // as read (1: an old file; re-convert it)
};

// Checks the whole ModelFile as the loader would (spec, tensor set and shapes, finite
// values, catalog size and uniqueness, popularity size). Throws seqrec::Error.
void validate_model_file(const ModelFile& model, const std::string& what);

void save_model_file(const ModelFile& model, const std::string& path);
// How load_model_file hands the catalog over: as strings in ModelFile::catalog (to inspect,
// export or re-save a model), or in place in ModelFile::catalog_in_place (to serve it).
enum class CatalogLoad { as_strings, in_place };

ModelFile load_model_file(const std::string& path, CatalogLoad catalog = CatalogLoad::as_strings);

}  // namespace seqrec
