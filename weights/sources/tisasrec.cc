// TiSASRec.pytorch (github: pmixer/TiSASRec.pytorch) state_dict → canonical model (the
// tisasrec block kind, engine/blocks/tisasrec.cc; docs/sources/tisasrec.md has the source's lines).
//
// Saved as torch.save(model.state_dict()) under TiSASRec.epoch=E.lr=..layer=B.head=H.
// hidden=d.maxlen=L.pth. Three code generations share the key names:
//   2020-09 (the published ml-1m checkpoint): no FFN activation, time_matrix_K_emb with
//     item_num + 1 rows (a typo: only rows 0..time_span are ever read);
//   2020-10: the same shapes, a ReLU in the FFN;
//   2020-11 on: time_matrix_K_emb [time_span + 1, d], ReLU.
// The weights cannot tell the first two apart: --ffn-activation decides; by default the K
// table's row count does (item_num + 1 rows: none, time_span + 1: relu).
#include <filesystem>

#include "engine/error.h"
#include "weights/sources/source.h"
#include "weights/sources/state_dict.h"
#include "weights/torch_checkpoint.h"

namespace seqrec {

ModelFile convert_tisasrec(const ConvertOptions& options) {
  const std::string& file = options.checkpoint;
  if (options.variant) throw Error("--variant: not used with --from tisasrec (see --ffn-activation)");
  TorchCheckpoint checkpoint = TorchCheckpoint::open(file);
  StateDict sd(file, checkpoint.state_dict(), "(not a TiSASRec.pytorch state_dict?)", "TiSASRec.pytorch's TiSASRec");

  const Tensor& item_emb = sd.peek("item_emb.weight");
  if (item_emb.shape.size() != 2 || item_emb.shape[0] < 2 || item_emb.shape[1] < 1)
    throw Error(file + ": key 'item_emb.weight': shape " + shape_string(item_emb.shape) + ", expected [item_num + 1, d]");
  const int64_t rows = item_emb.shape[0], d = item_emb.shape[1];
  const Tensor& pos_k = sd.peek("abs_pos_K_emb.weight");
  if (pos_k.shape.size() != 2 || pos_k.shape[1] != d || pos_k.shape[0] < 1)
    throw Error(file + ": key 'abs_pos_K_emb.weight': shape " + shape_string(pos_k.shape) + ", expected [maxlen, " +
                std::to_string(d) + "]");
  const int64_t L = pos_k.shape[0];
  const std::optional<int64_t> named_len = options.max_len ? options.max_len : file_name_number(file, "maxlen");
  if (named_len && *named_len != L)
    throw Error((options.max_len ? std::string("--max-len ") : std::string("the file name's maxlen=")) +
                std::to_string(*named_len) + ": key 'abs_pos_K_emb.weight' has " + std::to_string(L) +
                " rows (TiSASRec's position tables are [maxlen, d])");
  const Tensor& time_v = sd.peek("time_matrix_V_emb.weight");
  if (time_v.shape.size() != 2 || time_v.shape[1] != d || time_v.shape[0] < 2)
    throw Error(file + ": key 'time_matrix_V_emb.weight': shape " + shape_string(time_v.shape) +
                ", expected [time_span + 1, " + std::to_string(d) + "]");
  const int64_t span = time_v.shape[0] - 1;
  if (options.time_span && *options.time_span != span)
    throw Error("--time-span " + std::to_string(*options.time_span) + ": key 'time_matrix_V_emb.weight' has " +
                std::to_string(span + 1) + " rows, so the model was trained with time_span " + std::to_string(span));
  const Tensor& time_k = sd.peek("time_matrix_K_emb.weight");
  const bool typo_table = time_k.shape.size() == 2 && time_k.shape[0] == rows && rows != span + 1;
  if (time_k.shape.size() != 2 || time_k.shape[1] != d || (time_k.shape[0] != span + 1 && !typo_table))
    throw Error(file + ": key 'time_matrix_K_emb.weight': shape " + shape_string(time_k.shape) + ", expected [" +
                std::to_string(span + 1) + ", " + std::to_string(d) + "] (time_span + 1 rows) or [" +
                std::to_string(rows) + ", " + std::to_string(d) + "] (item_num + 1 rows, code of 2020-09/10)");

  ModelSpec spec;
  spec.d = d;
  spec.max_len = L;
  spec.n_items = rows;
  spec.input.embed_scale = true;
  spec.input.positions = Positions::none;
  spec.input.padding = Padding::left;
  spec.input.zero_padded_rows = true;
  BlockSpec& b = spec.blocks;
  b.kind = BlockKind::tisasrec;
  b.time_span = span;
  b.ln_eps = 1e-8f;
  b.heads = options.heads ? *options.heads : file_name_number(file, "head").value_or(1);
  if (b.heads < 1 || d % b.heads != 0)
    throw Error("--heads: " + std::to_string(b.heads) + " does not divide the hidden size d = " + std::to_string(d));
  if (options.ffn_activation) {
    if (*options.ffn_activation != "none" && *options.ffn_activation != "relu")
      throw Error("--ffn-activation: unknown value '" + *options.ffn_activation + "' (expected none|relu)");
    b.activation = *options.ffn_activation == "relu" ? Activation::relu : Activation::none;
  } else {
    b.activation = typo_table ? Activation::none : Activation::relu;
  }
  b.n_layers = sd.count_indexed("attention_layers.", ".Q_w.weight");
  if (b.n_layers == 0) throw Error(file + ": missing key 'attention_layers.0.Q_w.weight' (no attention block)");
  spec.readout.final_norm = true;
  spec.scorer.score = options.score.value_or(ScoreKind::sigmoid);  // trained with BCEWithLogits
  spec.validate();

  ModelFile model;
  model.spec = spec;
  auto& out = model.tensors;
  out["embedding/item/weight"] = sd.take("item_emb.weight", {rows, d});
  out["encoder/position_key/weight"] = sd.take("abs_pos_K_emb.weight", {L, d});
  out["encoder/position_value/weight"] = sd.take("abs_pos_V_emb.weight", {L, d});
  out["encoder/time_key/weight"] = row_slice(sd.take("time_matrix_K_emb.weight", time_k.shape), 0, span + 1);
  out["encoder/time_value/weight"] = sd.take("time_matrix_V_emb.weight", {span + 1, d});
  for (int64_t i = 0; i < b.n_layers; ++i) {
    const std::string s = std::to_string(i), p = tensor_names::layer(i);
    out[p + "/attention/norm/weight"] = sd.take("attention_layernorms." + s + ".weight", {d});
    out[p + "/attention/norm/bias"] = sd.take("attention_layernorms." + s + ".bias", {d});
    const std::pair<const char*, const char*> projections[] = {{"Q_w", "q"}, {"K_w", "k"}, {"V_w", "v"}};
    for (const auto& [from, to] : projections) {
      out[p + "/attention/" + to + "/weight"] = sd.take("attention_layers." + s + "." + from + ".weight", {d, d});
      out[p + "/attention/" + to + "/bias"] = sd.take("attention_layers." + s + "." + from + ".bias", {d});
    }
    out[p + "/ffn/norm/weight"] = sd.take("forward_layernorms." + s + ".weight", {d});
    out[p + "/ffn/norm/bias"] = sd.take("forward_layernorms." + s + ".bias", {d});
    // Conv1d(d, d, kernel_size=1) is a per-position linear layer: weight [d, d, 1].
    const std::string ffn = "forward_layers." + s + ".";
    out[p + "/ffn/inner/weight"] = reshaped(sd.take(ffn + "conv1.weight", {d, d, 1}), {d, d});
    out[p + "/ffn/inner/bias"] = sd.take(ffn + "conv1.bias", {d});
    out[p + "/ffn/outer/weight"] = reshaped(sd.take(ffn + "conv2.weight", {d, d, 1}), {d, d});
    out[p + "/ffn/outer/bias"] = sd.take(ffn + "conv2.bias", {d});
  }
  out["encoder/final_norm/weight"] = sd.take("last_layernorm.weight", {d});
  out["encoder/final_norm/bias"] = sd.take("last_layernorm.bias", {d});
  sd.require_all_used();

  model.catalog = options.item_ids_file ? read_item_ids(*options.item_ids_file, rows) : row_number_ids(rows);
  model.provenance.source = "tisasrec";
  model.provenance.source_detail = std::string("TiSASRec.pytorch, ") +
                                   (typo_table ? "2020-09/10 generation" : "2020-11+ generation") + ", FFN " +
                                   to_string(b.activation) + ", time_span " + std::to_string(span) + ", " +
                                   std::to_string(b.heads) + " head(s)";
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  model.provenance.rating_threshold = options.rating_threshold;
  return model;
}

}  // namespace seqrec
