#include "engine/model.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/gemm.h"
#include "kernels/quantized_scan.h"

namespace seqrec {

namespace {
// A packed copy of the item table speeds scoring up ~2x; above this size holding the table
// twice costs more memory than it is worth, and it is used in place.
constexpr int64_t kMaxPackedTableFloats = int64_t{16} << 20;

// PreScan::automatic builds the int8 copy for those same tables: above 64 MB the fp32 scan
// streams the whole table from memory for every request (catalog1m: 256 MB, ~9 ms), and a
// copy of a quarter of its size (plus 4 bytes per item) cuts that read ~3.8x. Below, the
// packed fp32 GEMM is fast and the copy would not pay for its memory.
bool wants_pre_scan(PreScan pre_scan, const ModelSpec& spec) {
  switch (pre_scan) {
    case PreScan::always: return true;
    case PreScan::never: return false;
    case PreScan::automatic: break;
  }
  return spec.n_items * spec.d > kMaxPackedTableFloats;
}

double norm_of(const float* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return std::sqrt(sum);
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
      for (int64_t r = 0; r < spec_.n_items && bounded; ++r) {
        bounded = std::abs(output_bias_[r]) <= kernels::kMaxScanBias;  // false for NaN too
        max_abs_bias_ = std::max(max_abs_bias_, std::abs(output_bias_[r]));
      }
    if (bounded) {
      quantized_table_.resize(static_cast<size_t>(kernels::quantized_table_bytes(spec_.n_items, spec_.d)));
      bounded = kernels::quantize_table(item_table_, spec_.n_items, spec_.d, quantized_table_.data(), &max_row_norm_);
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

int64_t Model::exact_top_k(const float* hidden, const float* logits, std::span<const int32_t> never, int64_t k,
                           int32_t* rows, float* scores) const {
  const int64_t n = spec_.n_items, d = spec_.d;
  const int32_t* never_rows = never.data();
  const int64_t n_never = static_cast<int64_t>(never.size());
  if (!logits)
    return kernels::scan_top_k(item_table_, output_bias_, quantized_table_.data(), n, d, hidden, never_rows, n_never, k,
                               rows, scores);
  // The GEMM's logits and exact_score are each within γ_{d+1}·(||h||·||w|| + |b|) of the real
  // h·w + b, plus the bias addition's rounding, whatever their order of summation: together
  // <= (2d + 4)·2^-24·(...). With the rounding of logit ± error, 8·(d + 16)·2^-24 covers it
  // four times over; the last terms cover underflow, even with denormals flushed.
  const double h_norm = norm_of(hidden, d);
  if (!(h_norm <= kernels::kMaxScanNorm)) return -1;
  const double dd = static_cast<double>(d);
  const double error = 8.0 * (dd + 16.0) * 0x1p-24 * (h_norm * max_row_norm_ + max_abs_bias_) +
                       std::sqrt(dd) * h_norm * 0x1p-124 + (dd + 16.0) * 0x1p-120;
  return kernels::rescore_top_k(logits, static_cast<float>(error * (1.0 + 1e-6)), item_table_, output_bias_, n, d,
                                hidden, never_rows, n_never, k, rows, scores);
}

float Model::exact_score(const float* hidden, int32_t row) const {
  float s = kernels::exact_score(hidden, item_table_ + static_cast<int64_t>(row) * spec_.d, spec_.d);
  if (output_bias_) s += output_bias_[row];
  return s;
}

}  // namespace seqrec
