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


// Whether the bias (if any) keeps every score within the scan's bounds (false for NaN too).
bool bias_bounded(const float* bias, int64_t n) {
  if (!bias) return true;
  for (int64_t r = 0; r < n; ++r)
    if (!(std::abs(bias[r]) <= kernels::kMaxScanBias)) return false;
  return true;
}

// table [n, d] → 1/||row|| per row (0 for a zero row), accumulated in double.
std::vector<float> make_inverse_norms(const float* table, int64_t n, int64_t d) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < d; ++j) sum += static_cast<double>(table[r * d + j]) * table[r * d + j];
    out[static_cast<size_t>(r)] = sum > 0 ? static_cast<float>(1.0 / std::sqrt(sum)) : 0.0f;
  }
  return out;
}

// The rows the scorer scores with: the output table, or the catalog rows of the input table
// (its [MASK] row, if any, follows them).
const float* scoring_table(const ModelSpec& spec, const WeightMap& weights) {
  return spec.scorer.separate_table ? weight(weights, "output/item/weight", {spec.n_items, spec.d})
                                    : weight(weights, "embedding/item/weight", {spec.item_table_rows(), spec.d});
}

}  // namespace

Scorer::Scorer(const ModelSpec& spec, const WeightMap& weights, PreScan pre_scan, const StoredScorerTables& stored)
    : n_items_(spec.n_items), d_(spec.d) {
  table_ = scoring_table(spec, weights);
  if (spec.scorer.output_bias) bias_ = weight(weights, "output/bias", {n_items_});
  product_ = kernels::PackedLinear(table_, bias_, n_items_, d_, kernels::Epilogue::none,
                                   n_items_ * d_ <= kMaxPackedTableFloats);
  const bool stored_scan = stored.scan_table &&
                           stored.scan_table_bytes == static_cast<uint64_t>(kernels::quantized_table_bytes(n_items_, d_));
  if (wants_pre_scan(pre_scan, spec) && bias_bounded(bias_, n_items_)) {
    if (stored_scan) {
      scan_table_ = stored.scan_table;
    } else {
      own_scan_table_.resize(static_cast<size_t>(kernels::quantized_table_bytes(n_items_, d_)));
      // A table beyond the bounds (values not finite, or huge) is scored in full.
      if (kernels::quantize_table(table_, n_items_, d_, own_scan_table_.data()))
        scan_table_ = own_scan_table_.data();
      else
        decltype(own_scan_table_)().swap(own_scan_table_);
    }
  }
  // Similar items divide by the norms: made here, not by the first request that needs them
  // (a million rows took a third of a second on that request).
  if (stored.inverse_norms) {
    inverse_norms_ = stored.inverse_norms;
  } else {
    own_inverse_norms_ = make_inverse_norms(table_, n_items_, d_);
    inverse_norms_ = own_inverse_norms_.data();
  }
  if ((stored_scan && scan_table_ == stored.scan_table) || stored.inverse_norms) stored_ = stored;
}

DerivedScorerTables Scorer::derive_tables(const ModelSpec& spec, const WeightMap& weights) {
  DerivedScorerTables out;
  if (!wants_pre_scan(PreScan::automatic, spec)) return out;
  const float* table = scoring_table(spec, weights);
  const float* bias = spec.scorer.output_bias ? weight(weights, "output/bias", {spec.n_items}) : nullptr;
  if (!bias_bounded(bias, spec.n_items)) return out;
  out.scan_table.resize(static_cast<size_t>(kernels::quantized_table_bytes(spec.n_items, spec.d)));
  if (!kernels::quantize_table(table, spec.n_items, spec.d, out.scan_table.data())) {
    out.scan_table.clear();
    return out;
  }
  out.inverse_norms = make_inverse_norms(table, spec.n_items, spec.d);
  return out;
}

void Scorer::logits(const float* hidden, int64_t rows, float* out) const { product_.apply(hidden, d_, rows, out); }

void Scorer::exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const {
  kernels::scan_top_k(table_, bias_, scan_table_, n_items_, d_, queries, n_queries, scratch);
}

float Scorer::exact_score(const float* hidden, int32_t row) const {
  float s = kernels::exact_score(hidden, table_ + static_cast<int64_t>(row) * d_, d_);
  if (bias_) s += bias_[row];
  return s;
}

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
