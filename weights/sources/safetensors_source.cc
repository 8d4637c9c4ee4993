// safetensors under seqrec's canonical names ⇄ ModelFile. See safetensors_source.h for the
// metadata keys; the tensor names are required_tensors(spec)'s.
#include "weights/sources/safetensors_source.h"

#include <simdjson.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "engine/error.h"
#include "engine/text.h"
#include "weights/safetensors.h"

namespace seqrec {

namespace {

std::string single_quoted(std::string_view text) {
  std::string shown = printable(text);
  if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
  return "'" + shown + "'";
}

class Metadata {
 public:
  Metadata(std::string file, const std::map<std::string, std::string>& values) : file_(std::move(file)), values_(values) {}

  const std::string* find(const std::string& key) const {
    auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
  }
  const std::string& get(const std::string& key) const {
    const std::string* v = find(key);
    if (!v)
      throw Error(file_ + ": __metadata__: missing key '" + key +
                  "' (the spec is given as one string per ModelSpec field; see the README)");
    return *v;
  }
  [[noreturn]] void bad(const std::string& key, const std::string& expected) const {
    throw Error(where(key) + ": " + single_quoted(get(key)) + ", expected " + expected);
  }
  std::string where(const std::string& key) const { return file_ + ": __metadata__ '" + key + "'"; }

  double get_number(const std::string& key) const {
    const std::string& v = get(key);
    double out = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(out)) bad(key, "a finite decimal number");
    return out;
  }
 private:
  std::string file_;
  const std::map<std::string, std::string>& values_;
};

std::vector<std::string> parse_catalog(const Metadata& meta, int64_t n_items) {
  const std::string& text = meta.get("catalog");
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.parse(simdjson::padded_string(text)).get(root))
    throw Error(meta.where("catalog") + ": not valid JSON (" + simdjson::error_message(error) +
                "), expected a JSON array of item-id strings");
  simdjson::dom::array array;
  if (root.get_array().get(array)) throw Error(meta.where("catalog") + ": expected a JSON array of item-id strings");
  if (static_cast<int64_t>(array.size()) != n_items)
    throw Error(meta.where("catalog") + ": " + std::to_string(array.size()) + " ids, expected n_items = " +
                std::to_string(n_items) + " (one per row, row 0 being the padding row)");
  std::vector<std::string> ids;
  ids.reserve(array.size());
  for (simdjson::dom::element e : array) {
    std::string_view id;
    if (e.get_string().get(id))
      throw Error(meta.where("catalog") + ": element " + std::to_string(ids.size()) + " is not a string");
    ids.emplace_back(id);
  }
  return ids;
}

std::vector<uint64_t> parse_popularity(const Metadata& meta, int64_t n_items) {
  const std::string& text = meta.get("popularity");
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::dom::array array;
  if (parser.parse(simdjson::padded_string(text)).get(root) || root.get_array().get(array))
    throw Error(meta.where("popularity") + ": expected a JSON array of " + std::to_string(n_items) + " integers >= 0");
  if (static_cast<int64_t>(array.size()) != n_items)
    throw Error(meta.where("popularity") + ": " + std::to_string(array.size()) + " counts, expected n_items = " +
                std::to_string(n_items));
  std::vector<uint64_t> counts;
  counts.reserve(array.size());
  for (simdjson::dom::element e : array) {
    uint64_t n;
    if (e.get_uint64().get(n))
      throw Error(meta.where("popularity") + ": element " + std::to_string(counts.size()) + " is not an integer >= 0");
    counts.push_back(n);
  }
  return counts;
}

std::string json_array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + safetensors::json_quote(items[i]);
  return out + "]";
}

std::string number_text(double v, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
  return buffer;
}

}  // namespace

ModelFile convert_safetensors(const ConvertOptions& options) {
  const std::string& file = options.checkpoint;
  if (options.heads || options.max_len || options.variant)
    throw Error(std::string(options.heads ? "--heads" : options.max_len ? "--max-len" : "--variant") +
                ": not used with --from safetensors (the spec is the file's __metadata__)");
  const safetensors::File st = safetensors::File::open(file);
  const Metadata meta(file, st.metadata());

  // The spec: every metadata key but the catalog, popularity, threshold and description.
  static const std::set<std::string> kNotSpec = {"catalog", "popularity", "rating_threshold", "description"};
  SpecFields fields;
  for (const auto& [key, value] : st.metadata())
    if (!kNotSpec.count(key)) fields.emplace_back(key, key == "score" && options.score ? to_string(*options.score) : value);
  const ModelSpec spec = parse_spec_fields(fields, file + ": __metadata__", /*unknown_fields_are_errors=*/false);

  ModelFile model;
  model.spec = spec;
  const auto decls = required_tensors(spec);
  std::set<std::string> required;
  for (const TensorDecl& decl : decls) {
    required.insert(decl.name);
    const safetensors::TensorInfo* info = st.find(decl.name);
    if (!info)
      throw Error(file + ": missing tensor '" + decl.name + "' " + shape_string(decl.shape) + " (required by the spec in __metadata__)");
    if (info->shape != decl.shape)
      throw Error(file + ": tensor '" + decl.name + "': shape " + shape_string(info->shape) + ", expected " +
                  shape_string(decl.shape));
    Tensor t = st.read(*info);
    require_finite(t, file + ": tensor '" + decl.name + "'");
    model.tensors.emplace(decl.name, std::move(t));
  }
  for (const safetensors::TensorInfo& info : st.tensors())
    if (!required.count(info.name))
      throw Error(file + ": unexpected tensor " + single_quoted(info.name) +
                  " (not one the spec in __metadata__ requires; refusing to drop weights silently)");

  if (options.item_ids_file)
    model.catalog = read_item_ids(*options.item_ids_file, spec.n_items);
  else if (meta.find("catalog"))
    model.catalog = parse_catalog(meta, spec.n_items);
  else
    throw Error(file + ": no item ids: give them as __metadata__ 'catalog' (a JSON array of " +
                std::to_string(spec.n_items) + " strings) or with --item-ids");
  if (meta.find("popularity")) model.popularity = parse_popularity(meta, spec.n_items);
  if (options.rating_threshold)
    model.provenance.rating_threshold = options.rating_threshold;
  else if (meta.find("rating_threshold"))
    model.provenance.rating_threshold = meta.get_number("rating_threshold");
  model.provenance.source = "safetensors";
  const std::string* description = meta.find("description");
  model.provenance.source_detail = description ? *description : "safetensors under seqrec's canonical names";
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  return model;
}

std::map<std::string, std::string> safetensors_metadata(const ModelFile& model) {
  std::map<std::string, std::string> meta;
  for (const auto& [name, value] : spec_fields(model.spec)) meta[name] = value;
  meta["catalog"] = json_array(model.catalog);
  if (!model.popularity.empty()) {
    std::string counts = "[";
    for (std::size_t i = 0; i < model.popularity.size(); ++i) counts += (i ? "," : "") + std::to_string(model.popularity[i]);
    meta["popularity"] = counts + "]";
  }
  if (model.provenance.rating_threshold) meta["rating_threshold"] = number_text(*model.provenance.rating_threshold, 17);
  const Provenance& p = model.provenance;
  meta["description"] = "exported by seqrec " + p.converter_version + " from " + p.source +
                        (p.source_detail.empty() ? "" : " (" + p.source_detail + ")") +
                        (p.source_file.empty() ? "" : ", checkpoint " + p.source_file);
  return meta;
}

void export_safetensors(const ModelFile& model, const std::string& path) {
  validate_model_file(model, path);
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const TensorDecl& decl : required_tensors(model.spec)) tensors.emplace_back(decl.name, &model.tensors.at(decl.name));
  // Write beside the target and rename, so a failure never leaves a partial file under the name.
  const std::string tmp = path + ".tmp";
  try {
    safetensors::write(tmp, tensors, safetensors_metadata(model));
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw Error(path + ": cannot rename " + tmp + " into place (" + ec.message() + ")");
  }
}

}  // namespace seqrec
