// Google Benchmark micro-benchmarks: every kernel at the shapes of the performance spec's
// workloads (docs/performance.md), and the engine end to end on a random
// ml1m-shaped model.
//
//   ml1m       SASRec.pytorch: d=50, L=200, 1 head, FFN 50 (relu), 3,416 items (+ padding row)
//   recbole    RecBole SASRec: d=64, L=50, 2 heads, FFN 256 (gelu), 10,000 items
//   bert4rec   the recbole shape, bidirectional, L+1 slots (the [MASK] slot)
//   catalog1m  the recbole encoder, 1,000,000 items
//
// Every kernel runs on one thread (kernels::set_gemm_threads(1), as the server's workers do).
// The GEMMs run as the engine runs them (kernels::PackedLinear); the rows ending in /openblas
// run the same product through kernels::sgemm, for reference.
// Counters: "FLOPS" (useful floating-point operations per second, where they are defined)
// or "bytes_per_second" for the memory-bound ones.
//
//   build-bench/bench/kernels_bench --benchmark_filter=ml1m
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/recommender.h"
#include "engine/tensor.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"
#include "kernels/quantized_scan.h"
#include "kernels/topk.h"

namespace {

using seqrec::FloatBuffer;
namespace k = seqrec::kernels;

struct Shape {
  const char* name;
  int64_t d, slots, heads, ffn, items;  // items: catalog rows incl. the padding row
  bool relu, causal;
};
constexpr Shape kMl1m{"ml1m", 50, 200, 1, 50, 3417, true, true};
constexpr Shape kRecbole{"recbole", 64, 50, 2, 256, 10001, false, true};
constexpr Shape kBert4rec{"bert4rec", 64, 51, 2, 256, 10002, false, false};
constexpr Shape kCatalog1m{"catalog1m", 64, 50, 2, 256, 1000001, false, true};
constexpr Shape kCatalog10m{"catalog10m", 64, 50, 2, 256, 10000001, false, true};  // the scans only (2.6 GB table)
const Shape kShapes[] = {kMl1m, kRecbole, kBert4rec, kCatalog1m};

// Uniform values of standard deviation `scale` (a cheap generator: catalog1m's table has 64M).
FloatBuffer random_buffer(size_t n, uint32_t seed, float scale = 1.0f) {
  uint64_t state = 0x9E3779B97F4A7C15ull * (seed + 1);
  const float unit = scale * 3.4641016f / 4294967296.0f;  // sqrt(12) · scale / 2^32
  FloatBuffer out(n);
  for (float& x : out) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    x = (static_cast<float>(static_cast<uint32_t>(state >> 32)) - 2147483648.0f) * unit;
  }
  return out;
}

// ---- attention: one head over one sequence -------------------------------------------

// All query slots (every block but the last) or only the read-out slot (the last block).
void attention(benchmark::State& state, Shape s, bool readout_only) {
  k::set_gemm_threads(1);
  const int64_t n = s.slots, d_h = s.d / s.heads;
  const int64_t room = (n + 16) * s.d;  // a tile's worth of slack past the last row
  FloatBuffer q = random_buffer(room, 1), kk = random_buffer(room, 2), v = random_buffer(room, 3);
  FloatBuffer out(room), scratch(k::attention_scratch_floats(n, d_h));
  const int64_t q_begin = readout_only ? n - 1 : 0, n_q = readout_only ? 1 : n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d_h));
  for (auto _ : state) {
    for (int64_t h = 0; h < s.heads; ++h)
      k::attention_head(q.data() + q_begin * s.d + h * d_h, s.d, q_begin, n_q, kk.data() + h * d_h,
                        v.data() + h * d_h, s.d, n, d_h, 0, n, s.causal, 1.0f, scale, out.data() + h * d_h, s.d,
                        scratch.data());
    benchmark::DoNotOptimize(out.data());
  }
  // Useful: q·k and p·v over the keys each query sees (lower triangle when causal).
  double pairs = 0;
  for (int64_t i = q_begin; i < n; ++i) pairs += s.causal ? static_cast<double>(i + 1) : static_cast<double>(n);
  state.counters["FLOPS"] = benchmark::Counter(4.0 * pairs * s.d, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- layer norm -------------------------------------------------------------------------

void layer_norm(benchmark::State& state, Shape s) {
  const int64_t rows = s.slots;
  FloatBuffer x = random_buffer(rows * s.d, 4), y(rows * s.d);
  FloatBuffer gamma = random_buffer(s.d, 5, 0.2f), beta = random_buffer(s.d, 6, 0.1f);
  for (float& g : gamma) g += 1.0f;
  for (auto _ : state) {
    k::layer_norm(x.data(), s.d, rows, s.d, gamma.data(), beta.data(), 1e-8f, y.data(), s.d);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * rows * s.d * 2 * static_cast<int64_t>(sizeof(float)));
}

// ---- the GEMMs: k::PackedLinear as the engine builds them (oneDNN, weights packed at load,
// padded row counts for the encoder, the activation fused into the FFN's inner GEMM), and
// the same product through k::sgemm (OpenBLAS) for reference ---------------------------------

// Room for `rows` rows as Rows::padded reads and writes them.
FloatBuffer rows_buffer(int64_t rows, int64_t width, uint32_t seed) {
  return random_buffer(k::padded_rows(rows) * width, seed);
}

k::Epilogue activation_of(const Shape& s) { return s.relu ? k::Epilogue::relu : k::Epilogue::gelu_erf; }

// The OpenBLAS reference's epilogue, as plain loops: y[r, :] = act(y[r, :] + bias).
void add_bias(float* y, int64_t rows, int64_t dim, const float* bias, k::Epilogue act = k::Epilogue::none) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim; ++i) {
      float v = y[r * dim + i] + bias[i];
      if (act == k::Epilogue::relu) v = v > 0.0f ? v : 0.0f;
      if (act == k::Epilogue::gelu_erf) v = 0.5f * v * (1.0f + std::erf(v * 0.70710678f));
      y[r * dim + i] = v;
    }
}

// FFN: inner GEMM + bias + activation, outer GEMM + bias.
void ffn(benchmark::State& state, Shape s, int64_t rows, bool openblas) {
  k::set_gemm_threads(1);
  FloatBuffer w1 = random_buffer(s.ffn * s.d, 8, 0.1f), b1 = random_buffer(s.ffn, 9, 0.1f),
              w2 = random_buffer(s.d * s.ffn, 10, 0.1f), b2 = random_buffer(s.d, 11, 0.1f);
  FloatBuffer x = rows_buffer(rows, s.d, 7), hidden = rows_buffer(rows, s.ffn, 0), y = rows_buffer(rows, s.d, 0);
  const k::PackedLinear inner(w1.data(), b1.data(), s.ffn, s.d, activation_of(s), true, k::Rows::padded);
  const k::PackedLinear outer(w2.data(), b2.data(), s.d, s.ffn, k::Epilogue::none, true, k::Rows::padded);
  for (auto _ : state) {
    if (openblas) {
      k::sgemm(false, true, rows, s.ffn, s.d, 1.0f, x.data(), s.d, w1.data(), s.d, 0.0f, hidden.data(), s.ffn);
      add_bias(hidden.data(), rows, s.ffn, b1.data(), activation_of(s));
      k::sgemm(false, true, rows, s.d, s.ffn, 1.0f, hidden.data(), s.ffn, w2.data(), s.ffn, 0.0f, y.data(), s.d);
      add_bias(y.data(), rows, s.d, b2.data());
    } else {
      inner.apply(x.data(), s.d, rows, hidden.data());
      outer.apply(hidden.data(), s.ffn, rows, y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(4.0 * rows * s.d * s.ffn, benchmark::Counter::kIsIterationInvariantRate);
}

// The attention block's fused Q|K|V projection: one [rows, d] x [d, 3d] GEMM + bias.
void projection(benchmark::State& state, Shape s, int64_t rows, bool openblas) {
  k::set_gemm_threads(1);
  FloatBuffer w = random_buffer(3 * s.d * s.d, 13, 0.1f), b = random_buffer(3 * s.d, 14, 0.1f);
  FloatBuffer x = rows_buffer(rows, s.d, 12), y = rows_buffer(rows, 3 * s.d, 0);
  const k::PackedLinear qkv(w.data(), b.data(), 3 * s.d, s.d, k::Epilogue::none, true, k::Rows::padded);
  for (auto _ : state) {
    if (openblas) {
      k::sgemm(false, true, rows, 3 * s.d, s.d, 1.0f, x.data(), s.d, w.data(), s.d, 0.0f, y.data(), 3 * s.d);
      add_bias(y.data(), rows, 3 * s.d, b.data());
    } else {
      qkv.apply(x.data(), s.d, rows, y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(6.0 * rows * s.d * s.d, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- embedding gather: item rows (scaled) + position rows --------------------------------

void gather(benchmark::State& state, Shape s) {
  const int64_t n = s.slots, table_rows = s.items;
  FloatBuffer items = random_buffer(table_rows * s.d, 14), positions = random_buffer((n + 1) * s.d, 15);
  std::mt19937 rng(16);
  std::vector<int32_t> rows(n), pos(n);
  for (int64_t i = 0; i < n; ++i) {
    rows[i] = static_cast<int32_t>(1 + rng() % (table_rows - 1));
    pos[i] = static_cast<int32_t>(i + 1);
  }
  FloatBuffer out(n * s.d);
  const float scale = std::sqrt(static_cast<float>(s.d));
  for (auto _ : state) {
    k::gather_rows(items.data(), s.d, rows.data(), n, scale, out.data(), s.d);
    k::gather_add_rows(positions.data(), s.d, pos.data(), n, out.data(), s.d);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * n * s.d * 3 * static_cast<int64_t>(sizeof(float)));
}

// ---- scoring GEMM: [batch, d] · item_tableᵀ over the whole catalog ------------------------
// As engine/model.cc builds it: PackedLinear, Rows::exact, the table packed when it holds at
// most 16M floats (catalog1m's 64M are used in place).
constexpr int64_t kMaxPackedTableFloats = int64_t{16} << 20;

void scoring(benchmark::State& state, Shape s, int64_t batch, bool openblas) {
  k::set_gemm_threads(1);
  FloatBuffer table = random_buffer(s.items * s.d, 17, 0.05f), hidden = random_buffer(batch * s.d, 18);
  FloatBuffer logits(batch * s.items);
  const k::PackedLinear scorer(table.data(), nullptr, s.items, s.d, k::Epilogue::none,
                               s.items * s.d <= kMaxPackedTableFloats, k::Rows::exact);
  for (auto _ : state) {
    if (openblas)
      k::sgemm(false, true, batch, s.items, s.d, 1.0f, hidden.data(), s.d, table.data(), s.d, 0.0f, logits.data(),
               s.items);
    else
      scorer.apply(hidden.data(), s.d, batch, logits.data());
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["FLOPS"] =
      benchmark::Counter(2.0 * batch * s.items * s.d, benchmark::Counter::kIsIterationInvariantRate);
  state.SetBytesProcessed(state.iterations() * s.items * s.d * static_cast<int64_t>(sizeof(float)));
}

// ---- top-k over one request's catalog scores ------------------------------------------------

void top_k(benchmark::State& state, Shape s, bool with_skip) {
  FloatBuffer scores = random_buffer(s.items, 19);
  std::vector<uint8_t> skip(s.items, 0);
  skip[0] = 1;  // the padding row
  std::mt19937 rng(20);
  for (int i = 0; i < 200; ++i) skip[1 + rng() % (s.items - 1)] = 1;  // a long history's seen items
  std::vector<int32_t> out(10);
  for (auto _ : state) {
    benchmark::DoNotOptimize(k::top_k(scores.data(), s.items, with_skip ? skip.data() : nullptr, 10, out.data()));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * s.items * static_cast<int64_t>(sizeof(float)));
}

// ---- exact top-k through the int8 or int4 pre-scan (kernels/quantized_scan.h): the scan of
// the quantized table, then the fp32 rescoring of the rows that may reach the top-k (counter
// "rescored", per query); a batch's queries share one read of the table ------------------------

void quantized_scan_top_k(benchmark::State& state, Shape s, int64_t batch, k::ScanCode code) {
  FloatBuffer table = random_buffer(s.items * s.d, 17, 0.05f), hidden = random_buffer(batch * s.d, 18);
  std::vector<uint8_t, seqrec::AlignedAllocator<uint8_t>> quantized(k::quantized_table_bytes(s.items, s.d, code));
  if (!k::quantize_table(table.data(), s.items, s.d, quantized.data(), code)) {
    state.SkipWithError("quantize_table refused the table");
    return;
  }
  const int32_t never[] = {0};  // the padding row
  std::vector<int32_t> rows(10 * batch);
  std::vector<float> scores(10 * batch);
  std::vector<k::ScanTopK> queries(batch);
  for (int64_t b = 0; b < batch; ++b) {
    queries[b].h = hidden.data() + b * s.d;
    queries[b].never = never;
    queries[b].n_never = 1;
    queries[b].k = 10;
    queries[b].rows = rows.data() + 10 * b;
    queries[b].scores = scores.data() + 10 * b;
  }
  for (auto _ : state) {
    k::scan_top_k(table.data(), nullptr, quantized.data(), s.items, s.d, queries.data(), batch, code);
    benchmark::ClobberMemory();
  }
  double rescored = 0;
  for (const k::ScanTopK& q : queries) rescored += static_cast<double>(q.stats.rescored) / batch;
  state.counters["rescored"] = rescored;  // per query
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(quantized.size()));
  state.SetItemsProcessed(state.iterations() * batch);  // items_per_second = queries/s
}

// ---- the engine: Recommender::recommend on a random ml1m-shaped model -----------------------

std::shared_ptr<seqrec::Recommender> ml1m_recommender() {
  seqrec::ModelSpec spec;  // SASRec.pytorch current generation, post_ln, as `convert --from pmixer` maps it
  spec.blocks.kind = seqrec::BlockKind::post_ln;
  spec.blocks.attention = seqrec::AttentionKind::causal;
  spec.input.embed_scale = true;
  spec.input.positions = seqrec::Positions::slot_or_zero;
  spec.input.padding = seqrec::Padding::left;
  spec.blocks.activation = seqrec::Activation::relu;
  spec.readout.final_norm = true;
  spec.scorer.score = seqrec::ScoreKind::raw;
  spec.max_len = kMl1m.slots;
  spec.d = kMl1m.d;
  spec.blocks.heads = kMl1m.heads;
  spec.blocks.ffn_dim = kMl1m.ffn;
  spec.blocks.n_layers = 2;
  spec.n_items = kMl1m.items;
  seqrec::WeightMap weights;
  uint32_t seed = 100;
  for (const seqrec::TensorDecl& decl : seqrec::required_tensors(spec)) {
    seqrec::Tensor t(decl.shape);
    const bool norm_gamma = decl.shape.size() == 1 && decl.name.size() > 7 &&
                            decl.name.compare(decl.name.size() - 7, 7, "/weight") == 0;
    FloatBuffer r = random_buffer(t.numel(), seed++, 0.1f);
    for (size_t i = 0; i < t.numel(); ++i) t.data[i] = r[i] + (norm_gamma ? 1.0f : 0.0f);
    weights.emplace(decl.name, std::move(t));
  }
  std::vector<std::string> ids(spec.n_items);
  for (int64_t r = 0; r < spec.n_items; ++r) ids[r] = std::to_string(r);
  return std::make_shared<seqrec::Recommender>(spec, std::move(weights), std::move(ids), std::vector<uint64_t>{},
                                               std::nullopt);
}

// history_len 0: random lengths 1..2L (the comparison's request mix).
void recommend(benchmark::State& state, int64_t batch, int64_t history_len) {
  k::set_gemm_threads(1);
  static const std::shared_ptr<seqrec::Recommender> rec = ml1m_recommender();
  std::mt19937 rng(22);
  std::vector<seqrec::Request> requests(256);
  for (auto& r : requests) {
    r.k = 10;
    r.recommend_seen = true;
    const int64_t len = history_len ? history_len : 1 + static_cast<int64_t>(rng() % (2 * kMl1m.slots));
    for (int64_t i = 0; i < len; ++i)
      r.interactions.push_back({std::to_string(1 + rng() % (kMl1m.items - 1)), i, std::nullopt});
  }
  seqrec::Workspace ws;
  size_t at = 0;
  for (auto _ : state) {
    if (at + batch > requests.size()) at = 0;
    auto out = rec->recommend(std::span<const seqrec::Request>(requests.data() + at, batch), ws);
    benchmark::DoNotOptimize(out.data());
    at += batch;
  }
  state.SetItemsProcessed(state.iterations() * batch);  // items_per_second = requests/s
}

void register_all() {
  for (const Shape& s : kShapes) {
    const std::string p = s.name;
    if (s.items < 100000) {  // the encoder kernels of catalog1m are recbole's
      benchmark::RegisterBenchmark((p + "/attention/all_slots").c_str(), attention, s, false);
      benchmark::RegisterBenchmark((p + "/attention/readout_slot").c_str(), attention, s, true);
      benchmark::RegisterBenchmark((p + "/layer_norm").c_str(), layer_norm, s);
      for (bool openblas : {false, true}) {
        const std::string lib = openblas ? "/openblas" : "";
        benchmark::RegisterBenchmark((p + "/qkv_projection/all_slots" + lib).c_str(), projection, s, s.slots,
                                     openblas);
        benchmark::RegisterBenchmark((p + "/ffn/all_slots" + lib).c_str(), ffn, s, s.slots, openblas);
        benchmark::RegisterBenchmark((p + "/ffn/readout_slot" + lib).c_str(), ffn, s, int64_t{1}, openblas);
      }
    }
    benchmark::RegisterBenchmark((p + "/gather").c_str(), gather, s);
    for (int64_t batch : {int64_t{1}, int64_t{64}})
      for (bool openblas : {false, true})
        benchmark::RegisterBenchmark(
            (p + "/scoring_gemm/batch:" + std::to_string(batch) + (openblas ? "/openblas" : "")).c_str(), scoring, s,
            batch, openblas);
    benchmark::RegisterBenchmark((p + "/top_k/k:10").c_str(), top_k, s, false);
    benchmark::RegisterBenchmark((p + "/top_k/k:10/skip_seen").c_str(), top_k, s, true);
    for (int64_t batch : {int64_t{1}, int64_t{8}, int64_t{64}})
      benchmark::RegisterBenchmark((p + "/int8_scan_top_k/k:10/batch:" + std::to_string(batch)).c_str(),
                                   quantized_scan_top_k, s, batch, k::ScanCode::int8);
    if (s.items >= 1000000)
      benchmark::RegisterBenchmark((p + "/int4_scan_top_k/k:10/batch:1").c_str(), quantized_scan_top_k, s, int64_t{1},
                                   k::ScanCode::int4);
  }
  // catalog10m: the scans only (its table is 2.6 GB). Batches of 1 and 2 show where the int4
  // copy stops paying (engine/scorer.cc).
  for (int64_t batch : {int64_t{1}, int64_t{2}, int64_t{64}})
    benchmark::RegisterBenchmark(("catalog10m/int8_scan_top_k/k:10/batch:" + std::to_string(batch)).c_str(),
                                 quantized_scan_top_k, kCatalog10m, batch, k::ScanCode::int8);
  for (int64_t batch : {int64_t{1}, int64_t{2}})
    benchmark::RegisterBenchmark(("catalog10m/int4_scan_top_k/k:10/batch:" + std::to_string(batch)).c_str(),
                                 quantized_scan_top_k, kCatalog10m, batch, k::ScanCode::int4);
  benchmark::RegisterBenchmark("engine/ml1m/recommend/batch:1/history:mix", recommend, int64_t{1}, int64_t{0});
  benchmark::RegisterBenchmark("engine/ml1m/recommend/batch:64/history:mix", recommend, int64_t{64}, int64_t{0});
  benchmark::RegisterBenchmark("engine/ml1m/recommend/batch:1/history:10", recommend, int64_t{1}, int64_t{10});
  benchmark::RegisterBenchmark("engine/ml1m/recommend/batch:1/history:200", recommend, int64_t{1}, int64_t{200});
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
