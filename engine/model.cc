#include "engine/model.h"

#include "engine/error.h"
#include "kernels/activation.h"
#include "kernels/gemm.h"

namespace seqrec {

Model::Model(const ModelSpec& spec, WeightMap weights)
    : spec_(spec), weights_(std::move(weights)), encoder_(spec_, weights_) {
  item_table_ = weights_.at("embedding/item/weight").ptr();
  if (spec_.output_bias) {
    auto it = weights_.find("output/bias");
    if (it == weights_.end() || it->second.shape != std::vector<int64_t>{spec_.n_items})
      throw Error("model weights: tensor 'output/bias' missing or not [" + std::to_string(spec_.n_items) + "]");
    output_bias_ = it->second.ptr();
  }
}

void Model::logits(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* out) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  if (batch == 0) return;
  if (static_cast<int64_t>(ws.hidden.size()) < batch * spec_.d) ws.hidden.resize(static_cast<size_t>(batch * spec_.d));
  float* hidden = ws.hidden.data();
  encoder_.encode(sequences, ws, hidden);
  // Tied output: logits = hidden · item_tableᵀ over the catalog rows (not the [MASK] row).
  kernels::sgemm(false, true, batch, spec_.n_items, spec_.d, 1.0f, hidden, spec_.d, item_table_, spec_.d, 0.0f,
                 out, spec_.n_items);
  if (output_bias_) kernels::add_bias(out, batch, spec_.n_items, output_bias_);
}

}  // namespace seqrec
