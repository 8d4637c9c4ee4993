#include "engine/model.h"

#include "engine/error.h"
#include "kernels/gemm.h"

namespace seqrec {

namespace {
// A packed copy of the item table speeds scoring up ~2x; above this size holding the table
// twice costs more memory than it is worth, and it is used in place.
constexpr int64_t kMaxPackedTableFloats = int64_t{16} << 20;
}  // namespace

Model::Model(const ModelSpec& spec, WeightMap weights)
    : spec_(spec), weights_(std::move(weights)), encoder_(spec_, weights_) {
  const float* item_table = weights_.at("embedding/item/weight").ptr();
  const float* output_bias = nullptr;
  if (spec_.output_bias) {
    auto it = weights_.find("output/bias");
    if (it == weights_.end() || it->second.shape != std::vector<int64_t>{spec_.n_items})
      throw Error("model weights: tensor 'output/bias' missing or not [" + std::to_string(spec_.n_items) + "]");
    output_bias = it->second.ptr();
  }
  // Only the catalog rows are scored: the [MASK] row, if any, follows them.
  scoring_ = kernels::PackedLinear(item_table, output_bias, spec_.n_items, spec_.d, kernels::Epilogue::none,
                                   spec_.n_items * spec_.d <= kMaxPackedTableFloats);
}

void Model::logits(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* out) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  if (batch == 0) return;
  const int64_t hidden_floats = kernels::padded_rows(batch) * spec_.d;
  if (static_cast<int64_t>(ws.hidden.size()) < hidden_floats) ws.hidden.resize(static_cast<size_t>(hidden_floats));
  float* hidden = ws.hidden.data();
  encoder_.encode(sequences, ws, hidden);
  scoring_.apply(hidden, spec_.d, batch, out);
}

}  // namespace seqrec
