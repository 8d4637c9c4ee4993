// HSTU (Meta's generative-recommenders, research code: research/modeling/sequential/hstu.py,
// research/trainer/train.py) checkpoint → canonical model: the hstu block kind
// (engine/blocks/hstu.cc), an L2-normalised read-out and unit-norm item rows: cosine scores.
//
// The trainer saves {"epoch", "model_state_dict", "optimizer_state_dict"}; the model is wrapped
// in DDP, so keys start with "module." (a bare module's state_dict is accepted too). The
// optimizer's moments have the weights' shapes: tensors are taken by name only. Keys:
//   _attn_mask [N, N] (bool, triu: N = max_sequence_length + gr_output_length + 1)
//   _embedding_module._item_emb.weight [max_item_id + 1, D]    row = raw item id
//   _input_features_preproc._pos_emb.weight [N, D]
//   _hstu._attention_layers.i.{_uvqk [D, 2H·dv + 2H·dqk], _rel_attn_bias._ts_w [129],
//                              _rel_attn_bias._pos_w [2N − 1], _o.weight [D, H·dv], _o.bias [D]}
// The gin hyper-parameters the weights do not carry are flags (README "--from hstu").
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "engine/error.h"
#include "weights/sources/source.h"
#include "weights/sources/state_dict.h"
#include "weights/torch_checkpoint.h"

namespace seqrec {

namespace {

// The item table's rows divided by max(||row||_2, 1e-6), as torch.nn.functional.normalize
// (train_fn.item_l2_norm, on in every HSTU config): the scorer's table, so a dot product with
// the normalised user state is their cosine.
Tensor unit_rows(const Tensor& table) {
  Tensor out(table.shape);
  const int64_t rows = table.shape[0], d = table.shape[1];
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = table.ptr() + r * d;
    double squares = 0;
    for (int64_t c = 0; c < d; ++c) squares += static_cast<double>(src[c]) * src[c];
    const float norm = std::max(static_cast<float>(std::sqrt(squares)), 1e-6f);
    for (int64_t c = 0; c < d; ++c) out.ptr()[r * d + c] = src[c] / norm;
  }
  return out;
}

}  // namespace

ModelFile convert_hstu(const ConvertOptions& options) {
  const std::string& file = options.checkpoint;
  if (options.variant) throw Error("--variant: not used with --from hstu");
  if (!options.item_ids_file)
    throw Error("--item-ids: required for --from hstu (the raw item id of every embedding row; an empty line marks a "
                "row that is not an item)");
  TorchCheckpoint checkpoint = TorchCheckpoint::open(file);
  const pickle::Value& root = checkpoint.root();
  if (!root.is_dict()) throw Error(file + ": the pickle holds " + root.describe() + ", expected HSTU's checkpoint dict");
  const pickle::Value* state = root.find("model_state_dict");
  if (!state)
    throw Error(file + ": no 'model_state_dict' (expected what generative-recommenders' trainer saves: "
                "{epoch, model_state_dict, optimizer_state_dict})");
  // Only the model's tensors, by name (DDP's "module." prefix taken off when every key has it).
  std::vector<std::pair<std::string, Tensor>> tensors = checkpoint.state_dict(*state);
  const bool ddp = !tensors.empty() && std::all_of(tensors.begin(), tensors.end(), [](const auto& t) {
    return t.first.rfind("module.", 0) == 0;
  });
  if (ddp)
    for (auto& [name, t] : tensors) name = name.substr(7);
  StateDict sd(file, std::move(tensors), "in model_state_dict (not an HSTU checkpoint?)",
               "generative-recommenders' HSTU");

  const Tensor& item_emb = sd.peek("_embedding_module._item_emb.weight");
  if (item_emb.shape.size() != 2 || item_emb.shape[0] < 2 || item_emb.shape[1] < 1)
    throw Error(file + ": key '_embedding_module._item_emb.weight': shape " + shape_string(item_emb.shape) +
                ", expected [max_item_id + 1, D]");
  const int64_t rows = item_emb.shape[0], D = item_emb.shape[1];
  const Tensor& pos = sd.peek("_input_features_preproc._pos_emb.weight");
  if (pos.shape.size() != 2 || pos.shape[1] != D || pos.shape[0] < 2)
    throw Error(file + ": key '_input_features_preproc._pos_emb.weight': shape " + shape_string(pos.shape) +
                ", expected [N, " + std::to_string(D) + "]");
  const int64_t N = pos.shape[0];  // max_sequence_length + gr_output_length + 1
  const int64_t blocks = sd.count_indexed("_hstu._attention_layers.", "._uvqk");
  if (blocks == 0) throw Error(file + ": missing key '_hstu._attention_layers.0._uvqk' (no HSTU block)");
  // Copies of the first layer's shapes: the tensors themselves are taken out below.
  const std::vector<int64_t> uvqk_shape = sd.peek("_hstu._attention_layers.0._uvqk").shape;
  const std::vector<int64_t> o_shape = sd.peek("_hstu._attention_layers.0._o.weight").shape;
  if (uvqk_shape.size() != 2 || uvqk_shape[0] != D || o_shape.size() != 2 || o_shape[0] != D)
    throw Error(file + ": keys '_hstu._attention_layers.0._uvqk' " + shape_string(uvqk_shape) + " and '._o.weight' " +
                shape_string(o_shape) + ": expected [" + std::to_string(D) + ", 2H(dv + dqk)] and [" +
                std::to_string(D) + ", H·dv]");

  // The gin hyper-parameters: required flags, checked against the shapes they imply.
  auto required = [](const std::optional<int64_t>& v, const char* flag, const char* gin, const std::string& hint) {
    if (!v) throw Error(std::string(flag) + ": required for --from hstu (gin " + gin + ")" + hint);
    return *v;
  };
  const int64_t heads = required(options.heads, "--heads", "hstu_encoder.num_heads", "");
  if (heads < 1) throw Error("--heads: " + std::to_string(heads) + " (expected >= 1)");
  const int64_t hv = o_shape[1];
  const bool dv_derivable = hv % heads == 0;
  const int64_t dv_weights = dv_derivable ? hv / heads : -1;
  const int64_t dqk_weights = dv_derivable && (uvqk_shape[1] - 2 * hv) > 0 && (uvqk_shape[1] - 2 * hv) % (2 * heads) == 0
                                  ? (uvqk_shape[1] - 2 * hv) / (2 * heads)
                                  : -1;
  const int64_t dv = required(options.linear_dim, "--linear-dim", "hstu_encoder.dv",
                              dv_weights > 0 ? "; the weights say " + std::to_string(dv_weights) + " for --heads " +
                                                   std::to_string(heads)
                                             : "");
  const int64_t dqk = required(options.attention_dim, "--attention-dim", "hstu_encoder.dqk",
                               dqk_weights > 0 ? "; the weights say " + std::to_string(dqk_weights) + " for --heads " +
                                                     std::to_string(heads)
                                               : "");
  const int64_t L = required(options.max_len, "--max-len", "train_fn.max_sequence_length",
                             "; with gr_output_length 10 (every config) the weights say " + std::to_string(N - 11));
  if (heads * dv != hv)
    throw Error("--linear-dim " + std::to_string(dv) + ": key '_hstu._attention_layers.0._o.weight' " +
                shape_string(o_shape) + " means heads x linear_dim = " + std::to_string(hv) +
                (dv_weights > 0 ? " (linear_dim " + std::to_string(dv_weights) + " for --heads " +
                                      std::to_string(heads) + ")"
                                : " (--heads " + std::to_string(heads) + " does not divide it)"));
  if (2 * heads * (dv + dqk) != uvqk_shape[1])
    throw Error("--attention-dim " + std::to_string(dqk) + ": key '_hstu._attention_layers.0._uvqk' " +
                shape_string(uvqk_shape) + " means 2 x heads x (linear_dim + attention_dim) = " +
                std::to_string(uvqk_shape[1]));
  if (L < 1 || L >= N)
    throw Error("--max-len " + std::to_string(L) + ": expected 1.." + std::to_string(N - 1) +
                " (the position table has N = max_sequence_length + gr_output_length + 1 = " + std::to_string(N) +
                " rows)");
  const Tensor& mask = sd.peek("_attn_mask");
  if (mask.shape != std::vector<int64_t>{N, N})
    throw Error(file + ": key '_attn_mask': shape " + shape_string(mask.shape) + ", expected [" + std::to_string(N) +
                ", " + std::to_string(N) + "] (the position table's N)");
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j)
      if (mask.ptr()[i * N + j] != (j > i ? 1.0f : 0.0f))
        throw Error(file + ": key '_attn_mask': entry [" + std::to_string(i) + ", " + std::to_string(j) +
                    "] is not the causal mask's (triu(ones, 1))");

  ModelSpec spec;
  spec.d = D;
  spec.max_len = L;
  spec.n_items = rows;
  spec.input.embed_scale = true;
  spec.input.positions = Positions::slot_index;
  spec.input.padding = Padding::right;
  BlockSpec& b = spec.blocks;
  b.kind = BlockKind::hstu;
  b.n_layers = blocks;
  b.heads = heads;
  b.attention_dim = dqk;
  b.linear_dim = dv;
  b.attention_len = N;
  b.time_buckets = 128;
  b.ln_eps = 1e-6f;
  spec.readout.l2_normalize = true;
  spec.scorer.separate_table = true;  // the unit-norm item rows
  spec.scorer.score = options.score.value_or(ScoreKind::softmax);  // trained with a (sampled) softmax loss
  spec.scorer.temperature = static_cast<float>(options.temperature.value_or(0.05));
  spec.scorer.padding_in_softmax = false;  // a probability over the items
  if (!(spec.scorer.temperature > 0) || !std::isfinite(spec.scorer.temperature))
    throw Error("--temperature: " + std::to_string(*options.temperature) + " (expected a number > 0)");
  spec.validate();

  ModelFile model;
  model.spec = spec;
  auto& out = model.tensors;
  Tensor items = sd.take("_embedding_module._item_emb.weight", {rows, D});
  out["output/item/weight"] = unit_rows(items);
  out["embedding/item/weight"] = std::move(items);
  out["embedding/position/weight"] = row_slice(sd.take("_input_features_preproc._pos_emb.weight", {N, D}), 0, L);
  sd.take_any("_attn_mask");
  for (int64_t i = 0; i < blocks; ++i) {
    const std::string src = "_hstu._attention_layers." + std::to_string(i) + ".", p = tensor_names::layer(i);
    out[p + "/uvqk/weight"] = transposed(sd.take(src + "_uvqk", uvqk_shape));  // x @ W -> [out, in]
    out[p + "/relative_bias/position/weight"] = sd.take(src + "_rel_attn_bias._pos_w", {2 * N - 1});
    out[p + "/relative_bias/time/weight"] = sd.take(src + "_rel_attn_bias._ts_w", {b.time_buckets + 1});
    out[p + "/out/weight"] = sd.take(src + "_o.weight", {D, hv});
    out[p + "/out/bias"] = sd.take(src + "_o.bias", {D});
  }
  sd.require_all_used();

  model.catalog = read_item_ids(*options.item_ids_file, rows);
  model.provenance.source = "hstu";
  model.provenance.source_detail = "generative-recommenders HSTU, " + std::to_string(blocks) + " block(s), " +
                                   std::to_string(heads) + " head(s), dqk " + std::to_string(dqk) + ", dv " +
                                   std::to_string(dv) + ", N " + std::to_string(N) + (ddp ? ", DDP keys" : "");
  model.provenance.source_file = std::filesystem::path(file).filename().string();
  model.provenance.rating_threshold = options.rating_threshold;
  return model;
}

}  // namespace seqrec
