// The scorer: user states against the item table. Its table is the input item table (tied) or
// a separate output table (gSASRec, HSTU's unit-norm items), plus an optional per-item bias.
// For large tables an int8 copy answers each query's exact top-k without reading the fp32
// table in full (kernels/quantized_scan.h): the same rows and scores as the full product.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "engine/model_spec.h"
#include "engine/scorer_tables.h"
#include "engine/tensor.h"
#include "engine/weights.h"
#include "kernels/gemm.h"
#include "kernels/quantized_scan.h"

namespace seqrec {

// Whether the scorer keeps an int8 copy of its table for the pre-scan.
enum class PreScan {
  automatic,  // for tables beyond the fast caches (see scorer.cc)
  always,     // whenever the table can be bounded (tests: small catalogs through the large-catalog path)
  never,
};

class Scorer {
 public:
  // `stored`: the tables a model file carries (format 3), used in place when they fit this
  // spec; whatever is not stored is made here.
  Scorer(const ModelSpec& spec, const WeightMap& weights, PreScan pre_scan, const StoredScorerTables& stored = {});

  // The tables a model file stores for this spec and weights: the int8 scan table and the
  // inverse norms when the scorer would pre-scan the table (PreScan::automatic), none otherwise.
  static DerivedScorerTables derive_tables(const ModelSpec& spec, const WeightMap& weights);

  int64_t n_items() const { return n_items_; }
  // logits: [rows, n_items] raw scores of every catalog row (row 0 included; never recommended)
  // for hidden states [rows, d]. One product for all the rows.
  void logits(const float* hidden, int64_t rows, float* out) const;

  // Whether exact_top_k can answer: the int8 copy of the table is built. Batches of every size
  // then take it: with several queries per load of the int8 table it costs less than the
  // scoring product and its top-k even at batch 64 (kernels_bench, recbole: ~4 vs ~6.6 µs per
  // request).
  bool has_pre_scan() const { return scan_table_ != nullptr; }
  size_t pre_scan_bytes() const {
    return (has_pre_scan() ? static_cast<size_t>(kernels::quantized_table_bytes(n_items_, d_)) : 0) +
           (has_int4_pre_scan() ? static_cast<size_t>(kernels::quantized_table_bytes(n_items_, d_, kernels::ScanCode::int4)) : 0);
  }
  // Whether a batch of one request scans the int4 copy (made for tables that stream from memory).
  bool has_int4_pre_scan() const { return scan_table_int4_ != nullptr; }
  // Whether the scan table and the inverse norms were read from the model file, not made at load.
  bool tables_from_file() const { return stored_.backing != nullptr; }
  // Each query's k best rows for its hidden state (ScanTopK::h, [d]) outside its `never` rows,
  // by exact score (kernels::exact_score, + bias) descending, ties by catalog order: what the
  // full product ranks; the int8 table is read once for all the queries. A query's `found` is
  // -1 when its scores cannot be bounded (a hidden state not finite, or huge): rank its full
  // logits instead. Needs has_pre_scan(). One query scans the int4 copy when there is one;
  // the answer is the same either way, bit for bit.
  void exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const;
  // The exact score of one row, as exact_top_k reports it.
  float exact_score(const float* hidden, int32_t row) const;

  // The item representations it scores with, for item-to-item similarity: row r's vector
  // ([d]), the int8 copy (null when there is none), and 1 / ||row|| per row (0 for a zero
  // row), made at load.
  const float* row(int32_t r) const { return table_ + static_cast<int64_t>(r) * d_; }
  const uint8_t* quantized_table() const { return scan_table_; }
  const float* inverse_norms() const { return inverse_norms_; }

 private:
  int64_t n_items_ = 0, d_ = 0;
  const float* table_ = nullptr;  // [n_items, d]
  const float* bias_ = nullptr;   // [n_items] or null
  kernels::PackedLinear product_;
  const uint8_t* scan_table_ = nullptr;    // kernels::quantize_table of table_: stored or own_scan_table_; null: none
  const float* inverse_norms_ = nullptr;  // [n_items] 1/||row|| (0 for a zero row): stored or own_inverse_norms_
  const uint8_t* scan_table_int4_ = nullptr;  // the int4 copy: stored or own_scan_table_int4_; null: none
  std::vector<uint8_t, UninitAlignedAllocator<uint8_t>> own_scan_table_;
  std::vector<uint8_t, UninitAlignedAllocator<uint8_t>> own_scan_table_int4_;
  std::vector<float> own_inverse_norms_;
  StoredScorerTables stored_;  // keeps the file's tables alive when they are used
};

// What the API reports for a raw logit (ScoreKind): sigmoid, raw, or the softmax over every
// catalog row at the scorer's temperature (its normaliser from those logits: set_logits).
class ScoreReport {
 public:
  explicit ScoreReport(const ScorerSpec& spec)
      : kind_(spec.score), temperature_(spec.temperature), first_row_(spec.padding_in_softmax ? 0 : 1) {}
  // The softmax's normaliser: log Σ_r exp(logit_r / T) over the n rows.
  void set_logits(const float* logits, int64_t n);
  float operator()(float logit) const;

 private:
  ScoreKind kind_;
  float temperature_;
  int64_t first_row_;  // of the normaliser's rows
  float log_norm_ = 0;
};

}  // namespace seqrec
