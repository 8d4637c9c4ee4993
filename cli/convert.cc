#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "engine/error.h"
#include "weights/seqrec_file.h"
#include "weights/sources/source.h"

namespace seqrec::cli {

Action add_convert(CLI::App& app) {
  struct Flags {
    std::string from, checkpoint, out, score;
    ConvertOptions options;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--from", f->from, "Source framework: pmixer (SASRec.pytorch)")->required();
  app.add_option("checkpoint", f->checkpoint, "The checkpoint file (torch.save)")->required();
  app.add_option("--out", f->out, "The .seqrec file to write")->required();
  app.add_option("--item-ids", f->options.item_ids_file,
                 "Raw item id per embedding row, one per line (line 0 = padding row); default: row i has id i");
  app.add_option("--heads", f->options.heads, "Attention heads (default: the file name's head=N, else 1)");
  app.add_option("--max-len", f->options.max_len, "Max sequence length L (default: the file name's maxlen=N, else from pos_emb)");
  app.add_option("--variant", f->options.variant, "SASRec.pytorch generation: pre_ln|post_ln|original (default post_ln)");
  app.add_option("--rating-threshold", f->options.rating_threshold,
                 "Interactions with rating >= X are positives (default: every interaction is)");
  app.add_option("--score", f->score, "What `score` reports: sigmoid|softmax|raw (default: the source's loss)");

  return [f] {
    if (!f->score.empty()) f->options.score = parse_score("--score", f->score);
    f->options.checkpoint = f->checkpoint;
    ModelFile model;
    if (f->from == "pmixer")
      model = convert_pmixer(f->options);
    else
      throw Error("--from: unknown source '" + f->from + "' (expected pmixer)");
    model.provenance.converter_version = SEQREC_VERSION;
    validate_model_file(model, f->out);
    save_model_file(model, f->out);
    const ModelSpec& s = model.spec;
    std::cerr << "wrote " << f->out << ": " << s.n_items - 1 << " items, d=" << s.d << ", " << s.n_layers
              << " block(s), " << s.heads << " head(s), L=" << s.max_len << ", block " << to_string(s.block)
              << ", score " << to_string(s.score) << "\n";
    return 0;
  };
}

}  // namespace seqrec::cli
