// SASRec.pytorch (github: pmixer/SASRec.pytorch) → canonical model. See models.md, Source 1.
//
// Three generations share the state_dict key names, so the variant comes from the user:
//   pre_ln / post_ln (2025-05 on): positions arange(1, L+1) * (seq != 0), pos_emb [>= L+1, d]
//   original (2020 - 2025-04): block sasrec_original, and either the same positions with
//     pos_emb [L+1, d] (2024-06 on) or, before that, pos_emb [L, d] with positions
//     arange(0, L) and padded rows zeroed after the embedding and after every block.
#include <algorithm>
#include <filesystem>

#include "engine/error.h"
#include "weights/sources/source.h"
#include "weights/sources/state_dict.h"
#include "weights/torch_checkpoint.h"

namespace seqrec {

ModelFile convert_pmixer(const ConvertOptions& options) {
  const std::string& file = options.checkpoint;
  const std::string variant = options.variant.value_or("post_ln");
  if (variant != "pre_ln" && variant != "post_ln" && variant != "original")
    throw Error("--variant: unknown value '" + variant + "' (expected pre_ln|post_ln|original)");

  TorchCheckpoint checkpoint = TorchCheckpoint::open(file);
  StateDict sd(file, checkpoint.state_dict(), "(not a SASRec.pytorch state_dict?)", "SASRec.pytorch's SASRec");

  const Tensor& item_emb = sd.peek("item_emb.weight");
  const Tensor& pos_emb = sd.peek("pos_emb.weight");
  if (item_emb.shape.size() != 2 || item_emb.shape[0] < 2)
    throw Error(file + ": key 'item_emb.weight': shape " + shape_string(item_emb.shape) + ", expected [n_items + 1, d]");
  const int64_t rows = item_emb.shape[0], d = item_emb.shape[1];
  if (pos_emb.shape.size() != 2 || pos_emb.shape[1] != d || pos_emb.shape[0] < 1)
    throw Error(file + ": key 'pos_emb.weight': shape " + shape_string(pos_emb.shape) + ", expected [L + 1, " +
                std::to_string(d) + "]");
  const int64_t pos_rows = pos_emb.shape[0];

  ModelSpec spec;
  spec.input.embed_scale = true;
  spec.input.padding = Padding::left;
  spec.readout.slot = Readout::last_slot;
  spec.readout.final_norm = true;
  BlockSpec& blocks = spec.blocks;
  blocks.attention = AttentionKind::causal;
  blocks.mask_padded_keys = false;  // SASRec.pytorch masks only the future, never padded keys
  blocks.activation = Activation::relu;
  blocks.ln_eps = 1e-8f;
  spec.scorer.score = options.score.value_or(ScoreKind::sigmoid);  // trained with a binary loss
  spec.d = d;
  blocks.ffn_dim = d;
  spec.n_items = rows;
  blocks.heads = options.heads ? *options.heads : file_name_number(file, "head").value_or(1);
  if (blocks.heads < 1 || d % blocks.heads != 0)
    throw Error("--heads: " + std::to_string(blocks.heads) + " does not divide the hidden size d = " + std::to_string(d));

  // Position scheme and L. The file name's maxlen= is what training used; current
  // SASRec.pytorch allocates pos_emb for 200 positions whatever maxlen was.
  const std::optional<int64_t> named_len = options.max_len ? options.max_len : file_name_number(file, "maxlen");
  bool legacy_positions = false;
  if (variant == "original") {
    if (named_len)
      legacy_positions = pos_rows == *named_len;
    else  // padding_idx=0 keeps row 0 of the [L+1, d] table at zero; the legacy table trains it
      legacy_positions = std::any_of(pos_emb.ptr(), pos_emb.ptr() + d, [](float v) { return v != 0.0f; });
  }
  blocks.kind = variant == "pre_ln"    ? BlockKind::pre_ln
                : variant == "post_ln" ? BlockKind::post_ln
                                       : BlockKind::sasrec_original;
  spec.input.positions = legacy_positions ? Positions::slot_index : Positions::slot_or_zero;
  spec.input.zero_padded_rows = legacy_positions;
  spec.max_len = named_len.value_or(legacy_positions ? pos_rows : pos_rows - 1);
  if (spec.n_positions() > pos_rows)
    throw Error(file + ": key 'pos_emb.weight': " + std::to_string(pos_rows) + " rows, but max_len = " +
                std::to_string(spec.max_len) + " needs " + std::to_string(spec.n_positions()) +
                (options.max_len ? " (from --max-len)" : named_len ? " (from the file name's maxlen=)" : ""));

  blocks.n_layers = sd.count_indexed("attention_layers.", ".in_proj_weight");
  if (blocks.n_layers == 0) throw Error(file + ": missing key 'attention_layers.0.in_proj_weight' (no transformer block)");
  spec.validate();

  ModelFile model;
  model.spec = spec;
  auto& out = model.tensors;
  out["embedding/item/weight"] = sd.take("item_emb.weight", {rows, d});
  out["embedding/position/weight"] = row_slice(sd.take("pos_emb.weight", {pos_rows, d}), 0, spec.n_positions());
  for (int64_t i = 0; i < blocks.n_layers; ++i) {
    const std::string s = std::to_string(i), p = tensor_names::layer(i);
    const std::string attn = "attention_layers." + s + ".";
    const Tensor in_w = sd.take(attn + "in_proj_weight", {3 * d, d});  // rows Q | K | V
    const Tensor in_b = sd.take(attn + "in_proj_bias", {3 * d});
    const char* qkv[] = {"q", "k", "v"};
    for (int j = 0; j < 3; ++j) {
      out[p + "/attention/" + qkv[j] + "/weight"] = row_slice(in_w, j * d, d);
      out[p + "/attention/" + qkv[j] + "/bias"] = row_slice(in_b, j * d, d);
    }
    out[p + "/attention/out/weight"] = sd.take(attn + "out_proj.weight", {d, d});
    out[p + "/attention/out/bias"] = sd.take(attn + "out_proj.bias", {d});
    out[p + "/attention/norm/weight"] = sd.take("attention_layernorms." + s + ".weight", {d});
    out[p + "/attention/norm/bias"] = sd.take("attention_layernorms." + s + ".bias", {d});
    // Conv1d(d, d, kernel_size=1) is a per-position linear layer: weight [d, d, 1].
    const std::string ffn = "forward_layers." + s + ".";
    out[p + "/ffn/inner/weight"] = reshaped(sd.take(ffn + "conv1.weight", {d, d, 1}), {d, d});
    out[p + "/ffn/inner/bias"] = sd.take(ffn + "conv1.bias", {d});
    out[p + "/ffn/outer/weight"] = reshaped(sd.take(ffn + "conv2.weight", {d, d, 1}), {d, d});
    out[p + "/ffn/outer/bias"] = sd.take(ffn + "conv2.bias", {d});
    out[p + "/ffn/norm/weight"] = sd.take("forward_layernorms." + s + ".weight", {d});
    out[p + "/ffn/norm/bias"] = sd.take("forward_layernorms." + s + ".bias", {d});
  }
  out["encoder/final_norm/weight"] = sd.take("last_layernorm.weight", {d});
  out["encoder/final_norm/bias"] = sd.take("last_layernorm.bias", {d});
  sd.require_all_used();

  model.catalog = options.item_ids_file ? read_item_ids(*options.item_ids_file, rows) : row_number_ids(rows);
  model.provenance.source = "pmixer";
  model.provenance.source_detail = "SASRec.pytorch, variant " + variant + ", positions " +
                                   to_string(spec.input.positions) + ", " + std::to_string(blocks.heads) + " head(s)";
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  model.provenance.rating_threshold = options.rating_threshold;
  return model;
}

}  // namespace seqrec
