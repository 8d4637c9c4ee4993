// Exact top-k over a large item table without reading all of it in fp32: an int8 copy of
// the table (a quarter of the bytes) is scanned first, and each item gets guaranteed lower
// and upper bounds l_i <= score_i <= u_i of its exact score. With θ the k-th largest lower
// bound over the eligible rows, every eligible row of the exact top-k has u_i >= θ (at least
// k eligible rows score >= θ, so the k-th best exact score T >= θ, and a row scoring >= T
// has u_i >= T). Only those rows are rescored in fp32, so the answer is the full scan's.
//
// The exact score of row i is exact_score(h, w_i, d) (+ bias_i, one fp32 addition): a
// fixed-order fp32 dot product, the same whatever the batch or the path that found the row,
// and the same as kernels::panel_gemm's scoring product.
//
// The bounds assume IEEE fp32 arithmetic with gradual underflow (no -ffast-math, no FTZ/DAZ).
// The dot products of the scan are exact integer arithmetic: the AVX-512 VNNI kernel and
// the portable one compute the same numbers.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace seqrec::kernels {

// ---- the int8 and int4 copies of a table --------------------------------------------------
//
// Item i (a row w_i of d floats) is stored as s_i · q_i: s_i >= max_j |w_ij| / Q (a bfloat16,
// rounded up) and q_ij = round(w_ij / s_i) in [-Q, Q], with Q = 127 (ScanCode::int8) or 7
// (ScanCode::int4: half the bytes, looser bounds, more rows to rescore; for one query over a
// table that streams from memory, where the bytes read are the time).
//
// Layout, d4 = ceil(d / 4) groups of four dimensions: ceil(n / 16) blocks of
// quantized_block_bytes(d, code) bytes; block b holds items 16b .. 16b + 15 ("lanes"):
//   int8: [d4][16][4] uint8   q_ij + 128 of item 16b + lane, dimensions 4g .. 4g + 3 (128,
//                       i.e. q = 0, past d and for lanes past n): one 64-byte load is 16 items
//                       × 4 dimensions, and VNNI's vpdpbusd lands 16 dot products in one register;
//   int4: [d8][16][4] uint8   d8 = ceil(d4 / 2) pairs of groups: byte t of lane l in pair p
//                       holds q + 8 of dimension 8p + t in its low nibble (group 2p) and of
//                       dimension 8p + 4 + t in its high one (group 2p + 1); 8 past d and n.
//                       A load, a mask and a shift give the two groups' int8 layouts;
//   [16] uint32         per lane: bits 31..16 s_i (the upper half of its fp32 value),
//                       bits 15..8 ν_i, bits 7..0 ρ_i (fixed point, rounded up):
//                         ||w_i||₂           <= s_i · Q·√d · ν_i / 255
//                         ||w_i − s_i q_i||₂ <= s_i · (√d / 2) · ρ_i / 255
enum class ScanCode : int { int8 = 8, int4 = 4 };
inline constexpr int64_t kQuantizedLanes = 16;  // items per block
inline int64_t quantized_groups(int64_t d) { return (d + 3) / 4; }
inline int64_t quantized_data_bytes(int64_t d, ScanCode code = ScanCode::int8) {
  return code == ScanCode::int8 ? quantized_groups(d) * 64 : (quantized_groups(d) + 1) / 2 * 64;
}
inline int64_t quantized_block_bytes(int64_t d, ScanCode code = ScanCode::int8) {
  return quantized_data_bytes(d, code) + kQuantizedLanes * 4;
}
inline int64_t quantized_table_bytes(int64_t n, int64_t d, ScanCode code = ScanCode::int8) {
  return (n + kQuantizedLanes - 1) / kQuantizedLanes * quantized_block_bytes(d, code);
}

// Rows, queries and biases beyond these are not scanned (scores could overflow fp32); the
// caller scores them in full.
inline constexpr double kMaxScanNorm = 0x1p60;
inline constexpr double kMaxScanBias = 0x1p100;
// Keeps every integer dot product, offset included, within int32.
inline constexpr int64_t kMaxScanDim = 32768;

// table: [n, d] row-major. out: quantized_table_bytes(n, d, code) bytes, 64-byte aligned.
// Returns false when d > kMaxScanDim, a value is not finite or a row's norm exceeds
// kMaxScanNorm: the copy is then not usable.
bool quantize_table(const float* table, int64_t n, int64_t d, uint8_t* out, ScanCode code = ScanCode::int8);

// ---- one query ---------------------------------------------------------------------------
//
// h ≈ ĥ = scale · q_h, and the coefficients of the bound
//   |score_i − a_i| <= e_i = s_i · (norm_coef · ν_i + residual_coef · ρ_i) + bias_coef · |b_i| + floor
// where a_i = (q_h · q_i) · (s_i · scale) (+ b_i) is what the scan computes in fp32. It rests on
//   |h·w − ĥ·ŵ| <= ||h − ĥ||·||w|| + ||ĥ||·||w − ŵ||  (ŵ = s q)
// plus slack (τ below) for every fp32 rounding: of the exact score (<= γ_d·||h||·||w||), of
// a_i and b_i's addition, and of computing e_i, l_i and u_i themselves.
struct ScanQuery {
  ScanCode code = ScanCode::int8;  // of the table it scans: its layout, Q and the offset
  std::vector<int32_t> groups;  // [2·d8]: q_h of dimensions 4g .. 4g + 3 as four int8 (low byte first), 0 past d
  float scale = 0;              // s_h
  int32_t offset = 0;           // (Q + 1) · Σ_j q_hj: what the table's +128 (+8) adds to each dot product
  float norm_coef = 0;          // (||h − ĥ|| + τ·H) · Q√d/255, rounded up (H = ||h|| + ||h − ĥ||)
  float residual_coef = 0;      // (||ĥ|| + τ·H) · (√d/2)/255, rounded up
  float bias_coef = 0;          // τ
  float floor = 0;              // absolute slack for products that underflow
};

// h: [d]. Returns false when h is not finite, ||h|| > kMaxScanNorm, d > kMaxScanDim, or the
// CPU flushes denormals (no bound is computed then). The query itself is always int8; `code`
// is the table's.
bool quantize_query(const float* h, int64_t d, ScanQuery& out, ScanCode code = ScanCode::int8);

// ---- the pieces, exposed for tests ---------------------------------------------------------

// The table is in query.code's layout.
// out: [n] the integer dot products q_h · q_i (the scan's, offset removed).
void quantized_dots(const uint8_t* qtable, int64_t n, int64_t d, const ScanQuery& query, int32_t* out);

// lower, upper: [n] the scan's bounds l_i = a_i − e_i, u_i = a_i + e_i. bias: [n] or null.
void scan_bounds(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query,
                 float* lower, float* upper);

// The exact score h · w (d floats each): acc = multiply_add(h_j, w_j, acc) for j = 0 .. d−1
// from 0 (kernels/multiply_add.h) — the order and rounding of a kernels::panel_gemm lane on
// the same path, so the two give the same bits (the bounds cover γ_d for any summation order).
float exact_score(const float* h, const float* w, int64_t d);

// ---- exact top-k ---------------------------------------------------------------------------

struct TopKStats {
  int64_t rescored = 0;  // rows scored exactly in fp32
};

// The k best eligible rows of table · h (+ bias), by exact score descending, ties by lower
// row first: what a full scan with exact_score ranks.
//   table:  [n, d] fp32; bias: [n] or null; qtable: quantize_table(table, n, d, code)
//   h:      [d]
//   never:  [n_never] rows that are never returned, sorted ascending, no duplicates
//   rows, scores: room for k each; returns how many were written (< k when fewer are eligible),
//   or -1 when h cannot be bounded (see quantize_query): the caller then scans in full.
int64_t scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, const float* h,
                   const int32_t* never, int64_t n_never, int64_t k, int32_t* rows, float* scores,
                   TopKStats* stats = nullptr, ScanCode code = ScanCode::int8);

// Several queries at once: the table is read from memory once for all of them, in chunks
// that stay in cache while the queries scan them eight at a time (each 64-byte load of int8
// items feeds eight vpdpbusd; an int4 table is scanned by one query at a time, its use).
// Each query's answer is what scan_top_k gives it alone, and the same for either code.
struct ScanTopK {
  const float* h = nullptr;        // [d]
  const int32_t* never = nullptr;  // [n_never], sorted ascending, no duplicates
  int64_t n_never = 0;
  int64_t k = 0;
  int32_t* rows = nullptr;         // room for k
  float* scores = nullptr;         // room for k
  int64_t found = 0;               // out: as scan_top_k returns
  TopKStats stats;                 // out
};
void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries, ScanCode code = ScanCode::int8);

// The scan's working memory (quantized queries, selections, candidates), kept by a worker
// so that a batch allocates nothing once the buffers have grown to its size.
class ScanScratch {
 public:
  // The memory of the scan of the path in use (kernels/cpu_isa.h), made on first use.
  struct State {
    virtual ~State() = default;
  };
  std::unique_ptr<State> state;
};
// The same, with the working memory of `scratch`.
void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries, ScanScratch& scratch, ScanCode code = ScanCode::int8);

}  // namespace seqrec::kernels
