// What the scorer derives from its item table once — the int8 copy that the exact top-k scan
// reads (kernels/quantized_scan.h), for tables that stream from memory an int4 copy too (the
// batch-1 scan), and 1 / ||row|| per row for similar items — computed at conversion and stored
// in the model file (format 3; the int4 copy from format 4), so that a load uses them in place
// instead of making them again (a 1M-item model: a third of its load time and a quarter of
// the table's size in fresh memory).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace seqrec {

// Views of stored tables, kept alive by `backing` (the mapped model file). Null: not stored;
// the scorer then makes them itself.
struct StoredScorerTables {
  const uint8_t* scan_table = nullptr;   // kernels::quantize_table of the scoring table
  uint64_t scan_table_bytes = 0;         // kernels::quantized_table_bytes(n_items, d)
  const uint8_t* scan_table_int4 = nullptr;  // kernels::quantize_table(..., ScanCode::int4) of it
  uint64_t scan_table_int4_bytes = 0;        // kernels::quantized_table_bytes(n_items, d, ScanCode::int4)
  const float* inverse_norms = nullptr;  // [n_items]
  std::shared_ptr<const void> backing;
};

// The same tables, made for a file (Scorer::derive_tables). Empty: none to store (a catalog
// small enough to score in full, or a table the scan cannot bound).
struct DerivedScorerTables {
  std::vector<uint8_t, AlignedAllocator<uint8_t>> scan_table;  // 64-byte aligned, as quantize_table writes it
  std::vector<uint8_t, AlignedAllocator<uint8_t>> scan_table_int4;  // empty: the scorer keeps none
  std::vector<float> inverse_norms;
};

}  // namespace seqrec
