#include "kernels/quantized_scan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#if defined(__AVX512F__) || defined(__SSE__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
// GCC 12 warns inside its own intrinsics (an undefined vector they fill on purpose).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace seqrec::kernels {

namespace {

constexpr int kLanes = 16;              // items per block
constexpr double kUnitRoundoff = 0x1p-24;  // fp32, round to nearest

int64_t groups_of(int64_t d) { return (d + 3) / 4; }

// The smallest fp32 >= x (x >= 0, finite).
float float_up(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// The smallest bfloat16 >= x (x >= 0), as the fp32 it stands for (low 16 bits zero).
float bfloat16_up(double x) {
  const float f = float_up(x);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if (bits & 0xFFFFu) bits = (bits & 0xFFFF0000u) + 0x10000u;  // monotonic for positive values
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// ceil(x · 255) as a byte, x in [0, 1], with margin for the double arithmetic that gave x.
uint32_t fixed_point_up(double x) {
  const double scaled = std::ceil(x * 255.0 * (1.0 + 1e-12) + 1e-9);
  return static_cast<uint32_t>(std::clamp(scaled, 0.0, 255.0));
}

// Whether flush-to-zero or denormals-are-zero is on: the bounds assume gradual underflow.
bool flushes_denormals() {
#if defined(__SSE__)
  return (_mm_getcsr() & 0x8040u) != 0;
#else
  return false;
#endif
}

// ---- one block: the 16 integer dot products and the 16 bounds -----------------------------

// dots[lane] = q_h · q_i (offset removed) for the 16 items of one block. (The portable
// pieces are compiled everywhere, used where VNNI is missing.)
[[maybe_unused]] void block_dots_portable(const uint8_t* block, int64_t d4, const ScanQuery& q, int32_t* dots) {
  for (int lane = 0; lane < kLanes; ++lane) {
    int32_t sum = 0;
    for (int64_t g = 0; g < d4; ++g) {
      const uint8_t* item = block + g * 64 + lane * 4;
      const uint32_t group = static_cast<uint32_t>(q.groups[static_cast<size_t>(g)]);
      for (int t = 0; t < 4; ++t)
        sum += static_cast<int32_t>(item[t]) * static_cast<int32_t>(static_cast<int8_t>(group >> (8 * t)));
    }
    dots[lane] = sum - q.offset;
  }
}

// The bounds of one item from its dot product and metadata word (see the header's formulas).
[[maybe_unused]] void item_bounds_portable(int32_t dot, uint32_t meta, const float* bias, const ScanQuery& q, float& lower,
                          float& upper) {
  const uint32_t scale_bits = meta & 0xFFFF0000u;
  float s;
  std::memcpy(&s, &scale_bits, sizeof s);
  const float nu = static_cast<float>((meta >> 8) & 0xFFu), rho = static_cast<float>(meta & 0xFFu);
  float a = static_cast<float>(dot) * (s * q.scale);
  float e = s * (q.norm_coef * nu + q.residual_coef * rho) + q.floor;
  if (bias) {
    a += *bias;
    e += q.bias_coef * std::abs(*bias);
  }
  lower = a - e;
  upper = a + e;
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
__m512i block_dots_vnni(const uint8_t* block, int64_t d4, const int32_t* groups, __m512i offset) {
  // Four accumulators: vpdpbusd's latency would otherwise chain all d4 steps.
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t g = 0;
  for (; g + 4 <= d4; g += 4) {
    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_load_si512(block + g * 64), _mm512_set1_epi32(groups[g]));
    acc1 = _mm512_dpbusd_epi32(acc1, _mm512_load_si512(block + g * 64 + 64), _mm512_set1_epi32(groups[g + 1]));
    acc2 = _mm512_dpbusd_epi32(acc2, _mm512_load_si512(block + g * 64 + 128), _mm512_set1_epi32(groups[g + 2]));
    acc3 = _mm512_dpbusd_epi32(acc3, _mm512_load_si512(block + g * 64 + 192), _mm512_set1_epi32(groups[g + 3]));
  }
  for (; g < d4; ++g)
    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_load_si512(block + g * 64), _mm512_set1_epi32(groups[g]));
  const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3));
  return _mm512_sub_epi32(sum, offset);
}

// The same arithmetic as item_bounds_portable, 16 lanes at once.
void block_bounds_vnni(__m512i dots, const uint8_t* meta_words, const float* bias, const ScanQuery& q, __m512& lower,
                       __m512& upper) {
  const __m512i meta = _mm512_load_si512(meta_words);
  const __m512 s = _mm512_castsi512_ps(_mm512_and_si512(meta, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  const __m512i byte = _mm512_set1_epi32(0xFF);
  const __m512 nu = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(meta, 8), byte));
  const __m512 rho = _mm512_cvtepi32_ps(_mm512_and_si512(meta, byte));
  __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(dots), _mm512_mul_ps(s, _mm512_set1_ps(q.scale)));
  __m512 e = _mm512_add_ps(
      _mm512_mul_ps(s, _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(q.norm_coef), nu),
                                     _mm512_mul_ps(_mm512_set1_ps(q.residual_coef), rho))),
      _mm512_set1_ps(q.floor));
  if (bias) {
    const __m512 b = _mm512_loadu_ps(bias);
    a = _mm512_add_ps(a, b);
    e = _mm512_add_ps(e, _mm512_mul_ps(_mm512_set1_ps(q.bias_coef), _mm512_abs_ps(b)));
  }
  lower = _mm512_sub_ps(a, e);
  upper = _mm512_add_ps(a, e);
}
#endif

// ---- selection: the k-th largest eligible lower bound, and the rows that may reach it -----

class Selection {
 public:
  Selection(const int32_t* never, int64_t n_never, int64_t k) : never_(never), n_never_(n_never), k_(k) {
    lows_.reserve(static_cast<size_t>(std::max<int64_t>(k, 0)));
  }

  // θ so far: the k-th largest lower bound offered (−∞ until k were). It only grows.
  float threshold() const { return threshold_; }

  void offer(int32_t row, float lower, float upper) {
    if (upper < threshold_) return;
    if (std::binary_search(never_, never_ + n_never_, row)) return;
    if (static_cast<int64_t>(lows_.size()) < k_) {
      lows_.push_back(lower);
      std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
      if (static_cast<int64_t>(lows_.size()) == k_) threshold_ = lows_.front();
    } else if (lower > threshold_) {
      std::pop_heap(lows_.begin(), lows_.end(), std::greater<float>());
      lows_.back() = lower;
      std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
      threshold_ = lows_.front();
    }
    if (upper >= threshold_) candidates_.push_back({row, upper});
  }

  // Rescores every candidate that can still reach θ and writes the k best.
  int64_t finish(const float* table, const float* bias, int64_t d, const float* h, int32_t* rows, float* scores,
                 TopKStats* stats) {
    std::vector<std::pair<float, int32_t>> scored;  // (exact score, row)
    for (const Candidate& c : candidates_)
      if (c.upper >= threshold_) scored.push_back({0.0f, c.row});
#if defined(__SSE__)
    for (const auto& s : scored)  // the rows are scattered over the table: ask for them all first
      for (int64_t off = 0; off < d; off += 16)
        _mm_prefetch(reinterpret_cast<const char*>(table + s.second * d + off), _MM_HINT_T0);
#endif
    for (auto& s : scored) {
      s.first = exact_score(h, table + s.second * d, d);
      if (bias) s.first += bias[s.second];
    }
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
  struct Candidate {
    int32_t row;
    float upper;
  };
  const int32_t* never_;
  int64_t n_never_;
  int64_t k_;
  float threshold_ = -std::numeric_limits<float>::infinity();
  std::vector<float> lows_;  // min-heap of the k largest lower bounds
  std::vector<Candidate> candidates_;
};

// A chunk of L2's size: the batch's queries scan it in turn while it stays there.
constexpr int64_t kScanChunkBytes = 256 << 10;

// Offers blocks [first_block, end_block) of the table to one query's selection.
void scan_blocks(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query,
                 int64_t first_block, int64_t end_block, Selection& selection) {
  const int64_t d4 = groups_of(d), block_bytes = quantized_block_bytes(d);
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  const __m512i offset = _mm512_set1_epi32(query.offset);
  alignas(64) float lo[kLanes], hi[kLanes];
  alignas(64) float last_bias[kLanes] = {};
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * kLanes;
    const uint8_t* block = qtable + b * block_bytes;
    const int64_t lanes = std::min<int64_t>(kLanes, n - first);
    const float* block_bias = bias ? bias + first : nullptr;
    if (bias && lanes < kLanes) {
      std::copy(bias + first, bias + n, last_bias);
      block_bias = last_bias;
    }
    __m512 l, u;
    block_bounds_vnni(block_dots_vnni(block, d4, query.groups.data(), offset), block + d4 * 64, block_bias, query, l,
                      u);
    // Most blocks cannot reach θ: test all 16 at once, look closer at the lanes that can.
    __mmask16 reach = _mm512_cmp_ps_mask(u, _mm512_set1_ps(selection.threshold()), _CMP_GE_OQ) &
                      static_cast<__mmask16>((1u << lanes) - 1);
    if (!reach) continue;
    _mm512_store_ps(lo, l);
    _mm512_store_ps(hi, u);
    while (reach) {
      const int lane = __builtin_ctz(reach);
      reach &= reach - 1;
      selection.offer(static_cast<int32_t>(first + lane), lo[lane], hi[lane]);
    }
  }
#else
  int32_t dots[kLanes];
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * kLanes;
    const uint8_t* block = qtable + b * block_bytes;
    block_dots_portable(block, d4, query, dots);
    const int64_t lanes = std::min<int64_t>(kLanes, n - first);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      uint32_t meta;
      std::memcpy(&meta, block + d4 * 64 + lane * 4, sizeof meta);
      float lo, hi;
      item_bounds_portable(dots[lane], meta, bias ? bias + first + lane : nullptr, query, lo, hi);
      selection.offer(static_cast<int32_t>(first + lane), lo, hi);
    }
  }
#endif
}

}  // namespace

int64_t quantized_block_bytes(int64_t d) { return groups_of(d) * 64 + kLanes * 4; }

int64_t quantized_table_bytes(int64_t n, int64_t d) { return (n + kLanes - 1) / kLanes * quantized_block_bytes(d); }

bool quantize_table(const float* table, int64_t n, int64_t d, uint8_t* out) {
  if (d > kMaxScanDim) return false;
  const int64_t d4 = groups_of(d), block_bytes = quantized_block_bytes(d);
  const double root_d = std::sqrt(static_cast<double>(d));
  std::memset(out, 128, static_cast<size_t>(quantized_table_bytes(n, d)));
  for (int64_t i = 0; i < n; ++i) {
    const float* w = table + i * d;
    uint8_t* block = out + (i / kLanes) * block_bytes;
    const int64_t lane = i % kLanes;
    double max_abs = 0, sum_squares = 0;
    for (int64_t j = 0; j < d; ++j) {
      if (!std::isfinite(w[j])) return false;
      max_abs = std::max(max_abs, std::abs(static_cast<double>(w[j])));
      sum_squares += static_cast<double>(w[j]) * w[j];
    }
    const double norm = std::sqrt(sum_squares) * (1.0 + 1e-12);
    if (norm > kMaxScanNorm) return false;
    uint32_t meta = 0;
    if (max_abs > 0) {
      const float s = bfloat16_up(max_abs / 127.0);
      double residual_squares = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double x = static_cast<double>(w[j]) / s;
        const double q = std::clamp(std::nearbyint(x), -127.0, 127.0);
        residual_squares += (x - q) * (x - q);
        block[(j / 4) * 64 + lane * 4 + j % 4] = static_cast<uint8_t>(static_cast<int>(q) + 128);
      }
      // ν: ||w|| / (s·127√d) <= 1; ρ: ||w/s − q|| / (√d/2) <= 1 (each |w/s − q| <= 1/2).
      const uint32_t nu = fixed_point_up(norm / (static_cast<double>(s) * 127.0 * root_d));
      const uint32_t rho = fixed_point_up(std::sqrt(residual_squares) / (root_d / 2));
      uint32_t scale_bits;
      std::memcpy(&scale_bits, &s, sizeof scale_bits);
      meta = (scale_bits & 0xFFFF0000u) | nu << 8 | rho;
    }
    std::memcpy(block + d4 * 64 + lane * 4, &meta, sizeof meta);
  }
  return true;
}

bool quantize_query(const float* h, int64_t d, ScanQuery& out) {
  if (d > kMaxScanDim || flushes_denormals()) return false;
  double max_abs = 0, norm_squares = 0;
  for (int64_t j = 0; j < d; ++j) {
    if (!std::isfinite(h[j])) return false;
    max_abs = std::max(max_abs, std::abs(static_cast<double>(h[j])));
    norm_squares += static_cast<double>(h[j]) * h[j];
  }
  const double norm = std::sqrt(norm_squares) * (1.0 + 1e-12);
  if (norm > kMaxScanNorm) return false;
  const float s = max_abs > 0 ? float_up(max_abs / 127.0) : 0.0f;
  out.groups.assign(static_cast<size_t>(groups_of(d)), 0);
  double error_squares = 0, quantized_squares = 0;
  int32_t q_sum = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double q = s > 0 ? std::clamp(std::nearbyint(static_cast<double>(h[j]) / s), -127.0, 127.0) : 0.0;
    const double h_hat = q * s;  // exact in double
    error_squares += (h[j] - h_hat) * (h[j] - h_hat);
    quantized_squares += h_hat * h_hat;
    q_sum += static_cast<int32_t>(q);
    const uint32_t byte = static_cast<uint8_t>(static_cast<int8_t>(q));
    out.groups[static_cast<size_t>(j / 4)] |= static_cast<int32_t>(byte << (8 * (j % 4)));
  }
  const double error = std::sqrt(error_squares) * (1.0 + 1e-12), quantized = std::sqrt(quantized_squares) * (1.0 + 1e-12);
  // τ: four times the fp32 roundings the bound must cover, per unit of H·(||w|| + r):
  // γ_d (the exact score) + ~10u (a_i, the bias additions, e_i, l_i and u_i); see the header.
  const double dd = static_cast<double>(d);
  const double tau = 4.0 * (dd + 32.0) * kUnitRoundoff;
  const double big_h = norm + error;
  const double root_d = std::sqrt(dd);
  const double computing_e = 1.0 + 0x1p-16;  // e_i's own few fp32 roundings, relative
  out.scale = s;
  out.offset = 128 * q_sum;
  out.norm_coef = float_up((error + tau * big_h) * 127.0 * root_d / 255.0 * computing_e);
  out.residual_coef = float_up((quantized + tau * big_h) * (root_d / 2.0) / 255.0 * computing_e);
  out.bias_coef = float_up(tau * computing_e);
  // Products that underflow lose up to 2^-150 each, and a_i's scale product loses that
  // times the dot product (<= 127²·d).
  out.floor = float_up(127.0 * 127.0 * (dd + 16.0) * 0x1p-146);
  return true;
}

void quantized_dots(const uint8_t* qtable, int64_t n, int64_t d, const ScanQuery& query, int32_t* out) {
  const int64_t d4 = groups_of(d), block_bytes = quantized_block_bytes(d);
  int32_t dots[kLanes];
  for (int64_t first = 0; first < n; first += kLanes) {
    const uint8_t* block = qtable + first / kLanes * block_bytes;
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
    _mm512_storeu_si512(dots, block_dots_vnni(block, d4, query.groups.data(), _mm512_set1_epi32(query.offset)));
#else
    block_dots_portable(block, d4, query, dots);
#endif
    std::copy(dots, dots + std::min<int64_t>(kLanes, n - first), out + first);
  }
}

void scan_bounds(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query, float* lower,
                 float* upper) {
  const int64_t d4 = groups_of(d), block_bytes = quantized_block_bytes(d);
  for (int64_t first = 0; first < n; first += kLanes) {
    const uint8_t* block = qtable + first / kLanes * block_bytes;
    const int64_t lanes = std::min<int64_t>(kLanes, n - first);
    float lo[kLanes], hi[kLanes];
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
    float padded_bias[kLanes] = {};
    if (bias) std::copy(bias + first, bias + first + lanes, padded_bias);
    __m512 l, u;
    block_bounds_vnni(block_dots_vnni(block, d4, query.groups.data(), _mm512_set1_epi32(query.offset)),
                      block + d4 * 64, bias ? padded_bias : nullptr, query, l, u);
    _mm512_storeu_ps(lo, l);
    _mm512_storeu_ps(hi, u);
#else
    int32_t dots[kLanes];
    block_dots_portable(block, d4, query, dots);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      uint32_t meta;
      std::memcpy(&meta, block + d4 * 64 + lane * 4, sizeof meta);
      item_bounds_portable(dots[lane], meta, bias ? bias + first + lane : nullptr, query, lo[lane], hi[lane]);
    }
#endif
    std::copy(lo, lo + lanes, lower + first);
    std::copy(hi, hi + lanes, upper + first);
  }
}

float exact_score(const float* h, const float* w, int64_t d) {
  // One FMA per dimension in order from 0: bit for bit what a lane of kernels::panel_gemm
  // computes, so scores found here equal the full scoring product's.
  float acc = 0.0f;
  for (int64_t j = 0; j < d; ++j) acc = std::fma(h[j], w[j], acc);
  return acc;
}

void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries) {
  std::vector<ScanQuery> quantized(static_cast<size_t>(n_queries));
  std::vector<Selection> selections;
  std::vector<int64_t> active;  // queries that scan: bounded, k > 0
  selections.reserve(static_cast<size_t>(n_queries));
  for (int64_t i = 0; i < n_queries; ++i) {
    ScanTopK& q = queries[i];
    q.stats = {};
    q.found = quantize_query(q.h, d, quantized[i]) ? 0 : -1;
    selections.emplace_back(q.never, q.n_never, q.k);
    if (q.found == 0 && q.k > 0) active.push_back(i);
  }
  // The table is read in chunks that stay in L2 while every query scans them: one read from
  // memory for the whole batch.
  const int64_t block_bytes = quantized_block_bytes(d), n_blocks = (n + kLanes - 1) / kLanes;
  const int64_t chunk_blocks = std::max<int64_t>(1, kScanChunkBytes / block_bytes);
  for (int64_t first = 0; first < n_blocks; first += chunk_blocks)
    for (int64_t i : active)
      scan_blocks(qtable, n, d, bias, quantized[i], first, std::min(n_blocks, first + chunk_blocks),
                  selections[i]);
  for (int64_t i : active)
    queries[i].found = selections[i].finish(table, bias, d, queries[i].h, queries[i].rows, queries[i].scores,
                                            &queries[i].stats);
}

int64_t scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, const float* h,
                   const int32_t* never, int64_t n_never, int64_t k, int32_t* rows, float* scores, TopKStats* stats) {
  ScanTopK query;
  query.h = h;
  query.never = never;
  query.n_never = n_never;
  query.k = k;
  query.rows = rows;
  query.scores = scores;
  scan_top_k(table, bias, qtable, n, d, &query, 1);
  if (stats) *stats = query.stats;
  return query.found;
}

}  // namespace seqrec::kernels
