#include <cstdio>
#include <filesystem>
#include <iostream>
#include <set>

#include "cli/commands.h"
#include "engine/platform.h"
#include "weights/seqrec_file.h"

namespace seqrec::cli {

namespace {

// "name value, name value" for the spec fields of one stage.
std::string joined(const SpecFields& fields, const std::set<std::string>& names) {
  std::string out;
  for (const auto& [name, value] : fields)
    if (names.count(name)) out += (out.empty() ? "" : ", ") + name + " " + value;
  return out;
}

}  // namespace

Action add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto verify = std::make_shared<bool>(false);
  app.add_option("model", *path, "The .seqrec model file")->required();
  app.add_flag("--verify", *verify,
               "Only check the file: every checksum, count, shape and value (loading checks all of it too); "
               "prints 'ok' or the one-line error");
  return [path, verify] {
    const ModelFile m = load_model_file(*path);  // checks every checksum and value
    if (*verify) {
      std::printf("ok: %s (format v%u) — every checksum, count, shape and value checked\n", path->c_str(),
                  m.format_version);
      return 0;
    }
    const ModelSpec& s = m.spec;
    size_t parameters = 0;
    for (const auto& [name, tensor] : m.tensors) parameters += tensor.numel();
    const Provenance& p = m.provenance;
    const SpecFields fields = spec_fields(s);
    const std::set<std::string> shared = {"block", "d", "max_len", "n_items", "embed_scale", "positions", "padding",
                                          "embed_norm", "zero_padded_rows", "readout", "final_norm", "head",
                                          "l2_normalize", "output_table", "output_bias", "score", "temperature",
                                          "padding_in_softmax"};
    std::set<std::string> kind_fields;
    for (const auto& [name, value] : fields)
      if (!shared.count(name)) kind_fields.insert(name);
    std::printf("file          %s (%.1f MiB, format v%u%s)\n", path->c_str(),
                std::filesystem::file_size(*path) / 1048576.0, m.format_version,
                m.format_version < kSeqrecFormatVersion ? ": an old file, re-convert it for faster loads" : "");
    std::printf("source        %s — %s\n", p.source.c_str(), p.source_detail.c_str());
    std::printf("checkpoint    %s\n", p.source_file.c_str());
    std::printf("converter     seqrec %s\n", p.converter_version.c_str());
    std::printf("input         %s\n",
                joined(fields, {"embed_scale", "positions", "padding", "embed_norm", "zero_padded_rows"}).c_str());
    std::printf("blocks        %s x %lld: %s\n", to_string(s.blocks.kind), (long long)s.blocks.n_layers,
                joined(fields, kind_fields).c_str());
    std::printf("readout       %s\n", joined(fields, {"readout", "final_norm", "head", "l2_normalize"}).c_str());
    std::printf("scorer        %s\n", joined(fields, {"output_table", "output_bias", "score", "temperature", "padding_in_softmax"}).c_str());
    std::printf("time          %s\n", s.uses_now()    ? "reads interaction times and \"now\""
                                      : s.uses_time() ? "reads interaction times"
                                                      : "order only");
    std::printf("sizes         d %lld, max_len %lld\n", (long long)s.d, (long long)s.max_len);
    std::printf("parameters    %zu (%zu tensors)\n", parameters, m.tensors.size());
    std::printf("catalog       %lld items (+ padding row)\n", (long long)(s.n_items - 1));
    std::printf("popularity    %s\n", m.popularity.empty() ? "none" : "training counts");
    if (m.scorer_tables.scan_table && m.scorer_tables.scan_table_int4)
      std::printf("scan table    stored (%.1f MiB int8 + %.1f MiB int4 + inverse norms): used in place at load\n",
                  m.scorer_tables.scan_table_bytes / 1048576.0, m.scorer_tables.scan_table_int4_bytes / 1048576.0);
    else if (m.scorer_tables.scan_table)
      std::printf("scan table    stored (%.1f MiB int8 + inverse norms): used in place at load\n",
                  m.scorer_tables.scan_table_bytes / 1048576.0);
    std::printf("score         %s\n", to_string(s.scorer.score));
    if (p.rating_threshold)
      std::printf("threshold     rating >= %g is positive\n", *p.rating_threshold);
    else
      std::printf("threshold     none (every interaction is positive)\n");
    std::printf("cpu path      %s on %s (this binary runs here: %s)\n", kernel_path().c_str(), cpu_model().c_str(),
                supported_kernel_paths().c_str());
    return 0;
  };
}

}  // namespace seqrec::cli
