// safetensors under seqrec's own names → canonical model (models.md, Source 4), and back.
//
// The documented route for any trainer: tensors named as required_tensors() names them
// (engine/model_spec.h), the spec in __metadata__ as its named fields (spec_fields: "block"
// picks the kind, and each kind reads its own fields; the README lists them all), plus
//   catalog            JSON array of n_items strings: the raw item id of every row (row 0 =
//                      padding, its text ignored); or give --item-ids instead
//   popularity         optional JSON array of n_items integers (training interactions per row)
//   rating_threshold   optional decimal number: rating >= it is positive
//   description        optional free text, kept as provenance
// Unknown metadata keys are ignored; unknown tensors are an error.
#pragma once

#include <map>
#include <string>

#include "weights/sources/source.h"

namespace seqrec {

// Reads options.checkpoint as safetensors. options.item_ids_file replaces the metadata's
// catalog, options.rating_threshold and options.score override theirs. Throws seqrec::Error.
ModelFile convert_safetensors(const ConvertOptions& options);

// The __metadata__ that describes `model` (every key above that applies).
std::map<std::string, std::string> safetensors_metadata(const ModelFile& model);

// Writes `model` as a safetensors file (F32, required_tensors() order) with
// safetensors_metadata(model). Throws seqrec::Error.
void export_safetensors(const ModelFile& model, const std::string& path);

}  // namespace seqrec
