// gSASRec-pytorch (github: asash/gSASRec-pytorch) state_dict → canonical model: the
// sasrec_original transformer block without an attention output projection.
//
// Saved as torch.save(model.state_dict()) by train_gsasrec.py. The source, per block:
// q = first_norm(x); x = second_norm(q + Attn(Q from q, K and V from x)); x = x + FFN(x),
// padded slots masked (-inf) and zeroed, then seq_norm; left padding with positions 0..L-1
// for every slot, no sqrt(d) on the embeddings; item row 0 unused, row num_items + 1 padding.
// Scores from output_embedding (absent when item embeddings are reused, or in code before
// 2023-09-06). The FFN has a ReLU since 2023-09-15 (ea49313); --variant no_ffn_relu for
// older files. The number of heads is in the training config only: --heads.
#include <filesystem>

#include "engine/error.h"
#include "weights/sources/source.h"
#include "weights/sources/state_dict.h"
#include "weights/torch_checkpoint.h"

namespace seqrec {

ModelFile convert_gsasrec(const ConvertOptions& options) {
  const std::string& file = options.checkpoint;
  const std::string variant = options.variant.value_or("relu");
  if (variant != "relu" && variant != "no_ffn_relu")
    throw Error("--variant: unknown value '" + variant + "' (expected relu|no_ffn_relu)");
  if (!options.heads)
    throw Error("--heads: required for --from gsasrec (num_heads is in gSASRec's config file, not in the checkpoint)");
  TorchCheckpoint checkpoint = TorchCheckpoint::open(file);
  StateDict sd(file, checkpoint.state_dict(), "(not a gSASRec state_dict?)", "gSASRec-pytorch's GSASRec");

  const Tensor& item_emb = sd.peek("item_embedding.weight");
  if (item_emb.shape.size() != 2 || item_emb.shape[0] < 3 || item_emb.shape[1] < 1)
    throw Error(file + ": key 'item_embedding.weight': shape " + shape_string(item_emb.shape) +
                ", expected [num_items + 2, d] (row 0 unused, row num_items + 1 padding)");
  const int64_t table_rows = item_emb.shape[0], d = item_emb.shape[1];
  const int64_t rows = table_rows - 1;  // rows 0..num_items: the catalog (row 0 plays the padding row)
  const Tensor& pos = sd.peek("position_embedding.weight");
  if (pos.shape.size() != 2 || pos.shape[1] != d || pos.shape[0] < 1)
    throw Error(file + ": key 'position_embedding.weight': shape " + shape_string(pos.shape) + ", expected [L, " +
                std::to_string(d) + "]");
  const int64_t L = pos.shape[0];
  if (options.max_len && *options.max_len != L)
    throw Error("--max-len " + std::to_string(*options.max_len) + ": key 'position_embedding.weight' has " +
                std::to_string(L) + " rows (gSASRec's sequence_length)");
  const bool separate = sd.has("output_embedding.weight");

  ModelSpec spec;
  spec.d = d;
  spec.max_len = L;
  spec.n_items = rows;
  spec.input.embed_scale = false;
  spec.input.positions = Positions::slot_index;
  spec.input.padding = Padding::left;
  spec.input.zero_padded_rows = true;
  BlockSpec& b = spec.blocks;
  b.kind = BlockKind::sasrec_original;
  b.attention = AttentionKind::causal;
  b.mask_padded_keys = true;
  b.out_projection = false;
  b.activation = variant == "relu" ? Activation::relu : Activation::none;
  b.ffn_dim = d;
  b.ln_eps = 1e-5f;  // torch's LayerNorm default
  b.heads = *options.heads;
  if (b.heads < 1 || d % b.heads != 0)
    throw Error("--heads: " + std::to_string(b.heads) + " does not divide the hidden size d = " + std::to_string(d));
  b.n_layers = sd.count_indexed("transformer_blocks.", ".first_norm.weight");
  if (b.n_layers == 0) throw Error(file + ": missing key 'transformer_blocks.0.first_norm.weight' (no block)");
  spec.readout.final_norm = true;
  spec.scorer.separate_table = separate;
  spec.scorer.score = options.score.value_or(ScoreKind::sigmoid);  // gBCE is a per-item binary loss
  spec.validate();

  ModelFile model;
  model.spec = spec;
  auto& out = model.tensors;
  // The padding row (num_items + 1) is never input in the engine (padded slots are not
  // computed) nor scored: both tables keep rows 0..num_items.
  out["embedding/item/weight"] = row_slice(sd.take("item_embedding.weight", {table_rows, d}), 0, rows);
  if (separate) out["output/item/weight"] = row_slice(sd.take("output_embedding.weight", {table_rows, d}), 0, rows);
  out["embedding/position/weight"] = sd.take("position_embedding.weight", {L, d});
  for (int64_t i = 0; i < b.n_layers; ++i) {
    const std::string src = "transformer_blocks." + std::to_string(i) + ".", p = tensor_names::layer(i);
    out[p + "/attention/norm/weight"] = sd.take(src + "first_norm.weight", {d});
    out[p + "/attention/norm/bias"] = sd.take(src + "first_norm.bias", {d});
    const std::pair<const char*, const char*> projections[] = {{"query_proj", "q"}, {"key_proj", "k"}, {"val_proj", "v"}};
    for (const auto& [from, to] : projections) {
      out[p + "/attention/" + to + "/weight"] = sd.take(src + "multihead_attention." + from + ".weight", {d, d});
      out[p + "/attention/" + to + "/bias"] = sd.take(src + "multihead_attention." + from + ".bias", {d});
    }
    out[p + "/ffn/norm/weight"] = sd.take(src + "second_norm.weight", {d});
    out[p + "/ffn/norm/bias"] = sd.take(src + "second_norm.bias", {d});
    out[p + "/ffn/inner/weight"] = sd.take(src + "dense1.weight", {d, d});
    out[p + "/ffn/inner/bias"] = sd.take(src + "dense1.bias", {d});
    out[p + "/ffn/outer/weight"] = sd.take(src + "dense2.weight", {d, d});
    out[p + "/ffn/outer/bias"] = sd.take(src + "dense2.bias", {d});
  }
  out["encoder/final_norm/weight"] = sd.take("seq_norm.weight", {d});
  out["encoder/final_norm/bias"] = sd.take("seq_norm.bias", {d});
  sd.require_all_used();

  model.catalog = options.item_ids_file ? read_item_ids(*options.item_ids_file, rows) : row_number_ids(rows);
  model.provenance.source = "gsasrec";
  model.provenance.source_detail = "gSASRec-pytorch, FFN " + std::string(variant == "relu" ? "relu" : "without activation") +
                                   ", " + (separate ? "separate output embedding" : "item embeddings reused for scoring") +
                                   ", " + std::to_string(b.heads) + " head(s)";
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  model.provenance.rating_threshold = options.rating_threshold;
  return model;
}

}  // namespace seqrec
