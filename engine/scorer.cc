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

// Beyond this the int8 copy (here 34 MB) no longer stays in the caches between requests, a
// batch-1 scan streams it from memory, and the bytes read are its time: an int4 copy (half
// the bytes; looser bounds, so more rows rescored) is kept as well for batches of one request.
// kernels_bench, batch 1, other work on the machine: catalog1m 1.55-2.1 -> 1.0-1.1 ms,
// catalog10m 22-26 -> 11-13 ms. Two or more queries share each read of the int8 copy, and its
// tighter bounds then win (catalog10m: int8 22 ms for 2 queries, int4 23).
constexpr int64_t kMinInt4Floats = int64_t{32} << 20;

bool wants_pre_scan(PreScan pre_scan, const ModelSpec& spec) {
  switch (pre_scan) {
    case PreScan::always: return true;
    case PreScan::never: return false;
    case PreScan::automatic: break;
  }
  return spec.n_items * spec.d >= kMinPreScanFloats;
}

// Whether a scorer that pre-scans also keeps the int4 copy (PreScan::always: every table, so
// that tests reach the int4 path with small catalogs).
bool wants_int4(PreScan pre_scan, const ModelSpec& spec) {
  return pre_scan == PreScan::always || spec.n_items * spec.d >= kMinInt4Floats;
}

using ScanTable = std::vector<uint8_t, UninitAlignedAllocator<uint8_t>>;

// The table's copy in `code`, or an empty one when the table cannot be bounded.
template <class Bytes>
Bytes make_scan_table(const float* table, int64_t n, int64_t d, kernels::ScanCode code) {
  Bytes out(static_cast<size_t>(kernels::quantized_table_bytes(n, d, code)));
  // A table beyond the bounds (values not finite, or huge) is scored in full.
  if (!kernels::quantize_table(table, n, d, out.data(), code)) Bytes().swap(out);
  return out;
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
  using kernels::ScanCode;
  const bool stored_scan = stored.scan_table &&
                           stored.scan_table_bytes == static_cast<uint64_t>(kernels::quantized_table_bytes(n_items_, d_));
  const bool stored_int4 =
      stored_scan && stored.scan_table_int4 &&
      stored.scan_table_int4_bytes == static_cast<uint64_t>(kernels::quantized_table_bytes(n_items_, d_, ScanCode::int4));
  if (wants_pre_scan(pre_scan, spec) && bias_bounded(bias_, n_items_)) {
    if (stored_scan) {
      scan_table_ = stored.scan_table;
    } else {
      own_scan_table_ = make_scan_table<ScanTable>(table_, n_items_, d_, ScanCode::int8);
      if (!own_scan_table_.empty()) scan_table_ = own_scan_table_.data();
    }
    if (scan_table_ && wants_int4(pre_scan, spec)) {
      if (stored_int4) {
        scan_table_int4_ = stored.scan_table_int4;
      } else {
        own_scan_table_int4_ = make_scan_table<ScanTable>(table_, n_items_, d_, ScanCode::int4);
        if (!own_scan_table_int4_.empty()) scan_table_int4_ = own_scan_table_int4_.data();
      }
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
  using Bytes = decltype(out.scan_table);
  out.scan_table = make_scan_table<Bytes>(table, spec.n_items, spec.d, kernels::ScanCode::int8);
  if (out.scan_table.empty()) return out;
  if (wants_int4(PreScan::automatic, spec))
    out.scan_table_int4 = make_scan_table<Bytes>(table, spec.n_items, spec.d, kernels::ScanCode::int4);
  out.inverse_norms = make_inverse_norms(table, spec.n_items, spec.d);
  return out;
}

void Scorer::logits(const float* hidden, int64_t rows, float* out) const { product_.apply(hidden, d_, rows, out); }

void Scorer::exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const {
  if (n_queries == 1 && scan_table_int4_)
    kernels::scan_top_k(table_, bias_, scan_table_int4_, n_items_, d_, queries, n_queries, scratch, kernels::ScanCode::int4);
  else
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
