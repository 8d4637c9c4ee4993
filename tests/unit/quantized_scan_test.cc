// The int8 and int4 pre-scans (kernels/quantized_scan.h): their layouts and integer dot
// products against a scalar reference, their bounds against exact scores on random and hostile
// tables, and their top-k against a full exact scan; then the engine end to end: a Recommender
// whose model has the pre-scan answers as one scoring every row in full.
#include "kernels/cpu_isa.h"
#include "kernels/quantized_scan.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "engine/recommender.h"
#include "engine/tensor.h"
#include "kernels/panel_gemm.h"
#include "test_models.h"

namespace seqrec::kernels {
namespace {

using Bytes = std::vector<uint8_t, AlignedAllocator<uint8_t>>;

using seqrec::testing::noise;

Bytes quantize(const std::vector<float>& table, int64_t n, int64_t d, ScanCode code) {
  Bytes q(static_cast<size_t>(quantized_table_bytes(n, d, code)));
  EXPECT_TRUE(quantize_table(table.data(), n, d, q.data(), code));
  return q;
}

// Decodes item i of the documented layout: its q (d values) and scale.
std::vector<int> decode_item(const Bytes& q, int64_t d, int64_t i, ScanCode code, float* scale) {
  const int64_t d4 = (d + 3) / 4, d8 = (d4 + 1) / 2;
  const uint8_t* block = q.data() + (i / 16) * quantized_block_bytes(d, code);
  const int64_t lane = i % 16;
  std::vector<int> out(static_cast<size_t>(d));
  const int64_t stored_dims = code == ScanCode::int8 ? 4 * d4 : 8 * d8;
  for (int64_t j = 0; j < stored_dims; ++j) {
    int value;
    if (code == ScanCode::int8) {
      value = static_cast<int>(block[(j / 4) * 64 + lane * 4 + j % 4]) - 128;
    } else {  // pair j / 8; the low nibble holds dimensions 8p .. 8p + 3, the high one the next four
      const uint8_t byte = block[(j / 8) * 64 + lane * 4 + j % 4];
      value = static_cast<int>(j % 8 < 4 ? byte & 0x0F : byte >> 4) - 8;
    }
    if (j < d)
      out[static_cast<size_t>(j)] = value;
    else
      EXPECT_EQ(value, 0) << "padding dimension " << j;
  }
  uint32_t meta;
  std::memcpy(&meta, block + quantized_data_bytes(d, code) + lane * 4, sizeof meta);
  const uint32_t bits = meta & 0xFFFF0000u;
  std::memcpy(scale, &bits, sizeof bits);
  return out;
}

// The exact score as documented (kernels/multiply_add.h): in order of j, one fused rounding
// per term on the paths with FMA, a product and a sum on the portable one.
float reference_exact_score(const float* h, const float* w, int64_t d) {
  const bool fused = cpu_isa() >= CpuIsa::avx2;
  float acc = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    if (fused) {
      acc = std::fma(h[j], w[j], acc);
    } else {
      volatile float product = h[j] * w[j];  // rounded on its own, never contracted
      acc = acc + product;
    }
  }
  return acc;
}

struct Ranked {
  std::vector<int32_t> rows;
  std::vector<float> scores;
};

// The full scan: every eligible row scored exactly, ranked by score, ties by row.
Ranked full_scan(const std::vector<float>& table, const float* bias, int64_t n, int64_t d, const float* h,
                 const std::vector<int32_t>& never, int64_t k) {
  std::vector<std::pair<float, int32_t>> all;
  for (int64_t i = 0; i < n; ++i) {
    if (std::binary_search(never.begin(), never.end(), static_cast<int32_t>(i))) continue;
    float s = reference_exact_score(h, table.data() + i * d, d);
    if (bias) s += bias[i];
    all.push_back({s, static_cast<int32_t>(i)});
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  Ranked out;
  for (size_t i = 0; i < all.size() && static_cast<int64_t>(i) < k; ++i) {
    out.rows.push_back(all[i].second);
    out.scores.push_back(all[i].first);
  }
  return out;
}

Ranked scan(const std::vector<float>& table, const float* bias, const Bytes& q, int64_t n, int64_t d, const float* h,
            const std::vector<int32_t>& never, int64_t k, ScanCode code, TopKStats* stats = nullptr) {
  Ranked out;
  out.rows.resize(static_cast<size_t>(std::max<int64_t>(k, 0)));
  out.scores.resize(out.rows.size());
  const int64_t found = scan_top_k(table.data(), bias, q.data(), n, d, h, never.data(),
                                   static_cast<int64_t>(never.size()), k, out.rows.data(), out.scores.data(), stats,
                                   code);
  EXPECT_GE(found, 0);
  out.rows.resize(static_cast<size_t>(std::max<int64_t>(found, 0)));
  out.scores.resize(out.rows.size());
  return out;
}

void expect_same(const Ranked& got, const Ranked& want, const std::string& what) {
  ASSERT_EQ(got.rows.size(), want.rows.size()) << what;
  for (size_t i = 0; i < want.rows.size(); ++i) {
    ASSERT_EQ(got.rows[i], want.rows[i]) << what << ", rank " << i;
    ASSERT_EQ(got.scores[i], want.scores[i]) << what << ", rank " << i;  // the same fp32 rescoring, bit for bit
  }
}

// Checks l_i <= exact_i <= u_i for every row of `table` and every query.
void expect_bounds_hold(const std::vector<float>& table, const std::vector<float>* bias, int64_t n, int64_t d,
                        const std::vector<std::vector<float>>& queries, ScanCode code, const std::string& what) {
  const Bytes q = quantize(table, n, d, code);
  std::vector<float> lower(static_cast<size_t>(n)), upper(static_cast<size_t>(n));
  for (size_t qi = 0; qi < queries.size(); ++qi) {
    ScanQuery query;
    ASSERT_TRUE(quantize_query(queries[qi].data(), d, query, code)) << what;
    scan_bounds(q.data(), n, d, bias ? bias->data() : nullptr, query, lower.data(), upper.data());
    for (int64_t i = 0; i < n; ++i) {
      float exact = exact_score(queries[qi].data(), table.data() + i * d, d);
      if (bias) exact += (*bias)[static_cast<size_t>(i)];
      ASSERT_LE(lower[i], exact) << what << ": query " << qi << ", row " << i;
      ASSERT_GE(upper[i], exact) << what << ": query " << qi << ", row " << i;
    }
  }
}

// Each test runs on both codes of the table.
class QuantizedScan : public ::testing::TestWithParam<ScanCode> {
 protected:
  ScanCode code() const { return GetParam(); }
  int q_max() const { return code() == ScanCode::int8 ? 127 : 7; }
  Bytes quantize(const std::vector<float>& table, int64_t n, int64_t d) const {
    return kernels::quantize(table, n, d, code());
  }
  Ranked scan(const std::vector<float>& table, const float* bias, const Bytes& q, int64_t n, int64_t d, const float* h,
              const std::vector<int32_t>& never, int64_t k, TopKStats* stats = nullptr) const {
    return kernels::scan(table, bias, q, n, d, h, never, k, code(), stats);
  }
  void expect_bounds_hold(const std::vector<float>& table, const std::vector<float>* bias, int64_t n, int64_t d,
                          const std::vector<std::vector<float>>& queries, const std::string& what) const {
    kernels::expect_bounds_hold(table, bias, n, d, queries, code(), what);
  }
  void a_batch_answers_each_query_as_alone(int64_t n, int64_t d) const;
};

INSTANTIATE_TEST_SUITE_P(Codes, QuantizedScan, ::testing::Values(ScanCode::int8, ScanCode::int4),
                         [](const ::testing::TestParamInfo<ScanCode>& info) {
                           return info.param == ScanCode::int8 ? std::string("int8") : std::string("int4");
                         });

TEST_P(QuantizedScan, LayoutAndIntegerDotsMatchAScalarReference) {
  unsigned seed = 1;
  for (int64_t d : {1, 3, 4, 5, 8, 9, 16, 50, 63, 64, 65, 100}) {
    for (int64_t n : {1, 15, 16, 17, 100}) {
      const std::vector<float> table = noise(static_cast<size_t>(n * d), seed++, 0.05f);
      const Bytes q = quantize(table, n, d);
      const std::vector<float> h = noise(static_cast<size_t>(d), seed++, 2.0f);
      ScanQuery query;
      ASSERT_TRUE(quantize_query(h.data(), d, query, code()));
      EXPECT_EQ(query.code, code());
      // The query's documented form: ĥ = scale · q_h, each within half a step of h.
      std::vector<int> q_h(static_cast<size_t>(d));
      int32_t q_sum = 0;
      for (int64_t j = 0; j < d; ++j) {
        q_h[j] = static_cast<int8_t>(static_cast<uint32_t>(query.groups[j / 4]) >> (8 * (j % 4)));
        q_sum += q_h[j];
        EXPECT_LE(std::abs(h[j] - query.scale * q_h[j]), query.scale * 0.5001f);
      }
      EXPECT_EQ(query.offset, (q_max() + 1) * q_sum);
      std::vector<int32_t> dots(static_cast<size_t>(n));
      quantized_dots(q.data(), n, d, query, dots.data());
      for (int64_t i = 0; i < n; ++i) {
        float s = 0;
        const std::vector<int> q_i = decode_item(q, d, i, code(), &s);
        double max_abs = 0;
        for (int64_t j = 0; j < d; ++j) max_abs = std::max(max_abs, std::abs(double(table[i * d + j])));
        EXPECT_GE(double(s) * q_max(), max_abs);
        int32_t want = 0;
        for (int64_t j = 0; j < d; ++j) {
          EXPECT_LE(std::abs(q_i[j]), q_max());
          EXPECT_LE(std::abs(double(table[i * d + j]) - double(s) * q_i[j]), double(s) * 0.5000001);
          want += q_h[j] * q_i[j];
        }
        ASSERT_EQ(dots[i], want) << "d " << d << ", n " << n << ", item " << i;
      }
    }
  }
}

// The documented order, and the same bits as the scoring product (panel_gemm) gives the row:
// the pre-scan and the full product are interchangeable per batch.
TEST(QuantizedScan, ExactScoreEqualsTheScoringProductBitForBit) {
  unsigned seed = 100;
  for (int64_t d : {1, 7, 16, 17, 50, 64, 65, 129}) {
    const int64_t n = 37;
    const std::vector<float> table = noise(static_cast<size_t>(n * d), seed++), bias = noise(static_cast<size_t>(n), seed++);
    const WeightPanels panels = pack_panels(table.data(), bias.data(), n, d);
    for (int rep = 0; rep < 20; ++rep) {
      const std::vector<float> h = noise(static_cast<size_t>(d), seed++);
      std::vector<float> product(static_cast<size_t>(n));
      panel_gemm(panels, h.data(), d, 1, Epilogue::none, product.data());
      for (int64_t i = 0; i < n; ++i) {
        const float score = exact_score(h.data(), table.data() + i * d, d);
        ASSERT_EQ(score, reference_exact_score(h.data(), table.data() + i * d, d)) << "d " << d;
        ASSERT_EQ(score + bias[static_cast<size_t>(i)], product[static_cast<size_t>(i)]) << "d " << d << " row " << i;
      }
    }
  }
}

TEST_P(QuantizedScan, BoundsHoldOnRandomTables) {
  unsigned seed = 200;
  for (int64_t d : {1, 2, 50, 64, 65}) {
    const int64_t n = 300;
    const std::vector<float> table = noise(static_cast<size_t>(n * d), seed++, 0.1f);
    std::vector<float> bias = noise(static_cast<size_t>(n), seed++, 0.5f);
    std::vector<std::vector<float>> queries;
    for (int i = 0; i < 20; ++i) queries.push_back(noise(static_cast<size_t>(d), seed++, 3.0f));
    // Queries equal to rows (the largest scores) and their negatives.
    for (int64_t i : {0, 17, 299}) {
      queries.emplace_back(table.begin() + i * d, table.begin() + (i + 1) * d);
      queries.push_back(queries.back());
      for (float& x : queries.back()) x = -x;
    }
    expect_bounds_hold(table, nullptr, n, d, queries, "random d " + std::to_string(d));
    expect_bounds_hold(table, &bias, n, d, queries, "random with bias, d " + std::to_string(d));
  }
}

TEST_P(QuantizedScan, BoundsHoldOnHostileTables) {
  unsigned seed = 300;
  for (int64_t d : {1, 50, 64, 65}) {
    const int64_t n = 200;
    std::vector<float> table = noise(static_cast<size_t>(n * d), seed++, 1.0f);
    std::mt19937 rng(seed++);
    for (int64_t i = 0; i < n; ++i) {
      float* w = table.data() + i * d;
      switch (i % 10) {
        case 0: std::fill(w, w + d, 0.0f); break;                       // all zero
        case 1: for (int64_t j = 0; j < d; ++j) w[j] *= 1e15f; break;   // huge norm (kMaxScanNorm is 2^60)
        case 2: for (int64_t j = 0; j < d; ++j) w[j] *= 1e-30f; break;  // tiny norm
        case 3: for (int64_t j = 0; j < d; ++j) w[j] *= 1e-41f; break;  // denormal values
        case 4: w[rng() % d] = 1e4f; break;                             // one positive outlier
        case 5: w[rng() % d] = -1e4f; break;                            // one negative outlier
        case 6: std::fill(w, w + d, 0.0f); w[rng() % d] = -3.0f; break;  // one value, the rest zero
        case 7: for (int64_t j = 0; j < d; ++j) w[j] = (j % 2 ? 1.0f : -1.0f) * 0.7f; break;  // all at the scale
        case 8: for (int64_t j = 0; j < d; ++j) w[j] = std::nextafter(1.0f, 2.0f) * (j + 1); break;
        default: break;
      }
    }
    std::vector<float> bias = noise(static_cast<size_t>(n), seed++, 100.0f);
    bias[3] = 1e20f;
    bias[4] = -1e-30f;
    std::vector<std::vector<float>> queries;
    for (float scale : {1.0f, 1e-20f, 1e15f, 1e-40f}) queries.push_back(noise(static_cast<size_t>(d), seed++, scale));
    queries.push_back(std::vector<float>(static_cast<size_t>(d), 0.0f));  // the zero query
    std::vector<float> outlier(static_cast<size_t>(d), 1e-3f);
    outlier[0] = -1e3f;
    queries.push_back(outlier);
    for (int64_t i : {4, 5, 8, 11}) queries.emplace_back(table.begin() + i * d, table.begin() + (i + 1) * d);
    expect_bounds_hold(table, nullptr, n, d, queries, "hostile d " + std::to_string(d));
    expect_bounds_hold(table, &bias, n, d, queries, "hostile with bias, d " + std::to_string(d));
  }
}

TEST_P(QuantizedScan, RefusesWhatItCannotBound) {
  std::vector<float> table(64, 1.0f);
  Bytes q(static_cast<size_t>(quantized_table_bytes(2, 32, code())));
  table[5] = NAN;
  EXPECT_FALSE(quantize_table(table.data(), 2, 32, q.data(), code()));
  table[5] = 3e38f;  // finite, but the row's norm is beyond kMaxScanNorm
  EXPECT_FALSE(quantize_table(table.data(), 2, 32, q.data(), code()));
  std::vector<float> h(32, 1.0f);
  ScanQuery query;
  h[3] = INFINITY;
  EXPECT_FALSE(quantize_query(h.data(), 32, query, code()));
  h[3] = 1e30f;
  EXPECT_FALSE(quantize_query(h.data(), 32, query, code()));
  int32_t rows[1];
  float scores[1];
  EXPECT_EQ(scan_top_k(table.data(), nullptr, q.data(), 2, 32, h.data(), nullptr, 0, 1, rows, scores, nullptr, code()),
            -1);
}

TEST_P(QuantizedScan, TopKEqualsTheFullScan) {
  unsigned seed = 400;
  for (int64_t d : {1, 50, 64, 65}) {
    const int64_t n = 5000;
    const std::vector<float> table = noise(static_cast<size_t>(n * d), seed++, 0.1f);
    const std::vector<float> bias = noise(static_cast<size_t>(n), seed++, 0.3f);
    const Bytes q = quantize(table, n, d);
    std::mt19937 rng(seed++);
    for (int rep = 0; rep < 30; ++rep) {
      const std::vector<float> h = noise(static_cast<size_t>(d), seed++, 2.0f);
      std::vector<int32_t> never{0};
      for (int i = 0; i < rep * 7; ++i) never.push_back(static_cast<int32_t>(1 + rng() % (n - 1)));
      // The rows a full scan ranks first are the ones exclusion tests need.
      const Ranked best = full_scan(table, nullptr, n, d, h.data(), {}, 5);
      if (rep % 3 == 1) never.insert(never.end(), best.rows.begin(), best.rows.end());
      std::sort(never.begin(), never.end());
      never.erase(std::unique(never.begin(), never.end()), never.end());
      for (int64_t k : {int64_t{1}, int64_t{10}, int64_t{100}}) {
        const std::string what = "d " + std::to_string(d) + ", rep " + std::to_string(rep) + ", k " + std::to_string(k);
        expect_same(scan(table, nullptr, q, n, d, h.data(), never, k), full_scan(table, nullptr, n, d, h.data(), never, k),
                    what);
        expect_same(scan(table, bias.data(), q, n, d, h.data(), never, k),
                    full_scan(table, bias.data(), n, d, h.data(), never, k), what + ", bias");
      }
    }
  }
}

TEST_P(QuantizedScan, TopKWithKNearOrBeyondTheEligibleRows) {
  const int64_t n = 70, d = 64;
  const std::vector<float> table = noise(static_cast<size_t>(n * d), 500, 0.1f);
  const Bytes q = quantize(table, n, d);
  const std::vector<float> h = noise(static_cast<size_t>(d), 501);
  const std::vector<int32_t> never{0, 3, 40, 69};
  for (int64_t k : {int64_t{0}, int64_t{64}, int64_t{65}, int64_t{66}, int64_t{70}, int64_t{1000}}) {
    const Ranked got = scan(table, nullptr, q, n, d, h.data(), never, k);
    expect_same(got, full_scan(table, nullptr, n, d, h.data(), never, k), "k " + std::to_string(k));
    EXPECT_EQ(static_cast<int64_t>(got.rows.size()), std::min<int64_t>(k, n - 4));
  }
  // Every row excluded.
  std::vector<int32_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_TRUE(scan(table, nullptr, q, n, d, h.data(), all, 5).rows.empty());
}

// Duplicate rows score exactly alike: catalog order decides, across blocks too.
TEST_P(QuantizedScan, TiesGoToTheLowerRow) {
  const int64_t n = 1000, d = 50;
  std::vector<float> table = noise(static_cast<size_t>(n * d), 600, 0.1f);
  const std::vector<float> h = noise(static_cast<size_t>(d), 601);
  const int64_t best = full_scan(table, nullptr, n, d, h.data(), {}, 1).rows[0];
  for (int64_t copy : {3, 15, 16, 500, 999})
    std::copy(table.begin() + best * d, table.begin() + (best + 1) * d, table.begin() + copy * d);
  const Bytes q = quantize(table, n, d);
  for (int64_t k : {1, 3, 6, 10}) {
    const Ranked got = scan(table, nullptr, q, n, d, h.data(), {}, k);
    expect_same(got, full_scan(table, nullptr, n, d, h.data(), {}, k), "k " + std::to_string(k));
  }
  EXPECT_EQ(scan(table, nullptr, q, n, d, h.data(), {}, 1).rows[0], 3);
  // A table of one repeated row: every score ties, rows come in order.
  std::vector<float> same(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i) std::copy(h.begin(), h.end(), same.begin() + i * d);
  const Bytes q_same = quantize(same, n, d);
  const Ranked got = scan(same, nullptr, q_same, n, d, h.data(), {0}, 20);
  expect_same(got, full_scan(same, nullptr, n, d, h.data(), {0}, 20), "one repeated row");
  EXPECT_EQ(got.rows.front(), 1);
  EXPECT_EQ(got.rows.back(), 20);
}

// A batch's queries share the reads of the table; each gets what it gets alone. A query that
// cannot be bounded says so, and the others are not disturbed. Tables: an even and an odd
// number of four-dimension groups (a full group of eight queries takes its own loop), an odd
// number of blocks with a partial last one, a single partial group, and more groups than that
// loop takes (d > 4096: the general loop).
void QuantizedScan::a_batch_answers_each_query_as_alone(int64_t n, int64_t d) const {
  const std::vector<float> table = noise(static_cast<size_t>(n * d), 650, 0.1f);
  const std::vector<float> bias = noise(static_cast<size_t>(n), 651, 0.3f);
  const Bytes q = quantize(table, n, d);
  const int64_t batch = 13;  // a group of eight queries and one of five
  std::vector<float> hidden = noise(static_cast<size_t>(batch * d), 652, 2.0f);
  hidden[4 * d + d - 1] = NAN;  // query 4 cannot be bounded
  std::vector<std::vector<int32_t>> never(batch), rows(batch);
  std::vector<std::vector<float>> scores(batch);
  std::vector<ScanTopK> queries(batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int32_t r = 0; r < 50 * b; r += 7) never[b].push_back(r);
    const int64_t k = b == 6 ? 0 : 1 + 13 * b;
    rows[b].resize(k);
    scores[b].resize(k);
    queries[b].h = hidden.data() + b * d;
    queries[b].never = never[b].data();
    queries[b].n_never = static_cast<int64_t>(never[b].size());
    queries[b].k = k;
    queries[b].rows = rows[b].data();
    queries[b].scores = scores[b].data();
  }
  scan_top_k(table.data(), bias.data(), q.data(), n, d, queries.data(), batch, code());
  for (int64_t b = 0; b < batch; ++b) {
    if (b == 4) {
      EXPECT_EQ(queries[b].found, -1);
      continue;
    }
    ASSERT_EQ(queries[b].found, static_cast<int64_t>(rows[b].size())) << "query " << b;
    const Ranked got{rows[b], scores[b]};
    expect_same(got, scan(table, bias.data(), q, n, d, queries[b].h, never[b], queries[b].k), "query " + std::to_string(b));
    expect_same(got, full_scan(table, bias.data(), n, d, queries[b].h, never[b], queries[b].k),
                "query " + std::to_string(b));
  }
}

TEST_P(QuantizedScan, ABatchAnswersEachQueryAsAlone) {
  for (const auto& [n, d] : {std::pair<int64_t, int64_t>{20000, 64}, {4001, 64}, {20000, 50}, {5000, 3}, {600, 4100}}) {
    SCOPED_TRACE("n " + std::to_string(n) + ", d " + std::to_string(d));
    a_batch_answers_each_query_as_alone(n, d);
  }
}

// The point of the scan: on a table like a trained one, only a sliver is rescored (int8: under
// 1%; int4, whose bounds are wider: under 10% here, a share that falls as the catalog grows).
TEST_P(QuantizedScan, RescoresFewRows) {
  const int64_t n = 50000, d = 64;
  const std::vector<float> table = noise(static_cast<size_t>(n * d), 700, 0.02f);
  const Bytes q = quantize(table, n, d);
  int64_t worst = 0;
  for (unsigned s = 0; s < 10; ++s) {
    const std::vector<float> h = noise(static_cast<size_t>(d), 701 + s, 1.0f);
    TopKStats stats;
    scan(table, nullptr, q, n, d, h.data(), {0}, 10, &stats);
    worst = std::max(worst, stats.rescored);
  }
  EXPECT_LT(worst, code() == ScanCode::int8 ? n / 100 : n / 10) << "rows rescored out of " << n;
}

}  // namespace
}  // namespace seqrec::kernels

namespace seqrec {
namespace {

using testing::offset_ids;

// BERT4Rec (RecBole >= 1.2): bidirectional, [MASK] read-out, head and per-item output bias.
ModelSpec bert4rec_spec(int64_t n_items, int64_t d) {
  ModelSpec s = testing::small_spec(n_items, 8, d, 2);
  s.blocks.attention = AttentionKind::bidirectional;
  s.blocks.mask_padded_keys = true;
  s.input.padding = Padding::right;
  s.input.positions = Positions::slot_index;
  s.readout.slot = Readout::mask_token_drop_first;
  s.blocks.activation = Activation::gelu;
  s.input.embed_scale = false;
  s.input.embed_norm = true;
  s.readout.final_norm = false;
  s.readout.head = true;
  s.scorer.output_bias = true;
  return s;
}

// Requests of every kind the pre-scan path must answer as the full one: short and long
// histories, seen items filtered or not, exclusions (of the best rows too), k from 1 to
// beyond the catalog, candidate lists with unknown ids.
std::vector<Request> request_mix(int64_t n_items, unsigned seed) {
  std::mt19937 rng(seed);
  auto id = [&] { return std::to_string(100 + rng() % (n_items - 1)); };
  std::vector<Request> out;
  for (int i = 0; i < 40; ++i) {
    Request r;
    const int len = 1 + static_cast<int>(rng() % 20);
    for (int j = 0; j < len; ++j) r.interactions.push_back({id(), j, std::nullopt});
    r.k = std::vector<int64_t>{1, 10, 10, 100, n_items + 5}[i % 5];
    r.recommend_seen = i % 3 == 0;
    if (i % 4 == 1)
      for (int j = 0; j < 30; ++j) r.exclude_ids.push_back(id());
    if (i % 7 == 6) {
      r.candidate_ids.emplace();
      for (int j = 0; j < 50; ++j) r.candidate_ids->push_back(id());
      r.candidate_ids->push_back("not-an-item");
    }
    out.push_back(std::move(r));
  }
  return out;
}

Response one(const Recommender& rec, const Request& r) {
  Workspace ws;
  return rec.recommend({&r, 1}, ws).front();
}

// Same rows, scores equal within `tolerance`; with tolerance 0, bit for bit. Two rows whose
// reference scores tie within the tolerance may come in either order (two fp32 evaluations
// may round them either way); at the last rank, either may make it into the list.
void expect_same_answers(const Response& got, const Response& want, double tolerance, const std::string& what) {
  ASSERT_EQ(got.recommendations.size(), want.recommendations.size()) << what;
  std::map<std::string, float> want_score;
  for (const ScoredItem& w : want.recommendations) want_score[w.id] = w.score;
  for (size_t j = 0; j < want.recommendations.size(); ++j) {
    const ScoredItem &g = got.recommendations[j], &w = want.recommendations[j];
    if (tolerance == 0) {
      ASSERT_EQ(g.id, w.id) << what << ", rank " << j;
      ASSERT_EQ(g.score, w.score) << what << ", rank " << j;
      continue;
    }
    ASSERT_NEAR(g.score, w.score, tolerance) << what << ", rank " << j;
    if (g.id == w.id) continue;
    // A near tie: the row got here has a reference score within the tolerance of this rank's.
    const auto it = want_score.find(g.id);
    const float reference = it != want_score.end() ? it->second : g.score;
    ASSERT_TRUE(it != want_score.end() || j + 1 == want.recommendations.size()) << what << ", rank " << j;
    ASSERT_NEAR(reference, w.score, 2 * tolerance) << what << ", rank " << j << ": " << g.id << " for " << w.id;
  }
  EXPECT_EQ(got.message, want.message) << what;
}

// How far two fp32 evaluations of one request's logits may differ: each is within
// γ_d·||h||·||w|| (+ the bias addition's rounding) of the real value, whatever its order of
// summation. (Relative to the score itself there is no such bound: a score near 0 can be the
// difference of large terms.) Sigmoid's slope is at most 1/4, so this covers it too.
double rounding_tolerance(const Recommender& rec, const WeightMap& weights, const Request& r) {
  const ModelSpec& spec = rec.model().spec();
  const PreparedRequest prepared = testing::prepared_for(rec, r);
  Workspace ws;
  const SequenceInput input = testing::input_of(prepared);
  const float* h = rec.model().encode({&input, 1}, ws);
  double h_norm = 0, max_w_norm = 0, max_bias = 0;
  for (int64_t j = 0; j < spec.d; ++j) h_norm += double(h[j]) * h[j];
  const float* table = weights.at("embedding/item/weight").ptr();
  for (int64_t i = 0; i < spec.n_items; ++i) {
    double w_norm = 0;
    for (int64_t j = 0; j < spec.d; ++j) w_norm += double(table[i * spec.d + j]) * table[i * spec.d + j];
    max_w_norm = std::max(max_w_norm, w_norm);
  }
  if (spec.scorer.output_bias)
    for (int64_t i = 0; i < spec.n_items; ++i)
      max_bias = std::max(max_bias, std::abs(double(weights.at("output/bias").ptr()[i])));
  return 2.0 * (spec.d + 2) * 0x1p-24 * (std::sqrt(h_norm) * std::sqrt(max_w_norm) + max_bias);
}

void expect_pre_scan_answers_as_full_scan(const ModelSpec& spec, const std::string& name) {
  const WeightMap weights = testing::random_weights(spec);
  const Recommender full(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::never);
  const Recommender scan(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::always);
  ASSERT_FALSE(full.model().scorer().has_pre_scan());
  ASSERT_TRUE(scan.model().scorer().has_pre_scan());
  ASSERT_TRUE(scan.model().scorer().has_int4_pre_scan());  // batch 1 scans it, larger batches the int8 copy
  const std::vector<Request> requests = request_mix(spec.n_items, 11);
  // The same requests in one large batch (one pre-scan for all).
  std::vector<Request> large_batch;
  for (int copies = 0; copies < 4; ++copies) large_batch.insert(large_batch.end(), requests.begin(), requests.end());
  Workspace ws;
  const std::vector<Response> batched = scan.recommend(large_batch, ws);
  double worst = 0;  // the largest score difference seen, in units of the tolerance
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string what = name + ", request " + std::to_string(i);
    const Response alone = one(scan, requests[i]);  // batch 1: the pre-scan path
    const Response reference = one(full, requests[i]);
    const double tolerance = rounding_tolerance(scan, weights, requests[i]);
    expect_same_answers(alone, reference, tolerance, what);
    expect_same_answers(batched[i], alone, 0, what + " (batched)");  // whatever the batch, bit for bit
    for (size_t j = 0; j < alone.recommendations.size() && j < reference.recommendations.size(); ++j)
      worst = std::max(worst, std::abs(alone.recommendations[j].score - reference.recommendations[j].score) / tolerance);
  }
  ::testing::Test::RecordProperty(name + " worst difference / tolerance", std::to_string(worst));
}

TEST(PreScanRecommender, SasrecAnswersAsTheFullScan) {
  ModelSpec spec = testing::small_spec(3000, 10, 64, 2);
  expect_pre_scan_answers_as_full_scan(spec, "raw");
  spec.scorer.score = ScoreKind::sigmoid;
  expect_pre_scan_answers_as_full_scan(spec, "sigmoid");
  spec = testing::small_spec(2000, 10, 50, 2);  // d not a multiple of 4 or 16
  expect_pre_scan_answers_as_full_scan(spec, "d 50");
}

TEST(PreScanRecommender, Bert4recWithItsOutputBiasAnswersAsTheFullScan) {
  ModelSpec spec = bert4rec_spec(3000, 64);
  expect_pre_scan_answers_as_full_scan(spec, "bert4rec raw");
  spec.scorer.score = ScoreKind::sigmoid;
  expect_pre_scan_answers_as_full_scan(spec, "bert4rec sigmoid");
}

// A hidden state too large to bound (here ~1e21) is ranked from its full logits.
TEST(PreScanRecommender, HiddenStatesBeyondTheBoundsFallBackToTheFullScan) {
  const ModelSpec spec = testing::small_spec(2000, 10, 64, 2);
  WeightMap weights = testing::random_weights(spec);
  for (float& gain : weights.at("encoder/final_norm/weight").data) gain *= 1e20f;
  const Recommender full(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::never);
  const Recommender scan(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::always);
  ASSERT_TRUE(scan.model().scorer().has_pre_scan());
  const std::vector<Request> requests = request_mix(spec.n_items, 15);
  Workspace ws;
  const std::vector<Response> batched = scan.recommend(requests, ws);
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].candidate_ids) continue;  // candidates are scored exactly, as ever
    const Response want = one(full, requests[i]);
    expect_same_answers(one(scan, requests[i]), want, 0, "request " + std::to_string(i));
    expect_same_answers(batched[i], want, 0, "request " + std::to_string(i) + " (batched)");
  }
}

// Softmax needs every logit: such a model keeps the full scan even with the int8 copy.
TEST(PreScanRecommender, SoftmaxKeepsTheFullScan) {
  ModelSpec spec = bert4rec_spec(2000, 64);
  spec.scorer.score = ScoreKind::softmax;
  const Recommender full(spec, testing::random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt,
                         PreScan::never);
  const Recommender scan(spec, testing::random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt,
                         PreScan::always);
  const std::vector<Request> requests = request_mix(spec.n_items, 12);
  for (size_t i = 0; i < requests.size(); ++i)
    expect_same_answers(one(scan, requests[i]), one(full, requests[i]), 0, "request " + std::to_string(i));
}

// Duplicate item rows score alike on both paths: catalog order decides.
TEST(PreScanRecommender, TiedItemsComeInCatalogOrder) {
  ModelSpec spec = testing::small_spec(2000, 10, 64, 2);
  WeightMap weights = testing::random_weights(spec);
  float* table = weights.at("embedding/item/weight").ptr();
  for (int64_t r = 2; r < spec.n_items; r += 2)  // rows 2k and 2k + 1 are the same item
    std::copy(table + (r - 1) * spec.d, table + r * spec.d, table + r * spec.d);
  const Recommender full(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::never);
  const Recommender scan(spec, weights, offset_ids(spec.n_items), {}, std::nullopt, PreScan::always);
  const std::vector<Request> requests = request_mix(spec.n_items, 13);
  int64_t ties = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Response got = one(scan, requests[i]);
    expect_same_answers(got, one(full, requests[i]), rounding_tolerance(scan, weights, requests[i]),
                        "request " + std::to_string(i));
    for (size_t j = 1; j < got.recommendations.size(); ++j) {
      if (got.recommendations[j].score != got.recommendations[j - 1].score) continue;
      EXPECT_LT(got.recommendations[j - 1].row, got.recommendations[j].row);
      ++ties;
    }
  }
  EXPECT_GT(ties, 100);
}

// Weights from a cheap generator (a large catalog has tens of millions of values).
WeightMap cheap_weights(const ModelSpec& spec) {
  WeightMap weights;
  uint64_t state = 1;
  for (const TensorDecl& decl : required_tensors(spec)) {
    Tensor t(decl.shape);
    const bool gain = decl.name.find("norm/weight") != std::string::npos;
    for (float& v : t.data) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      v = (gain ? 1.0f : 0.0f) + (static_cast<float>(state >> 40) / 16777216.0f - 0.5f) * 0.5f;
    }
    weights.emplace(decl.name, std::move(t));
  }
  return weights;
}

// The automatic policy: small catalogs keep the packed fp32 GEMM, a table over 16M floats
// (here 262,401 items × 64) gets the int8 copy and answers as the full logits rank.
TEST(PreScanRecommender, LargeCatalogsGetThePreScan) {
  const ModelSpec small = testing::small_spec(1000, 10, 64, 2);
  EXPECT_FALSE(Recommender(small, testing::random_weights(small), offset_ids(small.n_items), {}, std::nullopt)
                   .model()
                   .scorer()
                   .has_pre_scan());
  const ModelSpec spec = testing::small_spec((int64_t{16} << 20) / 64 + 257, 10, 64, 2);
  const Recommender rec(spec, cheap_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  ASSERT_TRUE(rec.model().scorer().has_pre_scan());
  EXPECT_FALSE(rec.model().scorer().has_int4_pre_scan());  // 17 MB of int8: cached between requests
  EXPECT_EQ(rec.model().scorer().pre_scan_bytes(),
            static_cast<size_t>(kernels::quantized_table_bytes(spec.n_items, spec.d)));
  for (const Request& r : request_mix(spec.n_items, 14)) {
    if (r.candidate_ids || r.k > 100) continue;
    const Response got = one(rec, r);
    // The reference: the full logits, ranked by the ranker.
    const PreparedRequest prepared = testing::prepared_for(rec, r);
    std::vector<float> logits(static_cast<size_t>(spec.n_items));
    Workspace ws;
    const SequenceInput input = testing::input_of(prepared);
    rec.model().logits({&input, 1}, ws, logits.data());
    const std::vector<ScoredItem> want = testing::rank_logits(rec, r, logits.data());
    ASSERT_EQ(got.recommendations.size(), want.size());
    for (size_t j = 0; j < want.size(); ++j) {
      ASSERT_EQ(got.recommendations[j].id, want[j].id) << "rank " << j;
      ASSERT_NEAR(got.recommendations[j].score, want[j].score, 1e-6 * std::abs(want[j].score));
    }
  }
}

}  // namespace
}  // namespace seqrec

namespace seqrec {
namespace {

// Mid-size catalogs (here 2,000 x 64 floats, past the automatic threshold) take the
// pre-scan at every batch size, and the scan groups a batch's queries eight at a time: every
// request must get the same rows and the same score bits whatever its batch and its place in
// it — batches of 1, 8, 9 and 40 (every request of the mix at once) answer identically.
TEST(PreScanRecommender, SmallAndLargeBatchesAnswerBitForBit) {
  const ModelSpec spec = testing::small_spec(2000, 10, 64, 2);
  for (ScoreKind score : {ScoreKind::raw, ScoreKind::sigmoid}) {
    ModelSpec s = spec;
    s.scorer.score = score;
    const Recommender rec(s, testing::random_weights(s), testing::offset_ids(s.n_items), {}, std::nullopt);
    ASSERT_TRUE(rec.model().scorer().has_pre_scan());
    const std::vector<Request> mix = request_mix(s.n_items, 31);
    Workspace ws;
    const std::vector<Response> all = rec.recommend(mix, ws);
    for (size_t chunk : {size_t{1}, size_t{8}, size_t{9}}) {
      for (size_t first = 0; first < mix.size(); first += chunk) {
        const size_t n = std::min(chunk, mix.size() - first);
        const std::vector<Response> part = rec.recommend(std::span<const Request>(mix.data() + first, n), ws);
        for (size_t i = 0; i < n; ++i) {
          const auto& want = all[first + i].recommendations;
          const auto& got = part[i].recommendations;
          ASSERT_EQ(got.size(), want.size()) << "request " << first + i << " batch " << chunk;
          for (size_t j = 0; j < want.size(); ++j) {
            ASSERT_EQ(got[j].id, want[j].id) << "request " << first + i << " rank " << j << " batch " << chunk;
            ASSERT_EQ(got[j].score, want[j].score) << "request " << first + i << " rank " << j << " batch " << chunk;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace seqrec

#include <filesystem>

#include "weights/model_loader.h"
#include "weights/seqrec_file.h"

namespace seqrec {
namespace {

// A model file (format 3) carries the scorer's scan table and inverse norms for catalogs it
// pre-scans; a load uses them in place. Answers, similar items included, are bit for bit those
// of the same model with tables made at load.
TEST(StoredScorerTables, AnswerAsTablesMadeAtLoad) {
  const ModelSpec spec = testing::small_spec(2100, 10, 32, 2);  // 67,200 floats: pre-scanned
  ModelFile file;
  file.spec = spec;
  file.tensors = testing::random_weights(spec, 21);
  file.catalog = testing::offset_ids(spec.n_items);
  file.provenance = {"safetensors", "", "m.safetensors", "test", std::nullopt};
  // Per process: CTest runs this binary once per kernel path (isa.*), in parallel.
  const std::string path = ::testing::TempDir() + "stored_tables_" + std::to_string(::getpid()) + ".seqrec";
  save_model_file(file, path);

  const ModelFile read = load_model_file(path);
  ASSERT_NE(read.scorer_tables.scan_table, nullptr);
  ASSERT_NE(read.scorer_tables.inverse_norms, nullptr);
  const DerivedScorerTables derived = Scorer::derive_tables(spec, file.tensors);
  ASSERT_EQ(read.scorer_tables.scan_table_bytes, derived.scan_table.size());
  EXPECT_EQ(std::memcmp(read.scorer_tables.scan_table, derived.scan_table.data(), derived.scan_table.size()), 0);
  EXPECT_EQ(std::memcmp(read.scorer_tables.inverse_norms, derived.inverse_norms.data(),
                        derived.inverse_norms.size() * sizeof(float)), 0);

  const LoadedModel loaded = load_recommender(path, std::nullopt, nullptr);
  const Recommender& from_file = *loaded.recommender;
  ASSERT_TRUE(from_file.model().scorer().tables_from_file());
  ASSERT_TRUE(from_file.model().scorer().has_pre_scan());
  const Recommender made(spec, testing::random_weights(spec, 21), testing::offset_ids(spec.n_items), {}, std::nullopt);
  ASSERT_FALSE(made.model().scorer().tables_from_file());
  for (const Request& r : request_mix(spec.n_items, 17))
    expect_same_answers(one(from_file, r), one(made, r), 0, "recommend");
  Workspace ws_a, ws_b;
  Request similar;
  similar.k = 10;
  for (const std::string item : {"100", "517", "2198"})
    expect_same_answers(from_file.similar_items(item, similar, ws_a), made.similar_items(item, similar, ws_b), 0,
                        "similar items of " + item);
  std::filesystem::remove(path);
}

// A table that streams from memory (here 524,321 items × 64 = 32M floats, 128 MB) also gets
// the int4 copy, stored in the file and used in place; a request alone scans it, a batch the
// int8 copy, and both answer bit for bit as the same model with its tables made at load.
TEST(StoredScorerTables, LargeCatalogsCarryTheInt4Copy) {
  const ModelSpec spec = testing::small_spec((int64_t{32} << 20) / 64 + 33, 10, 64, 2);
  ModelFile file;
  file.spec = spec;
  file.tensors = cheap_weights(spec);
  file.catalog = testing::offset_ids(spec.n_items);
  file.provenance = {"safetensors", "", "m.safetensors", "test", std::nullopt};
  const std::string path = ::testing::TempDir() + "stored_int4_" + std::to_string(::getpid()) + ".seqrec";
  save_model_file(file, path);
  const LoadedModel loaded = load_recommender(path, std::nullopt, nullptr);
  const Scorer& scorer = loaded.recommender->model().scorer();
  ASSERT_TRUE(scorer.tables_from_file());
  ASSERT_TRUE(scorer.has_int4_pre_scan());
  EXPECT_EQ(scorer.pre_scan_bytes(),
            static_cast<size_t>(kernels::quantized_table_bytes(spec.n_items, spec.d) +
                                kernels::quantized_table_bytes(spec.n_items, spec.d, kernels::ScanCode::int4)));
  const Recommender made(spec, cheap_weights(spec), testing::offset_ids(spec.n_items), {}, std::nullopt);
  ASSERT_TRUE(made.model().scorer().has_int4_pre_scan());
  ASSERT_FALSE(made.model().scorer().tables_from_file());
  std::vector<Request> requests;
  for (const Request& r : request_mix(spec.n_items, 19))
    if (r.k <= 100) requests.push_back(r);
  requests.resize(std::min<size_t>(requests.size(), 12));
  Workspace ws;
  const std::vector<Response> batched = loaded.recommender->recommend(requests, ws);
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string what = "request " + std::to_string(i);
    const Response alone = one(*loaded.recommender, requests[i]);
    expect_same_answers(alone, one(made, requests[i]), 0, what);
    expect_same_answers(batched[i], alone, 0, what + " (batched: the int8 copy)");
  }
  std::filesystem::remove(path);
}

// Small catalogs are scored in full: nothing derived is stored, and the file is as version 2
// wrote it but for its version number.
TEST(StoredScorerTables, NoneForCatalogsScoredInFull) {
  const ModelSpec spec = testing::small_spec(40, 10, 32, 2);
  EXPECT_TRUE(Scorer::derive_tables(spec, testing::random_weights(spec)).scan_table.empty());
}

}  // namespace
}  // namespace seqrec
