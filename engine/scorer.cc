#include "engine/scorer.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace seqrec {

namespace {
// A packed copy of the table speeds scoring up ~2x; above this size holding the table twice
// costs more memory than it is worth, and it is used in place.
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

Scorer::Scorer(const ModelSpec& spec, const WeightMap& weights, PreScan pre_scan)
    : n_items_(spec.n_items), d_(spec.d) {
  // Only the catalog rows are scored: the [MASK] row of the input table, if any, follows them.
  table_ = spec.scorer.separate_table
               ? weight(weights, "output/item/weight", {n_items_, d_})
               : weight(weights, "embedding/item/weight", {spec.item_table_rows(), d_});
  if (spec.scorer.output_bias) bias_ = weight(weights, "output/bias", {n_items_});
  product_ = kernels::PackedLinear(table_, bias_, n_items_, d_, kernels::Epilogue::none,
                                   n_items_ * d_ <= kMaxPackedTableFloats);
  if (wants_pre_scan(pre_scan, spec)) {
    bool bounded = true;
    if (bias_)
      for (int64_t r = 0; r < n_items_ && bounded; ++r)
        bounded = std::abs(bias_[r]) <= kernels::kMaxScanBias;  // false for NaN too
    if (bounded) {
      quantized_table_.resize(static_cast<size_t>(kernels::quantized_table_bytes(n_items_, d_)));
      bounded = kernels::quantize_table(table_, n_items_, d_, quantized_table_.data());
    }
    // A table beyond the bounds (values not finite, or huge) is scored in full.
    if (!bounded) decltype(quantized_table_)().swap(quantized_table_);
  }
  // Similar items divide by the norms: made here, not by the first request that needs them
  // (a million rows took a third of a second on that request).
  inverse_norms_.resize(static_cast<size_t>(n_items_));
  for (int64_t r = 0; r < n_items_; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < d_; ++j) sum += static_cast<double>(table_[r * d_ + j]) * table_[r * d_ + j];
    inverse_norms_[static_cast<size_t>(r)] = sum > 0 ? static_cast<float>(1.0 / std::sqrt(sum)) : 0.0f;
  }
}

void Scorer::logits(const float* hidden, int64_t rows, float* out) const { product_.apply(hidden, d_, rows, out); }

void Scorer::exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const {
  kernels::scan_top_k(table_, bias_, quantized_table_.data(), n_items_, d_, queries, n_queries, scratch);
}

float Scorer::exact_score(const float* hidden, int32_t row) const {
  float s = kernels::exact_score(hidden, table_ + static_cast<int64_t>(row) * d_, d_);
  if (bias_) s += bias_[row];
  return s;
}

const std::vector<float>& Scorer::inverse_norms() const { return inverse_norms_; }

void ScoreReport::set_logits(const float* logits, int64_t n) {
  if (kind_ != ScoreKind::softmax) return;
  // Probability over the whole catalog (every row the model was trained to predict).
  float max_scaled = -INFINITY;
  for (int64_t r = first_row_; r < n; ++r) max_scaled = std::max(max_scaled, logits[r] / temperature_);
  double sum = 0.0;
  for (int64_t r = first_row_; r < n; ++r) sum += std::exp(static_cast<double>(logits[r] / temperature_ - max_scaled));
  log_norm_ = max_scaled + static_cast<float>(std::log(sum));
}

float ScoreReport::operator()(float logit) const {
  switch (kind_) {
    case ScoreKind::sigmoid: return 1.0f / (1.0f + std::exp(-logit));
    case ScoreKind::softmax: return std::exp(logit / temperature_ - log_norm_);
    case ScoreKind::raw: break;
  }
  return logit;
}

}  // namespace seqrec
