// Kernels against plain reference implementations (double precision where it matters), over
// the shapes and edge cases the engine feeds them: tiles and tails, causal and masked keys,
// a weighted first key, NaN and tied scores, skip lists.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"
#include "kernels/panel_gemm.h"
#include "kernels/relative_attention.h"
#include "kernels/topk.h"
#include "test_models.h"

namespace seqrec::kernels {
namespace {

using seqrec::testing::noise;

// softmax(scale·q·kᵀ) v with key 0 weighted, in double.
std::vector<double> reference_attention(const std::vector<float>& q, int64_t q_begin, int64_t n_q,
                                        const std::vector<float>& k, const std::vector<float>& v, int64_t n_kv,
                                        int64_t d_h, int64_t key_begin, int64_t key_end, bool causal, double w0,
                                        double scale) {
  std::vector<double> out(static_cast<size_t>(n_q * d_h), 0.0);
  for (int64_t i = 0; i < n_q; ++i) {
    int64_t begin = key_begin, end = std::min(key_end, n_kv);
    if (causal) end = std::min(end, q_begin + i + 1);
    if (begin >= end) begin = 0, end = n_kv;
    std::vector<double> s(static_cast<size_t>(n_kv));
    double max_s = -1e300;
    for (int64_t j = begin; j < end; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d_h; ++c) dot += double(q[i * d_h + c]) * k[j * d_h + c];
      s[j] = dot * scale;
      max_s = std::max(max_s, s[j]);
    }
    double sum = 0;
    for (int64_t j = begin; j < end; ++j) {
      s[j] = std::exp(s[j] - max_s) * (j == 0 ? w0 : 1.0);
      sum += s[j];
    }
    for (int64_t j = begin; j < end; ++j)
      for (int64_t c = 0; c < d_h; ++c) out[i * d_h + c] += s[j] / sum * v[j * d_h + c];
  }
  return out;
}

TEST(Attention, MatchesTheReferenceOverShapesAndMasks) {
  unsigned seed = 1;
  for (int64_t d_h : {8, 16, 25, 32, 50, 64, 96}) {
    for (int64_t n_kv : {1, 2, 7, 16, 33, 201}) {
      for (bool causal : {true, false}) {
        for (int variant = 0; variant < 3; ++variant) {
          // all queries / the last one only / every key masked (the -10000 case)
          const int64_t n_q = variant == 1 ? 1 : n_kv, q_begin = variant == 1 ? n_kv - 1 : 0;
          const int64_t key_begin = variant == 2 ? 3 : 0, key_end = variant == 2 ? 3 : n_kv;
          const float w0 = n_kv > 1 && variant != 2 ? 37.0f : 1.0f;
          auto q = noise(n_q * d_h, seed++), k = noise(n_kv * d_h, seed++), v = noise(n_kv * d_h, seed++);
          std::vector<float> out(n_q * d_h), scratch(attention_scratch_floats(n_kv, d_h));
          const float scale = 1.0f / std::sqrt(float(d_h));
          attention_head(q.data(), d_h, q_begin, n_q, k.data(), v.data(), d_h, n_kv, d_h, key_begin, key_end, causal,
                         w0, scale, out.data(), d_h, scratch.data());
          auto expected = reference_attention(q, q_begin, n_q, k, v, n_kv, d_h, key_begin, key_end, causal, w0, scale);
          double max_err = 0;
          for (size_t i = 0; i < out.size(); ++i) max_err = std::max(max_err, std::abs(out[i] - expected[i]));
          ASSERT_LT(max_err, 2e-5) << "d_h " << d_h << " n_kv " << n_kv << " causal " << causal << " variant "
                                   << variant;
        }
      }
    }
  }
}

TEST(Attention, AWeightedKeyEqualsThatManyCopies) {
  // One key weighted by P gives exactly the softmax over P identical copies of it.
  const int64_t d_h = 50, copies = 30, real = 20, n = copies + real;
  auto q = noise(real * d_h, 5), k = noise(n * d_h, 6), v = noise(n * d_h, 7);
  for (int64_t j = 1; j < copies; ++j)
    for (int64_t c = 0; c < d_h; ++c) k[j * d_h + c] = k[c], v[j * d_h + c] = v[c];
  std::vector<float> full(real * d_h), compact(real * d_h), scratch(attention_scratch_floats(n, d_h));
  const float scale = 0.1f;
  attention_head(q.data(), d_h, copies, real, k.data(), v.data(), d_h, n, d_h, 0, n, true, 1.0f, scale, full.data(),
                 d_h, scratch.data());
  // Compact: key 0 stands for all copies, then the real keys.
  std::vector<float> kc(k.begin(), k.begin() + d_h), vc(v.begin(), v.begin() + d_h);
  kc.insert(kc.end(), k.begin() + copies * d_h, k.end());
  vc.insert(vc.end(), v.begin() + copies * d_h, v.end());
  attention_head(q.data(), d_h, 1, real, kc.data(), vc.data(), d_h, real + 1, d_h, 0, real + 1, true, float(copies),
                 scale, compact.data(), d_h, scratch.data());
  for (size_t i = 0; i < full.size(); ++i) ASSERT_NEAR(full[i], compact[i], 1e-5) << i;
}

TEST(LayerNorm, MatchesDoublePrecision) {
  for (int64_t dim : {1, 15, 16, 50, 64, 257}) {
    auto x = noise(3 * dim, 11, 3.0f), gamma = noise(dim, 12), beta = noise(dim, 13);
    for (float& v : x) v += 100.0f;  // a large mean must not cost precision
    std::vector<float> y(3 * dim);
    layer_norm(x.data(), dim, 3, dim, gamma.data(), beta.data(), 1e-8f, y.data(), dim);
    for (int64_t r = 0; r < 3; ++r) {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < dim; ++i) mean += x[r * dim + i];
      mean /= dim;
      for (int64_t i = 0; i < dim; ++i) var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
      var /= dim;
      for (int64_t i = 0; i < dim; ++i) {
        const double expected = (x[r * dim + i] - mean) / std::sqrt(var + 1e-8) * gamma[i] + beta[i];
        ASSERT_NEAR(y[r * dim + i], expected, 1e-4 * (1 + std::abs(expected))) << "dim " << dim;
      }
    }
  }
}

// The k best by (score desc, index asc), NaN last, skipped never.
std::vector<int32_t> reference_top_k(const std::vector<float>& s, const std::vector<uint8_t>& skip, int64_t k) {
  std::vector<int32_t> idx;
  for (int32_t i = 0; i < static_cast<int32_t>(s.size()); ++i)
    if (skip.empty() || !skip[i]) idx.push_back(i);
  auto key = [&](int32_t i) { return std::isnan(s[i]) ? -INFINITY : s[i]; };
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
  idx.resize(std::min<size_t>(idx.size(), static_cast<size_t>(k)));
  return idx;
}

TEST(TopK, MatchesAFullSortWithTiesNanAndSkips) {
  std::mt19937 rng(3);
  for (int64_t n : {1, 5, 17, 100, 1000, 7364}) {
    for (int64_t k : {1, 3, 10, 50, 2000}) {
      std::vector<float> s(n);
      for (float& x : s) x = static_cast<float>(rng() % 50) / 7.0f;  // many exact ties
      if (n > 3) s[n / 3] = NAN;
      std::vector<uint8_t> skip(n);
      for (auto& b : skip) b = rng() % 5 == 0;
      std::vector<int32_t> got(static_cast<size_t>(std::min(k, n)));
      const int64_t found = top_k(s.data(), n, skip.data(), k, got.data());
      got.resize(found);
      ASSERT_EQ(got, reference_top_k(s, skip, k)) << "n " << n << " k " << k;
      got.assign(static_cast<size_t>(std::min(k, n)), -1);
      const int64_t found_all = top_k(s.data(), n, nullptr, k, got.data());
      got.resize(found_all);
      ASSERT_EQ(got, reference_top_k(s, {}, k)) << "n " << n << " k " << k << " no skip";
    }
  }
}

TEST(PackedLinear, MatchesAPlainProductForPaddedAndExactRows) {
  const int64_t in = 50, out = 150;
  auto w = noise(out * in, 21), b = noise(out, 22);
  for (Rows mode : {Rows::exact, Rows::padded}) {
    PackedLinear linear(w.data(), b.data(), out, in, Epilogue::relu, true, mode);
    for (int64_t rows : {1, 15, 16, 201, 1030}) {
      auto x = noise(padded_rows(rows) * in, 23 + rows);
      std::vector<float> y(padded_rows(rows) * out);
      linear.apply(x.data(), in, rows, y.data());
      for (int64_t r = 0; r < rows; r += 7)
        for (int64_t o = 0; o < out; ++o) {
          double acc = b[o];
          for (int64_t i = 0; i < in; ++i) acc += double(x[r * in + i]) * w[o * in + i];
          ASSERT_NEAR(y[r * out + o], std::max(acc, 0.0), 1e-4) << "rows " << rows;
        }
    }
  }
}

// panel_gemm (behind Rows::exact PackedLinears): every shape edge — outputs not a multiple
// of 16 or of a 4-panel tile, row counts not a multiple of 4, a row stride wider than the
// input — against double precision, with and without bias and ReLU.
TEST(PanelGemm, MatchesDoublePrecisionOverShapes) {
  unsigned seed = 40;
  for (int64_t in : {1, 7, 50, 64}) {
    for (int64_t out : {1, 15, 16, 17, 50, 64, 65, 150, 3417}) {
      for (bool with_bias : {false, true}) {
        auto w = noise(out * in, seed++), b = noise(out, seed++);
        const WeightPanels panels = pack_panels(w.data(), with_bias ? b.data() : nullptr, out, in);
        for (int64_t rows : {1, 3, 4, 5, 9}) {
          const int64_t ld_x = in + 3;
          auto x = noise(rows * ld_x, seed++);
          for (bool relu : {false, true}) {
            std::vector<float> y(rows * out, -7.0f);
            panel_gemm(panels, x.data(), ld_x, rows, relu ? Epilogue::relu : Epilogue::none, y.data());
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t o = 0; o < out; ++o) {
                double acc = with_bias ? b[o] : 0.0;
                for (int64_t i = 0; i < in; ++i) acc += double(x[r * ld_x + i]) * w[o * in + i];
                if (relu) acc = std::max(acc, 0.0);
                ASSERT_NEAR(y[r * out + o], acc, 1e-4) << "in " << in << " out " << out << " rows " << rows;
              }
          }
        }
      }
    }
  }
}

// apply_add_norm (the residual add fused into the product, then the norm) equals the three
// steps done apart, for the panel path and the oneDNN path (pack = false), with the outputs
// aliasing the residual as the encoder uses them.
TEST(PackedLinear, ApplyAddNormEqualsProductPlusResidualThenNorm) {
  const int64_t in = 50, out = 50, rows = 13;
  auto w = noise(out * in, 71), b = noise(out, 72), gamma = noise(out, 73), beta = noise(out, 74);
  const NormParams norm{gamma.data(), beta.data(), 1e-8f};
  auto x = noise(padded_rows(rows) * in, 75), residual = noise(rows * out, 76);
  for (bool pack : {true, false}) {
    PackedLinear linear(w.data(), b.data(), out, in, Epilogue::none, pack);
    std::vector<float> product(padded_rows(rows) * out), want_sum(rows * out), want_norm(rows * out);
    linear.apply(x.data(), in, rows, product.data());
    for (int64_t i = 0; i < rows * out; ++i) want_sum[i] = product[i] + residual[i];
    layer_norm(want_sum.data(), out, rows, out, gamma.data(), beta.data(), norm.eps, want_norm.data(), out);
    std::vector<float> scratch(padded_rows(rows) * out);
    // pre-LN use: the sum in place over the residual, the norm elsewhere
    std::vector<float> state = residual, normed(rows * out);
    linear.apply_add_norm(x.data(), in, rows, state.data(), state.data(), &norm, normed.data(), scratch.data());
    for (int64_t i = 0; i < rows * out; ++i) {
      ASSERT_NEAR(state[i], want_sum[i], 1e-5) << "pack " << pack;
      ASSERT_NEAR(normed[i], want_norm[i], 1e-4) << "pack " << pack;
    }
    // post-LN use: normed in place over the residual
    state = residual;
    linear.apply_add_norm(x.data(), in, rows, state.data(), nullptr, &norm, state.data(), scratch.data());
    for (int64_t i = 0; i < rows * out; ++i) ASSERT_NEAR(state[i], want_norm[i], 1e-4) << "pack " << pack;
  }
}

// Every fused activation against its double-precision definition, over a range wide
// enough to reach both saturated ends (|x| up to 12) and many points near 0.
TEST(PanelGemm, ActivationsMatchTheirDefinitions) {
  // One input column with weight 1 and no bias: y = activation(x).
  const float one = 1.0f;
  const WeightPanels identity = pack_panels(&one, nullptr, 1, 1);
  std::vector<float> x;
  for (int i = -1200; i <= 1200; ++i) x.push_back(i * 0.01f);
  for (float tiny : {1e-3f, 1e-5f, 1e-7f, 0.0f}) x.insert(x.end(), {tiny, -tiny});
  x.insert(x.end(), {40.0f, -40.0f, 90.0f, -90.0f});
  const auto phi = [](double v) { return 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))); };
  const std::pair<Epilogue, std::function<double(double)>> cases[] = {
      {Epilogue::gelu_erf, [&](double v) { return v * phi(v); }},
      {Epilogue::gelu_tanh,
       [](double v) { return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v))); }},
      {Epilogue::swish, [](double v) { return v / (1.0 + std::exp(-v)); }},
      {Epilogue::tanh, [](double v) { return std::tanh(v); }},
      {Epilogue::sigmoid, [](double v) { return 1.0 / (1.0 + std::exp(-v)); }},
      {Epilogue::relu, [](double v) { return std::max(v, 0.0); }},
  };
  for (const auto& [epilogue, want] : cases) {
    std::vector<float> y(x.size());
    panel_gemm(identity, x.data(), 1, static_cast<int64_t>(x.size()), epilogue, y.data());
    for (size_t i = 0; i < x.size(); ++i) {
      const double expected = want(x[i]);
      ASSERT_NEAR(y[i], expected, 4e-7 * std::max(1.0, std::abs(expected)))
          << "epilogue " << static_cast<int>(epilogue) << " x " << x[i];
    }
  }
}

// A row's result is bitwise the same whatever rows share its call (batch invariance).
TEST(PanelGemm, ARowDoesNotDependOnItsBatchMates) {
  const int64_t in = 50, out = 3417;
  auto w = noise(out * in, 61), b = noise(out, 62);
  const WeightPanels panels = pack_panels(w.data(), b.data(), out, in);
  auto x = noise(11 * in, 63);
  std::vector<float> all(11 * out), one(out);
  panel_gemm(panels, x.data(), in, 11, Epilogue::gelu_erf, all.data());
  for (int64_t r = 0; r < 11; ++r) {
    panel_gemm(panels, x.data() + r * in, in, 1, Epilogue::gelu_erf, one.data());
    ASSERT_TRUE(std::equal(one.begin(), one.end(), all.begin() + r * out)) << "row " << r;
  }
}

// ---- relative attentions -------------------------------------------------------------------

// TiSASRec-style: keys and values get a table row picked per (query, key) pair.
TEST(RelationAttention, MatchesTheReference) {
  unsigned seed = 300;
  for (int64_t d_h : {3, 16, 25, 50}) {
    for (int64_t n_kv : {1, 7, 40}) {
      const int64_t n_rel = 9, first_visible = n_kv / 3, n_q = n_kv - first_visible;
      auto q = noise(n_q * d_h, seed++), k = noise(n_kv * d_h, seed++), v = noise(n_kv * d_h, seed++);
      auto rk = noise(n_rel * d_h, seed++), rv = noise(n_rel * d_h, seed++);
      std::vector<int32_t> rel(static_cast<size_t>(n_q * n_kv));
      std::mt19937 rng(seed++);
      for (auto& r : rel) r = static_cast<int32_t>(rng() % n_rel);
      std::vector<float> out(n_q * d_h), scratch(relation_attention_scratch_floats(n_kv, n_rel));
      const float scale = 1.0f / std::sqrt(float(d_h));
      relation_attention_head(q.data(), d_h, n_q, k.data(), v.data(), d_h, n_kv, d_h, rk.data(), rv.data(), d_h, n_rel,
                              rel.data(), n_kv, first_visible, scale, out.data(), d_h, scratch.data());
      double max_err = 0;
      for (int64_t i = 0; i < n_q; ++i) {
        const int64_t visible = std::min(n_kv, first_visible + i + 1);
        std::vector<double> s(visible);
        double max_s = -1e300, sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          const int32_t r = rel[i * n_kv + j];
          double dot = 0;
          for (int64_t c = 0; c < d_h; ++c) dot += double(q[i * d_h + c]) * (double(k[j * d_h + c]) + rk[r * d_h + c]);
          s[j] = dot * scale;
          max_s = std::max(max_s, s[j]);
        }
        for (auto& x : s) sum += x = std::exp(x - max_s);
        for (int64_t c = 0; c < d_h; ++c) {
          double want = 0;
          for (int64_t j = 0; j < visible; ++j)
            want += s[j] / sum * (double(v[j * d_h + c]) + rv[rel[i * n_kv + j] * d_h + c]);
          max_err = std::max(max_err, std::abs(want - out[i * d_h + c]));
        }
      }
      ASSERT_LT(max_err, 2e-5) << "d_h " << d_h << " n_kv " << n_kv;
    }
  }
}

// HSTU-style: silu(q·k + bias) / divisor, causal, no softmax. Shapes cover the AVX-512 tiles
// (full and partial 8-row tiles, one query row, 1..4 blocks of values) and the generic path
// (d_v > 64); the bias past each row's causal end holds NaN, which must never be read.
TEST(SiluAttention, MatchesTheReference) {
  unsigned seed = 400;
  for (int64_t d_qk : {3, 25, 32}) {
    for (int64_t d_v : {5, 25, 32, 50, 70}) {
      for (int64_t n : {1, 9, 33, 70}) {
        for (int64_t first_visible : {int64_t{0}, n / 2, n - 1}) {
          const int64_t n_q = n - first_visible;
          auto q = noise(n_q * d_qk, seed++), k = noise(n * d_qk, seed++), v = noise(n * d_v, seed++);
          auto bias = noise(n_q * n, seed++, 0.5f);
          for (int64_t i = 0; i < n_q; ++i)
            for (int64_t j = first_visible + i + 1; j < n; ++j) bias[i * n + j] = std::nanf("");
          std::vector<float> out(n_q * d_v), scratch(silu_attention_scratch_floats(n, d_qk));
          const float divisor = 211.0f;
          silu_attention_head(q.data(), d_qk, n_q, k.data(), d_qk, v.data(), d_v, n, d_qk, d_v, bias.data(), n,
                              first_visible, divisor, out.data(), d_v, scratch.data());
          double max_err = 0;
          for (int64_t i = 0; i < n_q; ++i)
            for (int64_t c = 0; c < d_v; ++c) {
              double want = 0;
              for (int64_t j = 0; j <= first_visible + i; ++j) {
                double x = bias[i * n + j];
                for (int64_t t = 0; t < d_qk; ++t) x += double(q[i * d_qk + t]) * k[j * d_qk + t];
                want += x / (1 + std::exp(-x)) / divisor * v[j * d_v + c];
              }
              max_err = std::max(max_err, std::abs(want - out[i * d_v + c]));
            }
          ASSERT_LT(max_err, 1e-6) << d_qk << " " << d_v << " " << n << " " << first_visible;
        }
      }
    }
  }
}

// Large scores: silu saturates to x (x >> 0) and to -0 (x << 0) without inf or NaN.
TEST(SiluAttention, LargeScoresStayFinite) {
  const int64_t n = 20, d = 4;
  std::vector<float> q(n * d, 0.0f), k(n * d, 0.0f), v(n * d, 1.0f), bias(n * n), out(n * d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) bias[i * n + j] = (i + j) % 2 ? 300.0f : -300.0f;
  std::vector<float> scratch(silu_attention_scratch_floats(n, d));
  silu_attention_head(q.data(), d, n, k.data(), d, v.data(), d, n, d, d, bias.data(), n, 0, 2.0f, out.data(), d,
                      scratch.data());
  for (int64_t i = 0; i < n; ++i) {
    float want = 0;
    for (int64_t j = 0; j <= i; ++j) want += (i + j) % 2 ? 150.0f : 0.0f;
    for (int64_t c = 0; c < d; ++c) ASSERT_FLOAT_EQ(out[i * d + c], want) << i;
  }
}

TEST(OffsetIndexBias, PicksBothTables) {
  const int64_t n = 37, offset_len = 2 * n - 1;
  auto by_offset = noise(offset_len, 450), by_index = noise(129, 451);
  std::vector<int32_t> index(n * n);
  for (int64_t t = 0; t < n * n; ++t) index[t] = static_cast<int32_t>((t * 7919) % 129);
  for (int64_t first_visible : {int64_t{0}, int64_t{5}, n - 1}) {
    const int64_t n_q = n - first_visible;
    std::vector<float> out(n_q * n, -1.0f);
    // Query i is absolute row first_visible + i: offset = n − 1 − first_visible (HSTU's p[N−1−(i−j)]).
    offset_index_bias(by_offset.data(), n - 1 - first_visible, by_index.data(), index.data() + first_visible * n, n,
                      n_q, first_visible, out.data(), n);
    for (int64_t i = 0; i < n_q; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t row = first_visible + i;
        const float want = j <= row ? by_offset[n - 1 - row + j] + by_index[index[row * n + j]] : -1.0f;
        ASSERT_EQ(out[i * n + j], want) << first_visible << " " << i << " " << j;
      }
  }
}

TEST(LayerNorm, NullParametersMeanNoAffine) {
  auto x = noise(3 * 70, 500);
  for (int64_t dim : {8, 50, 70}) {
    std::vector<float> with(3 * dim), without(3 * dim), ones(dim, 1.0f), zeros(dim, 0.0f);
    layer_norm(x.data(), dim, 3, dim, ones.data(), zeros.data(), 1e-6f, with.data(), dim);
    layer_norm(x.data(), dim, 3, dim, nullptr, nullptr, 1e-6f, without.data(), dim);
    EXPECT_EQ(with, without) << dim;
  }
}

}  // namespace
}  // namespace seqrec::kernels
