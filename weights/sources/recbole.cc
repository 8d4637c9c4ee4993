// RecBole (github: RUCAIBox/RecBole) SASRec / BERT4Rec → canonical model. See models.md,
// Sources 2 and 3.
//
// Both models share RecBole's TransformerEncoder (recbole/model/layers.py): post-LN blocks
// (x = LN(x + dense(MHA(x))); x = LN(x + dense_2(act(dense_1(x))))), separate query / key /
// value Linear layers, an additive -10000 mask on padded keys, a LayerNorm right after
// item + position embedding (position ids arange(slots) whatever the padding), right
// padding. SASRec: causal, read-out at slot len-1, tied scoring over item_embedding.
// BERT4Rec: bidirectional, item_embedding has one more row (the [MASK] token, row n), and
// three historical layouts, told apart by the weights (and L):
//   output_ffn present (RecBole >= 1.2): append [MASK], drop the first slot (L slots),
//     read the mask slot, h = output_ln(GELU(output_ffn(h))), score = h·E[0:n] + output_bias
//   position_embedding [L, d], no output_ffn (1.1): the same slots, no head, no bias
//   position_embedding [L+1, d] (<= 1.0): items then [MASK] in L+1 slots, read the mask slot
//
// Hyper-parameters the weights do not carry (heads, activation, eps, L, loss) come from the
// pickled Config (final_config_dict) unless a flag gives them; the config holds many objects
// seqrec does not know (torch.device, enums, classes), which the pickle reader keeps opaque.
#include "weights/sources/recbole.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>

#include "engine/error.h"
#include "weights/sources/state_dict.h"
#include "weights/torch_checkpoint.h"

namespace seqrec {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The hyper-parameters in the pickled Config's final_config_dict. The config is consulted
// only for what no flag gives, so a config seqrec cannot read costs nothing when the flags
// say everything.
class RecboleConfig {
 public:
  RecboleConfig(std::string file, const pickle::Value* config) : file_(std::move(file)) {
    if (config == nullptr || config->is_none()) {
      problem_ = "the checkpoint has no config";
      return;
    }
    if (!config->is_object() && !config->is_dict()) {
      problem_ = "config is " + config->describe() + ", expected RecBole's Config object";
      return;
    }
    const pickle::Value* final_dict = config->find("final_config_dict");
    if (final_dict == nullptr) {
      problem_ = "config (" + config->describe() + ") has no final_config_dict";
      return;
    }
    if (!final_dict->is_dict()) {
      problem_ = "config final_config_dict is " + final_dict->describe() + ", expected a dict";
      return;
    }
    dict_ = final_dict;
  }

  // The value of `key`, nullptr when the config lacks it (or is unreadable).
  const pickle::Value* find(const std::string& key) const {
    if (!dict_) return nullptr;
    const pickle::Value* v = dict_->find(key);
    return v && !v->is_none() ? v : nullptr;
  }
  std::string where(const std::string& key) const { return file_ + ": config final_config_dict['" + key + "']"; }
  // "<what> (RecBole's <key>) is not in the checkpoint: <why>; pass <flag>".
  [[noreturn]] void missing(const std::string& key, const std::string& what, const std::string& flag) const {
    throw Error(file_ + ": " + what + " (RecBole's " + key + ") is not in the checkpoint: " +
                (dict_ ? "its config's final_config_dict has no '" + key + "'" : problem_) + "; pass " + flag);
  }

  int64_t get_int(const std::string& key, const std::string& what, const std::string& flag) const {
    const pickle::Value* v = find(key);
    if (!v) missing(key, what, flag);
    if (!v->is_int()) throw Error(where(key) + ": expected an int, found " + v->describe() + " (or pass " + flag + ")");
    return v->as_int();
  }
  double get_float(const std::string& key, const std::string& what, const std::string& flag) const {
    const pickle::Value* v = find(key);
    if (!v) missing(key, what, flag);
    if (!v->is_float() && !v->is_int())
      throw Error(where(key) + ": expected a float, found " + v->describe() + " (or pass " + flag + ")");
    return v->as_float();
  }
  std::string get_string(const std::string& key, const std::string& what, const std::string& flag) const {
    const pickle::Value* v = find(key);
    if (!v) missing(key, what, flag);
    if (!v->is_string()) throw Error(where(key) + ": expected a str, found " + v->describe() + " (or pass " + flag + ")");
    return v->as_string();
  }
  bool readable() const { return dict_ != nullptr; }

 private:
  std::string file_;
  const pickle::Value* dict_ = nullptr;
  std::string problem_;
};

enum class Family { sasrec, bert4rec };

// RecBole's ACT2FN (recbole/model/layers.py FeedForward.get_hidden_act).
Activation recbole_activation(const std::string& text, const std::string& where) {
  if (text == "gelu") return Activation::gelu;  // x * 0.5 * (1 + erf(x / sqrt(2)))
  if (text == "relu") return Activation::relu;
  if (text == "swish") return Activation::swish;
  if (text == "tanh") return Activation::tanh;
  if (text == "sigmoid") return Activation::sigmoid;
  throw Error(where + ": unknown hidden_act '" + text + "' (expected gelu|relu|swish|tanh|sigmoid, or pass --activation)");
}

}  // namespace

ModelFile convert_recbole(const ConvertOptions& options, const RecboleOptions& recbole) {
  const std::string& file = options.checkpoint;
  if (options.variant) throw Error("--variant: applies to --from pmixer only (RecBole's layout is read from the checkpoint)");
  if (!options.item_ids_file)
    throw Error("--item-ids: required for --from recbole (RecBole renumbers items: write dataset.field2id_token['item_id'] "
                "one per line, see the README)");

  TorchCheckpoint checkpoint = TorchCheckpoint::open(file);
  const pickle::Value& root = checkpoint.root();
  if (!root.is_dict()) throw Error(file + ": the pickle holds " + root.describe() + ", expected RecBole's checkpoint dict");
  // RecBole's trainer saves {config, epoch, cur_step, best_valid_score, state_dict,
  // other_parameter, optimizer}; a bare model.state_dict() is accepted too (flags give the rest).
  const pickle::Value* state = root.find("state_dict");
  const pickle::Value* config_value = state ? root.find("config") : nullptr;
  StateDict sd(file, checkpoint.state_dict(state ? *state : root),
               "(not a RecBole SASRec / BERT4Rec state_dict?)", "RecBole's SASRec / BERT4Rec");
  const RecboleConfig config(file, config_value);

  // Which model.
  std::string model_name;
  if (recbole.model) {
    model_name = *recbole.model;
  } else if (config.find("model")) {
    model_name = config.get_string("model", "the model name", "--model sasrec|bert4rec");
  } else if (sd.has("output_ffn.weight")) {
    model_name = "BERT4Rec";
  } else {
    config.missing("model", "the model name", "--model sasrec|bert4rec");
  }
  Family family;
  if (lower(model_name) == "sasrec")
    family = Family::sasrec;
  else if (lower(model_name) == "bert4rec")
    family = Family::bert4rec;
  else
    throw Error((recbole.model ? std::string("--model") : config.where("model")) + ": model '" + model_name +
                "' is not supported (expected SASRec|BERT4Rec)");
  const std::string model_label = family == Family::sasrec ? "SASRec" : "BERT4Rec";

  // Sizes from the weights.
  const Tensor& item_emb = sd.peek("item_embedding.weight");
  if (item_emb.shape.size() != 2 || item_emb.shape[0] < (family == Family::sasrec ? 2 : 3) || item_emb.shape[1] < 1)
    throw Error(file + ": key 'item_embedding.weight': shape " + shape_string(item_emb.shape) + ", expected " +
                (family == Family::sasrec ? "[n_items, d]" : "[n_items + 1, d] (the last row is [MASK])"));
  const int64_t d = item_emb.shape[1];
  const int64_t item_rows = item_emb.shape[0];
  const int64_t n_items = family == Family::sasrec ? item_rows : item_rows - 1;
  const Tensor& pos_emb = sd.peek("position_embedding.weight");
  if (pos_emb.shape.size() != 2 || pos_emb.shape[1] != d || pos_emb.shape[0] < 1)
    throw Error(file + ": key 'position_embedding.weight': shape " + shape_string(pos_emb.shape) + ", expected [L, " +
                std::to_string(d) + "]");
  const int64_t pos_rows = pos_emb.shape[0];
  const int64_t blocks = sd.count_indexed("trm_encoder.layer.", ".multi_head_attention.query.weight");
  if (blocks == 0)
    throw Error(file + ": state_dict: missing key 'trm_encoder.layer.0.multi_head_attention.query.weight' (no transformer layer)");
  const Tensor& inner = sd.peek("trm_encoder.layer.0.feed_forward.dense_1.weight");
  if (inner.shape.size() != 2 || inner.shape[1] != d || inner.shape[0] < 1)
    throw Error(file + ": key 'trm_encoder.layer.0.feed_forward.dense_1.weight': shape " + shape_string(inner.shape) +
                ", expected [inner_size, " + std::to_string(d) + "]");
  const int64_t ffn_dim = inner.shape[0];
  const bool has_head = family == Family::bert4rec && sd.has("output_ffn.weight");

  ModelSpec spec;
  BlockSpec& b = spec.blocks;
  b.kind = BlockKind::post_ln;
  b.attention = family == Family::sasrec ? AttentionKind::causal : AttentionKind::bidirectional;
  b.mask_padded_keys = true;
  spec.input.zero_padded_rows = false;
  spec.input.embed_scale = false;
  spec.input.embed_norm = true;
  spec.input.positions = Positions::slot_index;
  spec.input.padding = Padding::right;
  spec.readout.final_norm = false;
  spec.readout.head = has_head;
  spec.scorer.output_bias = has_head;
  spec.d = d;
  b.ffn_dim = ffn_dim;
  b.n_layers = blocks;
  spec.n_items = n_items;

  // Hyper-parameters: flag, else config, else error naming the flag.
  b.heads = options.heads ? *options.heads : config.get_int("n_heads", "the number of attention heads", "--heads");
  if (b.heads < 1 || d % b.heads != 0)
    throw Error((options.heads ? std::string("--heads") : config.where("n_heads")) + ": " + std::to_string(b.heads) +
                " does not divide the hidden size d = " + std::to_string(d));
  b.activation = recbole.activation
                        ? *recbole.activation
                        : recbole_activation(config.get_string("hidden_act", "the activation", "--activation"),
                                             config.where("hidden_act"));
  const double eps =
      recbole.ln_eps ? *recbole.ln_eps : config.get_float("layer_norm_eps", "the LayerNorm epsilon", "--ln-eps");
  if (!(eps > 0 && eps < 1))
    throw Error((recbole.ln_eps ? std::string("--ln-eps") : config.where("layer_norm_eps")) + ": " + std::to_string(eps) +
                " (expected 0 < eps < 1)");
  b.ln_eps = static_cast<float>(eps);
  if (options.score) {
    spec.scorer.score = *options.score;
  } else {
    const std::string loss = config.get_string("loss_type", "the loss, which sets the default --score,", "--score");
    if (loss == "CE")
      spec.scorer.score = ScoreKind::softmax;
    else if (loss == "BPR")
      spec.scorer.score = ScoreKind::raw;
    else
      throw Error(config.where("loss_type") + ": unknown loss '" + loss + "' (expected CE|BPR, or pass --score)");
  }

  // L and, for BERT4Rec without the output head, the layout.
  std::optional<int64_t> max_len = options.max_len;
  std::string len_source = "--max-len";
  if (!max_len && config.find("MAX_ITEM_LIST_LENGTH")) {
    max_len = config.get_int("MAX_ITEM_LIST_LENGTH", "the max sequence length", "--max-len");
    len_source = "config MAX_ITEM_LIST_LENGTH";
  }
  std::string layout;
  if (family == Family::sasrec || has_head) {
    spec.readout.slot = family == Family::sasrec ? Readout::last_slot : Readout::mask_token_drop_first;
    if (!max_len) {
      max_len = pos_rows;
      len_source = "position_embedding rows";
    }
    if (*max_len != pos_rows)
      throw Error(file + ": key 'position_embedding.weight': shape " + shape_string(pos_emb.shape) + ", expected [" +
                  std::to_string(*max_len) + ", " + std::to_string(d) + "] (L = " + std::to_string(*max_len) + " from " +
                  len_source + ")");
    layout = family == Family::sasrec ? "" : "v1.2 layout: [MASK] replaces the first slot, output head and bias";
  } else {
    if (!max_len)
      throw Error(file + ": BERT4Rec without output_ffn has position_embedding " + shape_string(pos_emb.shape) +
                  ": L = " + std::to_string(pos_rows - 1) + " (RecBole <= 1.0, [MASK] in slot L) or L = " +
                  std::to_string(pos_rows) + " (1.1, [MASK] replaces the first slot), and the config has no "
                  "MAX_ITEM_LIST_LENGTH: pass --max-len");
    if (pos_rows == *max_len + 1) {
      spec.readout.slot = Readout::mask_token;
      layout = "v1.0 layout: [MASK] in slot L+1";
    } else if (pos_rows == *max_len) {
      spec.readout.slot = Readout::mask_token_drop_first;
      layout = "v1.1 layout: [MASK] replaces the first slot, no output head";
    } else {
      throw Error(file + ": key 'position_embedding.weight': shape " + shape_string(pos_emb.shape) + ", expected [" +
                  std::to_string(*max_len + 1) + ", " + std::to_string(d) + "] or [" + std::to_string(*max_len) + ", " +
                  std::to_string(d) + "] (L = " + std::to_string(*max_len) + " from " + len_source + ")");
    }
  }
  spec.max_len = *max_len;
  if (spec.max_len < 1)
    throw Error(len_source + ": max_len " + std::to_string(spec.max_len) + " (expected >= 1)");
  spec.validate();

  ModelFile model;
  model.spec = spec;
  auto& out = model.tensors;
  out["embedding/item/weight"] = sd.take("item_embedding.weight", {item_rows, d});
  out["embedding/position/weight"] = sd.take("position_embedding.weight", {pos_rows, d});
  out["embedding/norm/weight"] = sd.take("LayerNorm.weight", {d});
  out["embedding/norm/bias"] = sd.take("LayerNorm.bias", {d});
  for (int64_t i = 0; i < blocks; ++i) {
    const std::string p = tensor_names::layer(i);
    const std::string src = "trm_encoder.layer." + std::to_string(i) + ".";
    const std::string attn = src + "multi_head_attention.";
    const std::pair<const char*, const char*> projections[] = {{"query", "q"}, {"key", "k"}, {"value", "v"}, {"dense", "out"}};
    for (const auto& [from, to] : projections) {
      out[p + "/attention/" + to + "/weight"] = sd.take(attn + from + ".weight", {d, d});
      out[p + "/attention/" + to + "/bias"] = sd.take(attn + from + ".bias", {d});
    }
    out[p + "/attention/norm/weight"] = sd.take(attn + "LayerNorm.weight", {d});
    out[p + "/attention/norm/bias"] = sd.take(attn + "LayerNorm.bias", {d});
    const std::string ffn = src + "feed_forward.";
    out[p + "/ffn/inner/weight"] = sd.take(ffn + "dense_1.weight", {ffn_dim, d});
    out[p + "/ffn/inner/bias"] = sd.take(ffn + "dense_1.bias", {ffn_dim});
    out[p + "/ffn/outer/weight"] = sd.take(ffn + "dense_2.weight", {d, ffn_dim});
    out[p + "/ffn/outer/bias"] = sd.take(ffn + "dense_2.bias", {d});
    out[p + "/ffn/norm/weight"] = sd.take(ffn + "LayerNorm.weight", {d});
    out[p + "/ffn/norm/bias"] = sd.take(ffn + "LayerNorm.bias", {d});
  }
  if (has_head) {
    out["head/dense/weight"] = sd.take("output_ffn.weight", {d, d});
    out["head/dense/bias"] = sd.take("output_ffn.bias", {d});
    out["head/norm/weight"] = sd.take("output_ln.weight", {d});
    out["head/norm/bias"] = sd.take("output_ln.bias", {d});
    out["output/bias"] = sd.take("output_bias", {n_items});
  }
  sd.require_all_used();

  model.catalog = read_item_ids(*options.item_ids_file, n_items);
  model.provenance.source = "recbole";
  model.provenance.source_detail = "RecBole " + model_label + (layout.empty() ? "" : " (" + layout + ")") + ", " +
                                   std::to_string(b.heads) + " head(s), " + to_string(b.activation) + ", L " +
                                   std::to_string(spec.max_len);
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  model.provenance.rating_threshold = options.rating_threshold;
  return model;
}

}  // namespace seqrec
