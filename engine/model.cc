#include "engine/model.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "engine/workspace.h"
#include "kernels/gemm.h"

namespace seqrec {

namespace {
// A packed copy of the item table speeds scoring up ~2x; above this size holding the table
// twice costs more memory than it is worth, and it is used in place.
constexpr int64_t kMaxPackedTableFloats = int64_t{16} << 20;

// PreScan::automatic builds the int8 copy once the fp32 table outgrows the fast caches
// (256 KB): scoring one request then streams the table from L2 or beyond (ml1m 683 KB:
// ~5 us; RecBole's 10k items, 2.5 MB: ~20 us; catalog1m, 256 MB: ~9 ms), and the copy is a
// quarter of the bytes (plus 4 per item). Measured (seqrec_timing, batch 1): ml1m 0.068 ->
// 0.064 ms per request, RecBole 0.059 -> 0.041, catalog1m 9.2 -> 1.8 ms.
constexpr int64_t kMinPreScanFloats = int64_t{64} << 10;

bool wants_pre_scan(PreScan pre_scan, const ModelSpec& spec) {
  switch (pre_scan) {
    case PreScan::always: return true;
    case PreScan::never: return false;
    case PreScan::automatic: break;
  }
  return spec.n_items * spec.d >= kMinPreScanFloats;
}
}  // namespace

Model::Model(const ModelSpec& spec, WeightMap weights, PreScan pre_scan)
    : spec_(spec), weights_(std::move(weights)), encoder_(spec_, weights_) {
  item_table_ = weights_.at("embedding/item/weight").ptr();
  if (spec_.output_bias) {
    auto it = weights_.find("output/bias");
    if (it == weights_.end() || it->second.shape != std::vector<int64_t>{spec_.n_items})
      throw Error("model weights: tensor 'output/bias' missing or not [" + std::to_string(spec_.n_items) + "]");
    output_bias_ = it->second.ptr();
  }
  // Only the catalog rows are scored: the [MASK] row, if any, follows them.
  scoring_ = kernels::PackedLinear(item_table_, output_bias_, spec_.n_items, spec_.d, kernels::Epilogue::none,
                                   spec_.n_items * spec_.d <= kMaxPackedTableFloats);
  if (wants_pre_scan(pre_scan, spec_)) {
    bool bounded = true;
    if (output_bias_)
      for (int64_t r = 0; r < spec_.n_items && bounded; ++r)
        bounded = std::abs(output_bias_[r]) <= kernels::kMaxScanBias;  // false for NaN too
    if (bounded) {
      quantized_table_.resize(static_cast<size_t>(kernels::quantized_table_bytes(spec_.n_items, spec_.d)));
      bounded = kernels::quantize_table(item_table_, spec_.n_items, spec_.d, quantized_table_.data());
    }
    // A table beyond the bounds (values not finite, or huge) is scored in full, as before.
    if (!bounded) decltype(quantized_table_)().swap(quantized_table_);
  }
}

const float* Model::hidden(std::span<const std::vector<int32_t>> sequences, Workspace& ws) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  const int64_t hidden_floats = kernels::padded_rows(batch) * spec_.d;
  if (static_cast<int64_t>(ws.hidden.size()) < hidden_floats) ws.hidden.resize(static_cast<size_t>(hidden_floats));
  if (batch > 0) encoder_.encode(sequences, ws, ws.hidden.data());
  return ws.hidden.data();
}

void Model::score(const float* hidden, int64_t rows, float* logits) const {
  scoring_.apply(hidden, spec_.d, rows, logits);
}

void Model::logits(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* out) const {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  if (batch == 0) return;
  score(hidden(sequences, ws), batch, out);
}

void Model::exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const {
  kernels::scan_top_k(item_table_, output_bias_, quantized_table_.data(), spec_.n_items, spec_.d, queries, n_queries,
                      scratch);
}

float Model::exact_score(const float* hidden, int32_t row) const {
  float s = kernels::exact_score(hidden, item_table_ + static_cast<int64_t>(row) * spec_.d, spec_.d);
  if (output_bias_) s += output_bias_[row];
  return s;
}

}  // namespace seqrec
