#include "kernels/quantized_scan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"
#include "kernels/multiply_add.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

namespace {

constexpr int kLanes = static_cast<int>(kQuantizedLanes);  // items per block

// The 64-byte units of a block's data: groups (int8) or pairs of groups (int4).
int64_t data_units(int64_t d, ScanCode code) { return quantized_data_bytes(d, code) / 64; }

// ---- one block: the 16 integer dot products and the 16 bounds -----------------------------

// dots[lane] = q_h · q_i (offset removed) for the 16 items of one block, in the layout of
// q.code (units: data_units). (The portable pieces are compiled everywhere, used where VNNI
// is missing.)
[[maybe_unused]] void block_dots_portable(const uint8_t* block, int64_t units, const ScanQuery& q, int32_t* dots) {
  const auto query_byte = [&](int64_t g, int t) {
    return static_cast<int32_t>(static_cast<int8_t>(static_cast<uint32_t>(q.groups[static_cast<size_t>(g)]) >> (8 * t)));
  };
  for (int lane = 0; lane < kLanes; ++lane) {
    int32_t sum = 0;
    for (int64_t u = 0; u < units; ++u) {
      const uint8_t* item = block + u * 64 + lane * 4;
      for (int t = 0; t < 4; ++t) {
        if (q.code == ScanCode::int8) {
          sum += static_cast<int32_t>(item[t]) * query_byte(u, t);
        } else {
          sum += static_cast<int32_t>(item[t] & 0x0F) * query_byte(2 * u, t);
          sum += static_cast<int32_t>(item[t] >> 4) * query_byte(2 * u + 1, t);
        }
      }
    }
    dots[lane] = sum - q.offset;
  }
}

// The bounds of one item from its dot product and metadata word (see the header's
// formulas), in the vector code's order of operations, so both give the same bits:
//   e = fma(s·ν, norm_coef, fma(s·ρ, residual_coef, floor)),  a = dot · (s · scale),
//   u = fma(dot, s · scale, e + (b + bias_coef·|b|)),  l = fma(dot, s · scale, (b − bias_coef·|b|) − e)
[[maybe_unused]] void item_bounds_portable(int32_t dot, uint32_t meta, const float* bias, const ScanQuery& q, float& lower,
                          float& upper) {
  const uint32_t scale_bits = meta & 0xFFFF0000u;
  float s;
  std::memcpy(&s, &scale_bits, sizeof s);
  const float s_nu = s * static_cast<float>((meta >> 8) & 0xFFu), s_rho = s * static_cast<float>(meta & 0xFFu);
  const float e = std::fma(s_nu, q.norm_coef, std::fma(s_rho, q.residual_coef, q.floor));
  const float scaled = s * q.scale, dotf = static_cast<float>(dot);
  float above = 0, below = 0;  // b ± bias_coef·|b|
  if (bias) {
    above = std::fma(q.bias_coef, std::abs(*bias), *bias);
    below = std::fma(-q.bias_coef, std::abs(*bias), *bias);
  }
  upper = std::fma(dotf, scaled, e + above);
  lower = std::fma(dotf, scaled, below - e);
}

#if SEQREC_HAVE_VNNI
SEQREC_INTRINSIC_WARNINGS_OFF
// What one block's 16 lanes share whichever query scans them (item_bounds_portable's s·ν,
// s·ρ, s and b ± bias_coef·|b|).
struct BlockTerms {
  __m512 s, s_nu, s_rho, above, below;
};

BlockTerms block_terms(const uint8_t* meta_words, const float* bias, float bias_coef) {
  const __m512i meta = _mm512_load_si512(meta_words);
  const __m512i byte = _mm512_set1_epi32(0xFF);
  BlockTerms t;
  t.s = _mm512_castsi512_ps(_mm512_and_si512(meta, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  t.s_nu = _mm512_mul_ps(t.s, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(meta, 8), byte)));
  t.s_rho = _mm512_mul_ps(t.s, _mm512_cvtepi32_ps(_mm512_and_si512(meta, byte)));
  t.above = t.below = _mm512_setzero_ps();
  if (bias) {
    const __m512 b = _mm512_loadu_ps(bias), margin = _mm512_set1_ps(bias_coef);
    t.above = _mm512_fmadd_ps(margin, _mm512_abs_ps(b), b);
    t.below = _mm512_fnmadd_ps(margin, _mm512_abs_ps(b), b);
  }
  return t;
}

// The 16 lanes' e (the bound's half-width without the bias term) for one query.
inline __m512 block_half_width(const BlockTerms& t, const ScanQuery& q) {
  return _mm512_fmadd_ps(t.s_nu, _mm512_set1_ps(q.norm_coef),
                         _mm512_fmadd_ps(t.s_rho, _mm512_set1_ps(q.residual_coef), _mm512_set1_ps(q.floor)));
}

SEQREC_INTRINSIC_WARNINGS_ON
#endif

// scored[i].first = exact_score(h, table + scored[i].second · d, d) for every i. Eight rows at
// a time: each keeps its own sequential FMA chain (the same bits as exact_score), and eight
// independent chains hide the FMA latency one chain would wait on.
void exact_scores(const float* table, int64_t d, const float* h, std::vector<std::pair<float, int32_t>>& scored) {
  constexpr size_t kChains = 8;
  for (size_t i = 0; i < scored.size(); i += kChains) {
    const size_t rows = std::min(kChains, scored.size() - i);  // a last partial group repeats its last row
    const float* w[kChains];
    float acc[kChains];
#pragma GCC unroll 8
    for (size_t r = 0; r < kChains; ++r) {
      w[r] = table + static_cast<int64_t>(scored[i + std::min(r, rows - 1)].second) * d;
      acc[r] = 0.0f;
    }
    for (int64_t j = 0; j < d; ++j)
#pragma GCC unroll 8
      for (size_t r = 0; r < kChains; ++r) acc[r] = multiply_add(h[j], w[r][j], acc[r]);
    for (size_t r = 0; r < rows; ++r) scored[i + r].first = acc[r];
  }
}

// ---- selection: the k-th largest eligible lower bound, and the rows that may reach it -----
//
// θ is kept exact as the scan goes: the k largest eligible lower bounds seen so far, in a
// register sorted descending when k <= 16 (an insert is a compare, a permute and two blends,
// no branches), in a min-heap otherwise. About k·ln(n/k) lanes raise θ per query; the heap's
// branchy updates for them cost more than the int8 arithmetic of a 10k-item scan. Rows whose
// upper bound reaches θ are appended to the candidates (rows and upper bounds), which are
// filtered again by the final θ before rescoring.

class Selection {
 public:
  // A fresh selection for one query; the buffers of an earlier one are kept (a worker's
  // ScanScratch reuses its selections from batch to batch).
  void reset(const int32_t* never, int64_t n_never, int64_t k) {
    never_ = never;
    n_never_ = n_never;
    k_ = k;
    capacity_ = std::max<int64_t>(64, 4 * k);
    rows_.resize(std::max(rows_.size(), static_cast<size_t>(capacity_ + kLanes)));
    ups_.resize(rows_.size());
    size_ = 0;
    threshold_ = -std::numeric_limits<float>::infinity();
    lows_.clear();
#if SEQREC_HAVE_AVX512
    std::fill(std::begin(best_), std::end(best_), -std::numeric_limits<float>::infinity());
    next_never_ = 0;
#endif
  }

  // θ so far: the k-th largest lower bound of the eligible rows offered (−∞ until k were).
  float threshold() const { return threshold_; }

  // One row (the portable scan).
  void offer(int32_t row, float lower, float upper) {
    if (upper < threshold_ || is_never(row)) return;
    if (lower > threshold_) raise(lower);
    if (upper >= threshold_) append(row, upper);
  }

#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
  // The lanes of `reach` of the block whose lane 0 is row `first`, with their bounds.
  void offer_block(int64_t first, __mmask16 reach, __m512 lower, __m512 upper) {
    if (n_never_ > 0) reach &= ~never_lanes(first);
    __mmask16 raising = reach & _mm512_cmp_ps_mask(lower, _mm512_set1_ps(threshold_), _CMP_GT_OQ);
    if (raising && k_ <= kLanes) {
      alignas(64) float lows[kLanes];
      _mm512_store_ps(lows, lower);
      const __m512i previous = _mm512_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14);
      __m512 best = _mm512_load_ps(best_);
      for (; raising; raising &= raising - 1) {
        // best is sorted descending: the lanes > v are a prefix; v goes right after them and
        // the rest move one lane down (the last one falls off).
        const __m512 v = _mm512_set1_ps(lows[__builtin_ctz(raising)]);
        const __mmask16 above = _mm512_cmp_ps_mask(best, v, _CMP_GT_OQ);
        const __m512 shifted = _mm512_mask_mov_ps(_mm512_permutexvar_ps(previous, best), above, best);
        best = _mm512_mask_mov_ps(shifted, static_cast<__mmask16>((above + 1u) & ~above), v);
      }
      _mm512_store_ps(best_, best);
      threshold_ = best_[k_ - 1];
    } else if (raising) {
      alignas(64) float lows[kLanes];
      _mm512_store_ps(lows, lower);
      for (; raising; raising &= raising - 1) {
        const float v = lows[__builtin_ctz(raising)];
        if (v > threshold_) raise(v);
      }
    }
    const __mmask16 keep = reach & _mm512_cmp_ps_mask(upper, _mm512_set1_ps(threshold_), _CMP_GE_OQ);
    const __m512i rows = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(first)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_mask_compressstoreu_epi32(rows_.data() + size_, keep, rows);
    _mm512_mask_compressstoreu_ps(ups_.data() + size_, keep, upper);
    size_ += __builtin_popcount(keep);
    if (size_ >= capacity_) compact();
  }
SEQREC_INTRINSIC_WARNINGS_ON
#endif

  // Rescores every candidate that can still reach θ and writes the k best.
  int64_t finish(const float* table, const float* bias, int64_t d, const float* h, int32_t* rows, float* scores,
                 TopKStats* stats) {
    std::vector<std::pair<float, int32_t>>& scored = scored_;  // (exact score, row)
    scored.clear();
    for (int64_t i = 0; i < size_; ++i)
      if (ups_[static_cast<size_t>(i)] >= threshold_) scored.push_back({0.0f, rows_[static_cast<size_t>(i)]});
#if defined(__x86_64__)
    for (const auto& s : scored)  // the rows are scattered over the table: ask for them all first
      for (int64_t off = 0; off < d; off += 16)
        _mm_prefetch(reinterpret_cast<const char*>(table + s.second * d + off), _MM_HINT_T0);
#endif
    exact_scores(table, d, h, scored);
    if (bias)
      for (auto& s : scored) s.first += bias[s.second];
    if (stats) stats->rescored = static_cast<int64_t>(scored.size());
    const auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    };
    const size_t n_out = std::min(scored.size(), static_cast<size_t>(k_));
    std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(n_out), scored.end(), better);
    for (size_t i = 0; i < n_out; ++i) {
      rows[i] = scored[i].second;
      scores[i] = scored[i].first;
    }
    return static_cast<int64_t>(n_out);
  }

 private:
  bool is_never(int32_t row) const { return std::binary_search(never_, never_ + n_never_, row); }

#if SEQREC_HAVE_AVX512
  // The lanes of the block at `first` that hold never-rows. Blocks come in ascending order.
  __mmask16 never_lanes(int64_t first) {
    next_never_ = std::lower_bound(never_ + next_never_, never_ + n_never_, first) - never_;
    uint32_t lanes = 0;
    for (int64_t j = next_never_; j < n_never_ && never_[j] < first + kLanes; ++j) lanes |= 1u << (never_[j] - first);
    return static_cast<__mmask16>(lanes);
  }
#endif

  // Adds a lower bound above θ to the k largest (the heap path).
  void raise(float lower) {
    if (static_cast<int64_t>(lows_.size()) < k_) {
      lows_.push_back(lower);
      std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
      if (static_cast<int64_t>(lows_.size()) == k_) threshold_ = lows_.front();
    } else {
      std::pop_heap(lows_.begin(), lows_.end(), std::greater<float>());
      lows_.back() = lower;
      std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
      threshold_ = lows_.front();
    }
  }

  void append(int32_t row, float upper) {
    rows_[static_cast<size_t>(size_)] = row;
    ups_[static_cast<size_t>(size_)] = upper;
    if (++size_ >= capacity_) compact();
  }

  // Drops the candidates θ has passed; keeps room for at least as many more as remain.
  void compact() {
    int64_t kept = 0;
    for (int64_t i = 0; i < size_; ++i)
      if (ups_[static_cast<size_t>(i)] >= threshold_) {
        rows_[static_cast<size_t>(kept)] = rows_[static_cast<size_t>(i)];
        ups_[static_cast<size_t>(kept++)] = ups_[static_cast<size_t>(i)];
      }
    size_ = kept;
    if (2 * size_ > capacity_) {
      capacity_ = 2 * size_;
      rows_.resize(std::max(rows_.size(), static_cast<size_t>(capacity_ + kLanes)));
      ups_.resize(rows_.size());
    }
  }

  const int32_t* never_ = nullptr;
  int64_t n_never_ = 0;
  int64_t k_ = 0;
  int64_t capacity_ = 0;
  float threshold_ = -std::numeric_limits<float>::infinity();
#if SEQREC_HAVE_AVX512
  // k <= 16: the 16 largest lower bounds, descending. Kept as floats, not an __m512 member:
  // this class is also laid out by code outside the AVX-512 target region (std::vector's),
  // where a vector member's alignment would differ.
  alignas(64) float best_[kLanes];
  int64_t next_never_ = 0;
#endif
  std::vector<float> lows_;  // k > 16 (or no AVX-512): min-heap of the k largest lower bounds
  std::vector<int32_t> rows_;  // candidates: [0, size_), room for kLanes more
  std::vector<float> ups_;
  int64_t size_ = 0;
  std::vector<std::pair<float, int32_t>> scored_;  // finish()'s
};

// A chunk of L2's size: the batch's queries scan it in turn while it stays there.
constexpr int64_t kScanChunkBytes = 256 << 10;

// Queries that scan the table together: each 64-byte load of a block feeds every one of them.
constexpr int kQueriesPerPass = 8;

#if SEQREC_HAVE_VNNI
SEQREC_INTRINSIC_WARNINGS_OFF
// acc[q] = q_h · q_i (offset not removed) of one block's 16 lanes for 8 queries whose groups
// are interleaved: interleaved[g·8 + q] is query q's group g. Written in assembly because GCC
// 12 keeps eight loop-carried accumulators either in memory or behind two register copies per
// vpdpbusd, and does not fold the query's broadcast into it: 36 instructions per 8 vpdpbusd
// where this loop has 12 (one load of the 16 items' group, eight vpdpbusd with the queries'
// four bytes as embedded broadcasts, the loop's three). d4 >= 1.
__attribute__((always_inline)) inline void block_dots_8(const uint8_t* block, int64_t d4, const int32_t* interleaved,
                                                        __m512i (&acc)[8]) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, items;
  const uint8_t* items_at = block;
  const int32_t* groups_at = interleaved;
  const int32_t* const groups_end = interleaved + d4 * 8;
  asm("1:\n\t"
      "vmovdqa64 (%[items_at]), %[items]\n\t"
      "vpdpbusd 0(%[groups_at])%{1to16%}, %[items], %[a0]\n\t"
      "vpdpbusd 4(%[groups_at])%{1to16%}, %[items], %[a1]\n\t"
      "vpdpbusd 8(%[groups_at])%{1to16%}, %[items], %[a2]\n\t"
      "vpdpbusd 12(%[groups_at])%{1to16%}, %[items], %[a3]\n\t"
      "vpdpbusd 16(%[groups_at])%{1to16%}, %[items], %[a4]\n\t"
      "vpdpbusd 20(%[groups_at])%{1to16%}, %[items], %[a5]\n\t"
      "vpdpbusd 24(%[groups_at])%{1to16%}, %[items], %[a6]\n\t"
      "vpdpbusd 28(%[groups_at])%{1to16%}, %[items], %[a7]\n\t"
      "add $64, %[items_at]\n\t"
      "add $32, %[groups_at]\n\t"
      "cmp %[groups_end], %[groups_at]\n\t"
      "jb 1b"
      : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
        [a7] "+v"(a7), [items] "=&v"(items), [items_at] "+r"(items_at), [groups_at] "+r"(groups_at)
      : [groups_end] "r"(groups_end)
      : "cc", "memory");
  acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3, acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
}

// The integer dot products q_h · q_i (offset removed) of one block's 16 lanes for Q queries
// at once: the block's int8 groups are loaded once and multiplied with each query's (one
// vpdpbusd each). A accumulators per query keep vpdpbusd's latency off the critical path
// when Q alone does not. Every loop over q and a is unrolled (GCC otherwise keeps acc in
// memory).
//
// Eight queries (a full pass) take block_dots_8 when their groups come interleaved.

template <int Q>
__attribute__((always_inline)) inline void block_dots(const uint8_t* block, int64_t d4, const ScanQuery* const* queries,
                                                      const int32_t* const* groups, const int32_t* interleaved,
                                                      __m512i (&dots)[Q]) {
  if constexpr (Q == 8) {
    if (interleaved) {
      block_dots_8(block, d4, interleaved, dots);
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) dots[q] = _mm512_sub_epi32(dots[q], _mm512_set1_epi32(queries[q]->offset));
      return;
    }
  }
  constexpr int A = Q == 1 ? 4 : Q == 2 ? 2 : 1;
  __m512i acc[Q][A];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a) acc[q][a] = _mm512_setzero_si512();
  int64_t g = 0;
  for (; g + A <= d4; g += A)
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a) {
      __m512i items = _mm512_load_si512(block + (g + a) * 64);
      if constexpr (Q == 1) {
        // The query's four bytes as an embedded broadcast ({1to16}): GCC 12 emits a separate
        // vpbroadcastd for _mm512_set1_epi32 here, one more instruction per 64 bytes of table
        // (kernels_bench batch 1: catalog1m 1.84-1.87 -> 1.63-1.71 ms; recbole, ml1m unchanged).
        asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc[0][a]) : "v"(items), "m"(groups[0][g + a]));
      } else {
        asm("" : "+v"(items));  // one load for all Q, not one folded into each vpdpbusd
#pragma GCC unroll 8
        for (int q = 0; q < Q; ++q)
          acc[q][a] = _mm512_dpbusd_epi32(acc[q][a], items, _mm512_set1_epi32(groups[q][g + a]));
      }
    }
  for (; g < d4; ++g) {
    __m512i items = _mm512_load_si512(block + g * 64);
    asm("" : "+v"(items));
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[q][0] = _mm512_dpbusd_epi32(acc[q][0], items, _mm512_set1_epi32(groups[q][g]));
  }
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) {
    __m512i sum = acc[q][0];
#pragma GCC unroll 4
    for (int a = 1; a < A; ++a) sum = _mm512_add_epi32(sum, acc[q][a]);
    dots[q] = _mm512_sub_epi32(sum, _mm512_set1_epi32(queries[q]->offset));
  }
}

// The same for one query over an int4 block of d8 pairs: each 64-byte load is two groups'
// nibbles; a mask and a shift make each an int8 group layout for vpdpbusd (the bytes read
// halve, the vpdpbusd stay as many).
__attribute__((always_inline)) inline __m512i block_dots_int4(const uint8_t* block, int64_t d8, const ScanQuery& query,
                                                              const int32_t* groups) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  const auto pair = [&](int64_t p, __m512i& acc_low, __m512i& acc_high) {
    const __m512i items = _mm512_load_si512(block + p * 64);
    const __m512i low = _mm512_and_si512(items, nibble);
    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(items, 4), nibble);
    // Embedded broadcasts, as block_dots<1>.
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc_low) : "v"(low), "m"(groups[2 * p]));
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc_high) : "v"(high), "m"(groups[2 * p + 1]));
  };
  int64_t p = 0;
  for (; p + 2 <= d8; p += 2) {
    pair(p, acc[0], acc[1]);
    pair(p + 1, acc[2], acc[3]);
  }
  if (p < d8) pair(p, acc[0], acc[1]);
  const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
  return _mm512_sub_epi32(sum, _mm512_set1_epi32(query.offset));
}

// The bounds of one block's 16 lanes for Q queries (item_bounds_portable's arithmetic, 16
// lanes at once): the dot products, then the block's metadata unpacked once (BlockTerms).
// bounds(q, upper, lower) gets query q's upper bounds and a function that computes the lower
// ones (most blocks never need them). An int4 block is scanned by one query at a time.
template <ScanCode C, int Q, class Bounds>
__attribute__((always_inline)) inline void bound_block(const uint8_t* block, int64_t units, const float* block_bias,
                                                       float bias_coef, const ScanQuery* const* queries,
                                                       const int32_t* const* groups, const int32_t* interleaved,
                                                       Bounds&& bounds) {
  __m512i dots[Q];
  if constexpr (C == ScanCode::int8) {
    block_dots<Q>(block, units, queries, groups, interleaved, dots);
  } else {
    static_assert(Q == 1);
    dots[0] = block_dots_int4(block, units, *queries[0], groups[0]);
  }
  const BlockTerms terms = block_terms(block + units * 64, block_bias, bias_coef);
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) {
    const ScanQuery& query = *queries[q];
    const __m512 dotf = _mm512_cvtepi32_ps(dots[q]);
    const __m512 scaled = _mm512_mul_ps(terms.s, _mm512_set1_ps(query.scale));
    const __m512 e = block_half_width(terms, query);
    bounds(q, _mm512_fmadd_ps(dotf, scaled, _mm512_add_ps(e, terms.above)),
           [&] { return _mm512_fmadd_ps(dotf, scaled, _mm512_sub_ps(terms.below, e)); });
  }
}

// Offers blocks [first_block, end_block) of the table to Q queries' selections.
template <ScanCode C, int Q>
void scan_blocks_vnni(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery* const* queries,
                      Selection* const* selections, int64_t first_block, int64_t end_block) {
  const int64_t units = data_units(d, C), block_bytes = quantized_block_bytes(d, C);
  const float bias_coef = queries[0]->bias_coef;  // depends on d only
  const int32_t* groups[Q];
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q) groups[q] = queries[q]->groups.data();
  alignas(64) float last_bias[kLanes] = {};
  const auto bias_of = [&](int64_t first) -> const float* {
    if (!bias) return nullptr;
    if (n - first >= kLanes) return bias + first;
    std::copy(bias + first, bias + n, last_bias);  // the last block: zeros past n
    return last_bias;
  };
  const auto valid_lanes = [&](int64_t first) {
    return static_cast<__mmask16>((1u << std::min<int64_t>(kLanes, n - first)) - 1);
  };
  if constexpr (Q == 1) {
    // One query: a run of blocks is bounded first, then tested and offered. A branch on the
    // test right after each block's arithmetic mispredicts on the blocks that reach θ, and
    // each miss then waits out the block's whole ~40-cycle chain. kernels_bench, batch 1,
    // against testing each block at once (medians, alternating builds): recbole 7.5-7.7 ->
    // 6.7-7.1 µs, ml1m 2.86-2.93 -> 2.79-2.87 µs; catalog1m, which streams from memory,
    // 1.70 -> 1.81-1.90 ms (the stores of the run's bounds cost there, the stall is hidden).
    constexpr int kRun = 8;
    // The blocks two runs ahead are asked for before a run's arithmetic: the hardware
    // prefetcher alone left the int4 scan of a table streaming from memory below the memory's
    // bandwidth (kernels_bench catalog10m int4 batch 1, other work on the machine: 14.2-14.9 ms
    // without, 11.2-12.8 with 16 blocks ahead; 8 and 48 in between).
    constexpr int64_t kPrefetchBlocks = 16;
    alignas(64) float lo[kRun][kLanes], hi[kRun][kLanes];
    for (int64_t run = first_block; run < end_block; run += kRun) {
      const int blocks = static_cast<int>(std::min<int64_t>(kRun, end_block - run));
      if (run + kPrefetchBlocks + kRun <= end_block) {
        const uint8_t* ahead = qtable + (run + kPrefetchBlocks) * block_bytes;
        for (int64_t off = 0; off < kRun * block_bytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(ahead + off), _MM_HINT_T0);
      }
      for (int j = 0; j < blocks; ++j) {
        const int64_t first = (run + j) * kLanes;
        bound_block<C, 1>(qtable + (run + j) * block_bytes, units, bias_of(first), bias_coef, queries, groups, nullptr,
                       [&](int, __m512 upper, auto lower) {
                         _mm512_store_ps(hi[j], upper);
                         _mm512_store_ps(lo[j], lower());
                       });
      }
      for (int j = 0; j < blocks; ++j) {
        const int64_t first = (run + j) * kLanes;
        const __m512 upper = _mm512_load_ps(hi[j]);
        // Most blocks cannot reach θ: test all 16 lanes at once, look closer at the ones that can.
        const __mmask16 reach =
            _mm512_cmp_ps_mask(upper, _mm512_set1_ps(selections[0]->threshold()), _CMP_GE_OQ) & valid_lanes(first);
        if (reach) selections[0]->offer_block(first, reach, _mm512_load_ps(lo[j]), upper);
      }
    }
  } else {
    // Several queries: enough independent work per block to hide the test's branch.
    alignas(64) float lo[Q][kLanes], hi[Q][kLanes];
    // Eight int8 queries: their groups interleaved for block_dots_8 (a table of d <= 4096).
    constexpr int64_t kMaxInterleavedGroups = 1024;
    alignas(64) int32_t interleaved_groups[Q == 8 && C == ScanCode::int8 ? kMaxInterleavedGroups * 8 : 1];
    const int32_t* interleaved = nullptr;
    if constexpr (Q == 8 && C == ScanCode::int8) {
      if (units <= kMaxInterleavedGroups) {
        for (int64_t g = 0; g < units; ++g)
          for (int q = 0; q < Q; ++q) interleaved_groups[g * 8 + q] = groups[q][g];
        interleaved = interleaved_groups;
      }
    }
    for (int64_t b = first_block; b < end_block; ++b) {
      const int64_t first = b * kLanes;
      const __mmask16 valid = valid_lanes(first);
      // First every query's test, then the offers: a call (offer_block) in between would make
      // GCC keep the other queries' accumulators in memory.
      __mmask16 reach[Q];
      bool any = false;
      bound_block<C, Q>(qtable + b * block_bytes, units, bias_of(first), bias_coef, queries, groups, interleaved,
                     [&](int q, __m512 upper, auto lower) {
                       reach[q] = _mm512_cmp_ps_mask(upper, _mm512_set1_ps(selections[q]->threshold()), _CMP_GE_OQ) &
                                  valid;
                       if (reach[q]) {
                         _mm512_store_ps(lo[q], lower());
                         _mm512_store_ps(hi[q], upper);
                         any = true;
                       }
                     });
      if (!any) continue;
      for (int q = 0; q < Q; ++q)
        if (reach[q]) selections[q]->offer_block(first, reach[q], _mm512_load_ps(lo[q]), _mm512_load_ps(hi[q]));
    }
  }
}
SEQREC_INTRINSIC_WARNINGS_ON
#else
// Offers blocks [first_block, end_block) of the table to one query's selection.
void scan_blocks_portable(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query,
                          int64_t first_block, int64_t end_block, Selection& selection) {
  const int64_t units = data_units(d, query.code), block_bytes = quantized_block_bytes(d, query.code);
  int32_t dots[kLanes];
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * kLanes;
    const uint8_t* block = qtable + b * block_bytes;
    block_dots_portable(block, units, query, dots);
    const int64_t lanes = std::min<int64_t>(kLanes, n - first);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      uint32_t meta;
      std::memcpy(&meta, block + units * 64 + lane * 4, sizeof meta);
      float lo, hi;
      item_bounds_portable(dots[lane], meta, bias ? bias + first + lane : nullptr, query, lo, hi);
      selection.offer(static_cast<int32_t>(first + lane), lo, hi);
    }
  }
}
#endif

// Offers blocks [first_block, end_block) to up to kQueriesPerPass queries' selections (of
// one code: queries[0]->code).
void scan_blocks(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery* const* queries,
                 Selection* const* selections, int count, int64_t first_block, int64_t end_block) {
#if SEQREC_HAVE_VNNI
  static_assert(kQueriesPerPass == 8);
  constexpr ScanCode int8 = ScanCode::int8;
  if (queries[0]->code == ScanCode::int4) {
    for (int q = 0; q < count; ++q)
      scan_blocks_vnni<ScanCode::int4, 1>(qtable, n, d, bias, queries + q, selections + q, first_block, end_block);
    return;
  }
  switch (count) {
    case 1: return scan_blocks_vnni<int8, 1>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 2: return scan_blocks_vnni<int8, 2>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 3: return scan_blocks_vnni<int8, 3>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 4: return scan_blocks_vnni<int8, 4>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 5: return scan_blocks_vnni<int8, 5>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 6: return scan_blocks_vnni<int8, 6>(qtable, n, d, bias, queries, selections, first_block, end_block);
    case 7: return scan_blocks_vnni<int8, 7>(qtable, n, d, bias, queries, selections, first_block, end_block);
    default: return scan_blocks_vnni<int8, 8>(qtable, n, d, bias, queries, selections, first_block, end_block);
  }
#else
  for (int q = 0; q < count; ++q)
    scan_blocks_portable(qtable, n, d, bias, *queries[q], first_block, end_block, *selections[q]);
#endif
}

}  // namespace

void quantized_dots(const uint8_t* qtable, int64_t n, int64_t d, const ScanQuery& query, int32_t* out) {
  const int64_t units = data_units(d, query.code), block_bytes = quantized_block_bytes(d, query.code);
  int32_t dots[kLanes];
  for (int64_t first = 0; first < n; first += kLanes) {
    const uint8_t* block = qtable + first / kLanes * block_bytes;
#if SEQREC_HAVE_VNNI
SEQREC_INTRINSIC_WARNINGS_OFF
    const ScanQuery* queries[1] = {&query};
    const int32_t* groups[1] = {query.groups.data()};
    __m512i block_dot[1];
    if (query.code == ScanCode::int8)
      block_dots<1>(block, units, queries, groups, nullptr, block_dot);
    else
      block_dot[0] = block_dots_int4(block, units, query, groups[0]);
    _mm512_storeu_si512(dots, block_dot[0]);
SEQREC_INTRINSIC_WARNINGS_ON
#else
    block_dots_portable(block, units, query, dots);
#endif
    std::copy(dots, dots + std::min<int64_t>(kLanes, n - first), out + first);
  }
}

void scan_bounds(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query, float* lower,
                 float* upper) {
  const int64_t units = data_units(d, query.code), block_bytes = quantized_block_bytes(d, query.code);
  for (int64_t first = 0; first < n; first += kLanes) {
    const uint8_t* block = qtable + first / kLanes * block_bytes;
    const int64_t lanes = std::min<int64_t>(kLanes, n - first);
    float lo[kLanes], hi[kLanes];
#if SEQREC_HAVE_VNNI
SEQREC_INTRINSIC_WARNINGS_OFF
    float padded_bias[kLanes] = {};
    if (bias) std::copy(bias + first, bias + first + lanes, padded_bias);
    const ScanQuery* queries[1] = {&query};
    const int32_t* groups[1] = {query.groups.data()};
    const auto store = [&](int, __m512 u, auto l) {
      _mm512_storeu_ps(hi, u);
      _mm512_storeu_ps(lo, l());
    };
    if (query.code == ScanCode::int8)
      bound_block<ScanCode::int8, 1>(block, units, bias ? padded_bias : nullptr, query.bias_coef, queries, groups, nullptr,
                                     store);
    else
      bound_block<ScanCode::int4, 1>(block, units, bias ? padded_bias : nullptr, query.bias_coef, queries, groups, nullptr,
                                     store);
SEQREC_INTRINSIC_WARNINGS_ON
#else
    int32_t dots[kLanes];
    block_dots_portable(block, units, query, dots);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      uint32_t meta;
      std::memcpy(&meta, block + units * 64 + lane * 4, sizeof meta);
      item_bounds_portable(dots[lane], meta, bias ? bias + first + lane : nullptr, query, lo[lane], hi[lane]);
    }
#endif
    std::copy(lo, lo + lanes, lower + first);
    std::copy(hi, hi + lanes, upper + first);
  }
}

float exact_score(const float* h, const float* w, int64_t d) {
  // One multiply_add per dimension in order from 0: bit for bit what a lane of
  // kernels::panel_gemm computes, so scores found here equal the full scoring product's.
  float acc = 0.0f;
  for (int64_t j = 0; j < d; ++j) acc = multiply_add(h[j], w[j], acc);
  return acc;
}

namespace {
// This path's working memory in a ScanScratch: made on first use (again if the scratch holds
// another path's, which only tests that switch paths in one process would do).
struct ScanState final : ScanScratch::State {
  std::vector<ScanQuery> quantized;
  std::vector<Selection> selections;
  std::vector<int64_t> active;  // queries that scan: bounded, k > 0
  std::vector<const ScanQuery*> scanning;
  std::vector<Selection*> selecting;
};
}  // namespace

void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries, ScanScratch& scratch, ScanCode code) {
  if (!dynamic_cast<ScanState*>(scratch.state.get())) scratch.state = std::make_unique<ScanState>();
  ScanState& st = static_cast<ScanState&>(*scratch.state);
  const size_t count = static_cast<size_t>(n_queries);
  if (st.quantized.size() < count) st.quantized.resize(count);
  if (st.selections.size() < count) st.selections.resize(count);
  st.active.clear();
  st.scanning.clear();
  st.selecting.clear();
  for (int64_t i = 0; i < n_queries; ++i) {
    ScanTopK& q = queries[i];
    q.stats = {};
    q.found = quantize_query(q.h, d, st.quantized[static_cast<size_t>(i)], code) ? 0 : -1;
    if (q.found != 0 || q.k <= 0) continue;
    st.selections[static_cast<size_t>(i)].reset(q.never, q.n_never, q.k);
    st.active.push_back(i);
    st.scanning.push_back(&st.quantized[static_cast<size_t>(i)]);
    st.selecting.push_back(&st.selections[static_cast<size_t>(i)]);
  }
  // The table is read in chunks that stay in L2 while every query scans them: one read from
  // memory for the whole batch.
  const int64_t block_bytes = quantized_block_bytes(d, code), n_blocks = (n + kLanes - 1) / kLanes;
  const int64_t chunk_blocks = std::max<int64_t>(1, kScanChunkBytes / block_bytes);
  const int64_t n_active = static_cast<int64_t>(st.active.size());
  for (int64_t first = 0; first < n_blocks; first += chunk_blocks)
    for (int64_t i = 0; i < n_active; i += kQueriesPerPass)
      scan_blocks(qtable, n, d, bias, st.scanning.data() + i, st.selecting.data() + i,
                  static_cast<int>(std::min<int64_t>(kQueriesPerPass, n_active - i)), first,
                  std::min(n_blocks, first + chunk_blocks));
  for (int64_t i : st.active)
    queries[i].found = st.selections[static_cast<size_t>(i)].finish(table, bias, d, queries[i].h, queries[i].rows,
                                                                    queries[i].scores, &queries[i].stats);
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
