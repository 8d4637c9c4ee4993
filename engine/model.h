// A loaded model: owns its weights; turns batches of item-row sequences into catalog logits,
// or, for large catalogs, straight into each sequence's exact top-k (kernels/quantized_scan.h).
#pragma once

#include <span>
#include <vector>

#include "engine/encoder.h"
#include "engine/model_spec.h"
#include "engine/tensor.h"
#include "kernels/quantized_scan.h"

namespace seqrec {

// Whether the model keeps an int8 copy of its item table for the pre-scan.
enum class PreScan {
  automatic,  // for tables beyond the fast caches (see model.cc)
  always,     // whenever the table can be bounded (tests: small catalogs through the large-catalog path)
  never,
};

class Model {
 public:
  // Validates the spec and every weight's presence and shape (seqrec::Error otherwise).
  Model(const ModelSpec& spec, WeightMap weights, PreScan pre_scan = PreScan::automatic);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelSpec& spec() const { return spec_; }

  // logits: [batch, n_items] raw scores of every catalog row (row 0, the padding row,
  // included; callers never recommend it). One encoder pass and one scoring GEMM for the
  // whole batch. Each sequence holds item rows in [1, n_items), oldest first.
  void logits(std::span<const std::vector<int32_t>> sequences, Workspace& ws, float* out) const;

  // The same in two steps. hidden: the encoder output [batch, d], in ws.hidden (valid until
  // the next call with ws); score: logits [rows, n_items] of hidden states [rows, d].
  const float* hidden(std::span<const std::vector<int32_t>> sequences, Workspace& ws) const;
  void score(const float* hidden, int64_t rows, float* logits) const;

  // Whether exact_top_k can answer: the int8 copy of the item table is built. Batches of
  // every size then take it: with several queries per load of the int8 table it costs less
  // than the scoring product and its top-k even at batch 64 (kernels_bench, recbole: ~4 vs
  // ~6.6 µs per request).
  bool has_pre_scan() const { return !quantized_table_.empty(); }
  // Bytes the int8 copy holds (0 without it).
  size_t pre_scan_bytes() const { return quantized_table_.size(); }

  // Each query's k best catalog rows for its hidden state (ScanTopK::h, [d]), outside its
  // `never` rows, by exact score (kernels::exact_score, + bias) descending, ties by catalog
  // order: the rows and scores of a full scan, found by the int8 pre-scan and the fp32
  // rescoring of the rows that may qualify; the table is read once for all the queries.
  // A query's `found` is -1 when its scores cannot be bounded (a hidden state not finite, or
  // huge): rank its full logits instead. Needs has_pre_scan().
  void exact_top_k(kernels::ScanTopK* queries, int64_t n_queries, kernels::ScanScratch& scratch) const;
  // The exact score of one catalog row, as exact_top_k reports it.
  float exact_score(const float* hidden, int32_t row) const;

 private:
  ModelSpec spec_;
  WeightMap weights_;  // the encoder points into these
  Encoder encoder_;
  // Tied output layer: logits = hidden · item_tableᵀ (+ per-item bias) over the catalog rows.
  kernels::PackedLinear scoring_;
  const float* item_table_ = nullptr;   // [n_items, d]
  const float* output_bias_ = nullptr;  // [n_items] or null
  std::vector<uint8_t, AlignedAllocator<uint8_t>> quantized_table_;  // kernels::quantize_table, or empty
};

}  // namespace seqrec
