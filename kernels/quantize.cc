// The int8 copy of an item table and the quantized queries (kernels/quantized_scan.h): plain
// double-precision arithmetic, compiled once for every path, so the copy and each query's
// bounds are the same bits whichever path then scans them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/quantized_scan.h"

namespace seqrec::kernels {

namespace {

constexpr int64_t kLanes = kQuantizedLanes;
constexpr double kUnitRoundoff = 0x1p-24;  // fp32, round to nearest

int64_t groups_of(int64_t d) { return quantized_groups(d); }

// x rounded to the nearest integer, ties to even: what std::nearbyint gives in the default
// rounding mode, without its libm call (the baseline x86-64 this file is built for has no
// rounding instruction; the call cost more than the rest of quantizing a row). Exact for
// |x| < 2^51: adding 1.5·2^52 leaves no fraction bits, so the FPU rounds once, as nearbyint.
inline double round_even(double x) {
  constexpr double kShift = 0x1.8p52;
  volatile double shifted = x + kShift;  // volatile: the sum must be rounded, not folded away
  return shifted - kShift;
}

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

// max |v_j| and ||v||₂ of d floats (the norm rounded up, in double); false when a value is
// not finite or the norm exceeds kMaxScanNorm (no bound is computed then).
bool measure(const float* v, int64_t d, double& max_abs, double& norm) {
  max_abs = 0;
  double squares = 0;
  for (int64_t j = 0; j < d; ++j) {
    if (!std::isfinite(v[j])) return false;
    max_abs = std::max(max_abs, std::abs(static_cast<double>(v[j])));
    squares += static_cast<double>(v[j]) * v[j];
  }
  norm = std::sqrt(squares) * (1.0 + 1e-12);
  return norm <= kMaxScanNorm;
}

// Whether flush-to-zero or denormals-are-zero is on: the bounds assume gradual underflow.
bool flushes_denormals() {
#if defined(__x86_64__)
  return (_mm_getcsr() & 0x8040u) != 0;
#else
  return false;
#endif
}

}  // namespace

namespace {

// The largest |q| of a code (Q in the header).
double code_max(ScanCode code) { return code == ScanCode::int8 ? 127.0 : 7.0; }

// Writes row `lane` of a block: q[0 .. 8·d8) (zero past d) in the code's layout.
void store_row(ScanCode code, const int8_t* q, int64_t d4, uint8_t* block, int64_t lane) {
  if (code == ScanCode::int8) {
    for (int64_t g = 0; g < d4; ++g)
      for (int t = 0; t < 4; ++t) block[g * 64 + lane * 4 + t] = static_cast<uint8_t>(q[g * 4 + t] + 128);
    return;
  }
  for (int64_t p = 0; p < (d4 + 1) / 2; ++p)
    for (int t = 0; t < 4; ++t)
      block[p * 64 + lane * 4 + t] = static_cast<uint8_t>((q[p * 8 + t] + 8) | (q[p * 8 + 4 + t] + 8) << 4);
}

}  // namespace

bool quantize_table(const float* table, int64_t n, int64_t d, uint8_t* out, ScanCode code) {
  if (d > kMaxScanDim) return false;
  const int64_t d4 = groups_of(d), data_bytes = quantized_data_bytes(d, code),
                block_bytes = quantized_block_bytes(d, code);
  const double root_d = std::sqrt(static_cast<double>(d)), q_max = code_max(code);
  // The lanes past n in the last block hold q = 0 (128, or 8 in both nibbles) and metadata 0;
  // every row writes all of its own bytes, dimensions past d included.
  const int64_t n_blocks = (n + kLanes - 1) / kLanes;
  if (n % kLanes != 0) {
    uint8_t* last = out + (n_blocks - 1) * block_bytes;
    std::memset(last, code == ScanCode::int8 ? 128 : 0x88, static_cast<size_t>(data_bytes));
    std::memset(last + data_bytes, 0, kLanes * 4);
  }
  std::vector<int8_t> q(static_cast<size_t>((d4 + 1) / 2 * 8), 0);  // the row's q, zero past d
  for (int64_t i = 0; i < n; ++i) {
    const float* w = table + i * d;
    uint8_t* block = out + (i / kLanes) * block_bytes;
    const int64_t lane = i % kLanes;
    double max_abs, norm;
    if (!measure(w, d, max_abs, norm)) return false;
    uint32_t meta = 0;
    if (max_abs > 0) {
      const float s = bfloat16_up(max_abs / q_max);
      double residual_squares = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double x = static_cast<double>(w[j]) / s;
        const double r = std::clamp(round_even(x), -q_max, q_max);
        residual_squares += (x - r) * (x - r);
        q[static_cast<size_t>(j)] = static_cast<int8_t>(r);
      }
      // ν: ||w|| / (s·Q√d) <= 1; ρ: ||w/s − q|| / (√d/2) <= 1 (each |w/s − q| <= 1/2).
      const uint32_t nu = fixed_point_up(norm / (static_cast<double>(s) * q_max * root_d));
      const uint32_t rho = fixed_point_up(std::sqrt(residual_squares) / (root_d / 2));
      uint32_t scale_bits;
      std::memcpy(&scale_bits, &s, sizeof scale_bits);
      meta = (scale_bits & 0xFFFF0000u) | nu << 8 | rho;
    } else {
      std::fill(q.begin(), q.begin() + d, int8_t{0});  // a zero row: q = 0
    }
    store_row(code, q.data(), d4, block, lane);
    std::memcpy(block + data_bytes + lane * 4, &meta, sizeof meta);
  }
  return true;
}

bool quantize_query(const float* h, int64_t d, ScanQuery& out, ScanCode code) {
  if (d > kMaxScanDim || flushes_denormals()) return false;
  double max_abs, norm;
  if (!measure(h, d, max_abs, norm)) return false;
  const float s = max_abs > 0 ? float_up(max_abs / 127.0) : 0.0f;
  out.code = code;
  out.groups.assign(static_cast<size_t>((groups_of(d) + 1) / 2 * 2), 0);  // an even count: int4 reads pairs
  double error_squares = 0, quantized_squares = 0;
  int32_t q_sum = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double q = s > 0 ? std::clamp(round_even(static_cast<double>(h[j]) / s), -127.0, 127.0) : 0.0;
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
  const double q_max = code_max(code);
  out.offset = (static_cast<int32_t>(q_max) + 1) * q_sum;
  out.norm_coef = float_up((error + tau * big_h) * q_max * root_d / 255.0 * computing_e);
  out.residual_coef = float_up((quantized + tau * big_h) * (root_d / 2.0) / 255.0 * computing_e);
  out.bias_coef = float_up(tau * computing_e);
  // Products that underflow lose up to 2^-150 each, and a_i's scale product loses that
  // times the dot product (<= 127²·d, for either code).
  out.floor = float_up(127.0 * 127.0 * (dd + 16.0) * 0x1p-146);
  return true;
}

}  // namespace seqrec::kernels
