#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "engine/error.h"
#include "weights/seqrec_file.h"
#include "weights/sources/recbole.h"
#include "weights/sources/safetensors_source.h"
#include "weights/sources/source.h"

namespace seqrec::cli {

Action add_convert(CLI::App& app) {
  struct Flags {
    std::string from, checkpoint, out, score, activation;
    ConvertOptions options;
    RecboleOptions recbole;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--from", f->from,
                 "Source: pmixer (SASRec.pytorch), recbole (RecBole SASRec / BERT4Rec), tisasrec (TiSASRec.pytorch), "
                 "gsasrec (gSASRec-pytorch), hstu (generative-recommenders), safetensors (seqrec's names)")
      ->required();
  app.add_option("checkpoint", f->checkpoint, "The checkpoint file (torch.save, or .safetensors)")->required();
  app.add_option("--out", f->out, "The .seqrec file to write")->required();
  app.add_option("--item-ids", f->options.item_ids_file,
                 "Raw item id per embedding row, one per line (line 0 = padding row); default: row i has id i");
  app.add_option("--heads", f->options.heads,
                 "Attention heads (pmixer default: the file name's head=N, else 1; recbole default: config n_heads)");
  app.add_option("--max-len", f->options.max_len,
                 "Max sequence length L (pmixer default: the file name's maxlen=N, else from pos_emb; recbole default: "
                 "config MAX_ITEM_LIST_LENGTH, else from position_embedding)");
  app.add_option("--activation", f->activation,
                 "recbole: FFN activation relu|gelu|gelu_tanh|swish|tanh|sigmoid (default: config hidden_act)");
  app.add_option("--ln-eps", f->recbole.ln_eps, "recbole: LayerNorm epsilon (default: config layer_norm_eps)");
  app.add_option("--model", f->recbole.model, "recbole: sasrec|bert4rec (default: config model)");
  app.add_option("--variant", f->options.variant,
                 "pmixer: the SASRec.pytorch generation pre_ln|post_ln|original (default post_ln); gsasrec: "
                 "relu|no_ffn_relu (default relu)");
  app.add_option("--rating-threshold", f->options.rating_threshold,
                 "Interactions with rating >= X are positives (default: every interaction is)");
  app.add_option("--score", f->score, "What `score` reports: sigmoid|softmax|raw (default: the source's loss)");
  app.add_option("--time-span", f->options.time_span,
                 "tisasrec: time_span (default: from time_matrix_V_emb; another value is an error)");
  app.add_option("--ffn-activation", f->options.ffn_activation,
                 "tisasrec: FFN activation none|relu (default: none for the 2020-09 layout, else relu)");
  app.add_option("--attention-dim", f->options.attention_dim, "hstu: q/k width per head (gin hstu_encoder.dqk)");
  app.add_option("--linear-dim", f->options.linear_dim, "hstu: u/v width per head (gin hstu_encoder.dv)");
  app.add_option("--temperature", f->options.temperature,
                 "hstu: softmax temperature of --score softmax (gin train_fn.temperature; default 0.05)");

  return [f] {
    if (!f->score.empty()) f->options.score = parse_score("--score", f->score);
    if (!f->activation.empty()) f->recbole.activation = parse_activation("--activation", f->activation);
    f->options.checkpoint = f->checkpoint;
    if (f->from != "recbole") {
      const char* recbole_only = f->recbole.activation ? "--activation" : f->recbole.ln_eps ? "--ln-eps"
                                                                        : f->recbole.model ? "--model" : nullptr;
      if (recbole_only) throw Error(std::string(recbole_only) + ": applies to --from recbole only");
    }
    if (f->from != "tisasrec" && (f->options.time_span || f->options.ffn_activation))
      throw Error(std::string(f->options.time_span ? "--time-span" : "--ffn-activation") + ": applies to --from tisasrec only");
    if (f->from != "hstu" && (f->options.attention_dim || f->options.linear_dim || f->options.temperature))
      throw Error(std::string(f->options.attention_dim ? "--attention-dim"
                              : f->options.linear_dim  ? "--linear-dim"
                                                       : "--temperature") +
                  ": applies to --from hstu only");
    ModelFile model;
    if (f->from == "pmixer")
      model = convert_pmixer(f->options);
    else if (f->from == "recbole")
      model = convert_recbole(f->options, f->recbole);
    else if (f->from == "tisasrec")
      model = convert_tisasrec(f->options);
    else if (f->from == "gsasrec")
      model = convert_gsasrec(f->options);
    else if (f->from == "hstu")
      model = convert_hstu(f->options);
    else if (f->from == "safetensors")
      model = convert_safetensors(f->options);
    else
      throw Error("--from: unknown source '" + f->from + "' (expected pmixer|recbole|tisasrec|gsasrec|hstu|safetensors)");
    // An empty line of --item-ids marks a row that is not an item: gone from the model.
    drop_non_item_rows(model);
    model.provenance.converter_version = SEQREC_VERSION;
    validate_model_file(model, f->out);
    save_model_file(model, f->out);
    const ModelSpec& s = model.spec;
    std::cerr << "wrote " << f->out << ": " << s.n_items - 1 << " items, d=" << s.d << ", " << s.blocks.n_layers
              << " block(s) " << to_string(s.blocks.kind) << ", " << s.blocks.heads << " head(s), L=" << s.max_len
              << ", score " << to_string(s.scorer.score) << "\n";
    return 0;
  };
}

}  // namespace seqrec::cli
