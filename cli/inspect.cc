#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>

#include "cli/commands.h"
#include "engine/platform.h"
#include "weights/seqrec_file.h"

namespace seqrec::cli {

Action add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  app.add_option("model", *path, "The .seqrec model file")->required();
  return [path] {
    const ModelFile m = load_model_file(*path);
    const ModelSpec& s = m.spec;
    size_t parameters = 0;
    for (const auto& [name, tensor] : m.tensors) parameters += tensor.numel();
    const Provenance& p = m.provenance;
    std::printf("file          %s (%.1f MiB, format v%u)\n", path->c_str(),
                std::filesystem::file_size(*path) / 1048576.0, kSeqrecFormatVersion);
    std::printf("source        %s — %s\n", p.source.c_str(), p.source_detail.c_str());
    std::printf("checkpoint    %s\n", p.source_file.c_str());
    std::printf("converter     seqrec %s\n", p.converter_version.c_str());
    std::printf("architecture  block %s, attention %s%s%s\n", to_string(s.block), to_string(s.attention),
                s.mask_padded_keys ? " (padded keys masked)" : "", s.zero_padded_rows ? " (padded rows zeroed)" : "");
    std::printf("              positions %s, padding %s, readout %s, activation %s\n", to_string(s.positions),
                to_string(s.padding), to_string(s.readout), to_string(s.activation));
    std::printf("              embed_scale %s, embed_norm %s, final_norm %s, head %s, output_bias %s, ln_eps %g\n",
                s.embed_scale ? "yes" : "no", s.embed_norm ? "yes" : "no", s.final_norm ? "yes" : "no",
                s.head ? "yes" : "no", s.output_bias ? "yes" : "no", s.ln_eps);
    std::printf("sizes         d %lld, heads %lld, ffn %lld, layers %lld, max_len %lld\n", (long long)s.d,
                (long long)s.heads, (long long)s.ffn_dim, (long long)s.n_layers, (long long)s.max_len);
    std::printf("parameters    %zu (%zu tensors)\n", parameters, m.tensors.size());
    std::printf("catalog       %lld items (+ padding row)\n", (long long)(s.n_items - 1));
    std::printf("popularity    %s\n", m.popularity.empty() ? "none" : "training counts");
    std::printf("score         %s\n", to_string(s.score));
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
