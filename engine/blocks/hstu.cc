// HSTU (Zhai et al., ICML'24; Meta's generative-recommenders, research/modeling/sequential/
// hstu.py): Hierarchical Sequential Transduction Units.
//
// Per block, over the n real rows (right padding, causal: padded slots are never seen):
//   h = LN(x)                       no affine parameters, eps ln_eps (1e-6)
//   [u | v | q | k] = silu(h · Wᵀ)  one projection; widths H·dv, H·dv, H·dqk, H·dqk
//   a_ij = silu(q_i·k_j + p[N−1−(i−j)] + w[b_ij]) / N for j <= i, per head
//   o_i  = Σ_j a_ij · v_j
//   x   += (u ⊙ LN(o)) · W_oᵀ + b_o  LN over all H·dv columns, no affine
// N is the padded length the model trained with (attention_len), not the user's n. p: the
// layer's relative position bias [2N − 1]; w: its time bias [time_buckets + 1], indexed by the
// bucket of t_{i+1} − t_j: each query row uses the time of the NEXT slot, and the last row's
// next time is `now` (the time the recommendation is for). Bucket of a gap g: the integer part
// of ln(max(|g|, 1)) / 0.301 computed as the source does in float32, capped at time_buckets —
// read here off the table of the first gap of each bucket (kTimeBucketStarts), exact for every
// integer gap.
//
// Weights, layer i: encoder/layer_i/uvqk/weight [2H·dv + 2H·dqk, d] (the source's _uvqk,
// transposed to [out, in]), encoder/layer_i/relative_bias/position/weight [2N − 1],
// encoder/layer_i/relative_bias/time/weight [time_buckets + 1], encoder/layer_i/out/{weight
// [d, H·dv], bias [d]}.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>

#include "engine/blocks/block_kind.h"
#include "engine/error.h"
#include "engine/workspace.h"
#include "kernels/gemm.h"
#include "kernels/layer_norm.h"
#include "kernels/relative_attention.h"

namespace seqrec {

namespace {

using kernels::PackedLinear;

// The smallest gap of each bucket 1..128 of (int64)(logf(float(g)) / 0.301f) (bucket 1 is
// empty): bucket(g) = how many entries are <= g. Derived from the source's float32 arithmetic
// and checked against it around every threshold (tests/parity/test_hstu_parity.py).
constexpr int64_t kTimeBucketStarts[] = {
    2, 2, 3, 4, 5, 7, 9, 12, 16, 21, 28, 38, 51, 68, 92, 124, 167, 226, 305, 412, 557, 752, 1016, 1372, 1854, 2505,
    3385, 4574, 6180, 8350, 11283, 15245, 20600, 27834, 37610, 50818, 68666, 92782, 125367, 169397, 228891, 309280,
    417901, 564672, 762990, 1030959, 1393042, 1882290, 2543367, 3436623, 4643595, 6274467, 8478123, 11455709,
    15479071, 20915478, 28261151, 38186755, 51598326, 69720053, 94206444, 127292700, 171999192, 232406601,
    314030161, 424319920, 573345376, 774710112, 1046794145, 1414438848, 1911204161, 2582433664, 3489410432,
    4714926848, 6370844929, 8608349696, 11631690241, 15716857344, 21236737025, 28695292928, 38773372928,
    52390873089, 70791081984, 95653629953, 129247899648, 174641078272, 235976794113, 318853627905, 430838267905,
    582153043969, 786609569792, 1062874873856, 1436167241729, 1940563755009, 2622104403969, 3543014178817,
    4787356827649, 6468712792065, 8740590059521, 11810374156289, 15958267133952, 21562972438529, 29136107077633,
    39368926429184, 53195697029121, 71878563594241, 97122946908160, 131233266794497, 177324058214400,
    239601604100097, 323751497433089, 437457166270464, 591095444537345, 798692621680640, 1079203646668800,
    1458228034535424, 1970368793280512, 2662387547111425, 3597438166237184, 4860885340258305, 6568090280132608,
    8874853327175681, 11991769344376832, 16203431454703616, 21894198160523265, 29583720776204288,
    39973748102660096, 54012827962179584};
constexpr int64_t kSourceTimeBuckets = 128;
static_assert(std::size(kTimeBucketStarts) == kSourceTimeBuckets);

// The bucket of a gap g >= 0 of bit width w lies after every start below 2^(w−1) and needs at
// most kStartsPerWidth more steps: [2^(w−1), 2^w) holds at most 3 starts (each ~1.35x the
// last). Three branch-free steps from there give upper_bound's count without its ~7
// unpredictable branches per (i, j) pair (the starts padded past the last bucket never match).
constexpr int kStartsPerWidth = 3;
constexpr std::array<uint64_t, kSourceTimeBuckets + kStartsPerWidth> kPaddedStarts = [] {
  std::array<uint64_t, kSourceTimeBuckets + kStartsPerWidth> starts{};
  for (int c = 0; c < kSourceTimeBuckets + kStartsPerWidth; ++c)
    starts[c] = c < kSourceTimeBuckets ? static_cast<uint64_t>(kTimeBucketStarts[c]) : ~uint64_t{0};
  return starts;
}();
constexpr std::array<int32_t, 65> kStartsBelowWidth = [] {  // [w]: starts < 2^(w−1) (0 for w <= 1)
  std::array<int32_t, 65> below{};
  for (int w = 2; w <= 64; ++w)
    while (below[w] < kSourceTimeBuckets && kPaddedStarts[below[w]] < uint64_t{1} << (w - 1)) ++below[w];
  return below;
}();
static_assert([] {
  for (int w = 1; w < 64; ++w)
    if (kStartsBelowWidth[w + 1] - kStartsBelowWidth[w] > kStartsPerWidth) return false;
  return kSourceTimeBuckets - kStartsBelowWidth[64] <= kStartsPerWidth;
}());

int32_t time_bucket(int64_t gap) {
  // |gap| without overflow at INT64_MIN: every such gap is far past the last bucket start.
  const uint64_t g = gap < 0 ? uint64_t{0} - static_cast<uint64_t>(gap) : static_cast<uint64_t>(gap);
  int32_t c = kStartsBelowWidth[std::bit_width(g)];
  for (int step = 0; step < kStartsPerWidth; ++step) c += kPaddedStarts[c] <= g;
  return c;
}

struct Layer {
  PackedLinear uvqk;                     // silu fused; not in the last block, which has vk and uq
  PackedLinear vk, uq;                   // the last block's [v | k] (every row), [u | q] (read-out rows)
  const float* position_bias = nullptr;  // [2N − 1]
  const float* time_bias = nullptr;      // [time_buckets + 1]
  PackedLinear out;                      // + residual, fused
};

class HstuStack final : public BlockStack {
 public:
  HstuStack(const ModelSpec& spec, const WeightMap& weights) : spec_(spec) {
    const BlockSpec& b = spec.blocks;
    const int64_t d = spec.d, width = uvqk_width();
    for (int64_t i = 0; i < b.n_layers; ++i) {
      const std::string p = tensor_names::layer(i);
      const bool last = i + 1 == b.n_layers;
      Layer layer;
      const float* uvqk = weight(weights, p + "/uvqk/weight", {width, d});
      if (!last) {
        layer.uvqk = PackedLinear(uvqk, nullptr, width, d, kernels::Epilogue::swish, true, kernels::Rows::padded);
      } else {
        // The last block reads out one row per sequence: u and q are needed there only, v and k
        // on every row (halves the block's projection: ~2% of hstu-large). Each output column is
        // the same product as in uvqk, so the bits do not change.
        const int64_t hv = b.heads * b.linear_dim, hqk = b.heads * b.attention_dim;
        auto rows_of = [&](std::initializer_list<std::pair<int64_t, int64_t>> ranges) {
          std::vector<float> w;
          for (auto [first, count] : ranges) w.insert(w.end(), uvqk + first * d, uvqk + (first + count) * d);
          return w;
        };
        const std::vector<float> vk = rows_of({{hv, hv}, {2 * hv + hqk, hqk}});
        const std::vector<float> uq = rows_of({{0, hv}, {2 * hv, hqk}});
        layer.vk = PackedLinear(vk.data(), nullptr, hv + hqk, d, kernels::Epilogue::swish, true, kernels::Rows::padded);
        layer.uq = PackedLinear(uq.data(), nullptr, hv + hqk, d, kernels::Epilogue::swish, true, kernels::Rows::exact);
      }
      layer.position_bias = weight(weights, p + "/relative_bias/position/weight", {2 * b.attention_len - 1});
      layer.time_bias = weight(weights, p + "/relative_bias/time/weight", {b.time_buckets + 1});
      const LinearWeights out = linear_weights(weights, p + "/out", d, b.heads * b.linear_dim);
      layer.out = PackedLinear(out.weight, out.bias, out.out, out.in, kernels::Epilogue::none, true,
                               last ? kernels::Rows::exact : kernels::Rows::padded);
      layers_.push_back(std::move(layer));
    }
  }

  void run(Workspace& ws, float* x, float* state) const override;

 private:
  int64_t uvqk_width() const {
    return 2 * spec_.blocks.heads * (spec_.blocks.linear_dim + spec_.blocks.attention_dim);
  }

  ModelSpec spec_;
  std::vector<Layer> layers_;
};

void HstuStack::run(Workspace& ws, float* x, float* state) const {
  const BlockSpec& blocks = spec_.blocks;
  const int64_t batch = static_cast<int64_t>(ws.plans.size());
  const int64_t d = spec_.d, heads = blocks.heads, dqk = blocks.attention_dim, dv = blocks.linear_dim;
  const int64_t width = uvqk_width(), value_width = heads * dv, N = blocks.attention_len;
  const float divisor = static_cast<float>(N);
  const int64_t rows = static_cast<int64_t>(ws.item_rows.size());
  const int64_t capacity = kernels::padded_rows(std::max(rows, batch));
  ws.grow(ws.normed, capacity * d);
  ws.grow(ws.qkv, capacity * width);
  ws.grow(ws.context, capacity * value_width);
  ws.grow(ws.projected, capacity * value_width);
  ws.grow(ws.hidden, kernels::padded_rows(batch) * d);  // the last block's read-out rows of LN(x)
  int64_t longest = 0;
  for (const SequencePlan& p : ws.plans) longest = std::max(longest, p.n_rows);
  ws.grow(ws.scores, kernels::silu_attention_scratch_floats(longest, dqk));
  ws.grow(ws.pair_keys, longest * longest);  // one sequence's bias matrix at a time

  // Each sequence's time buckets b_ij (j <= i), [n, n] from relations[first_row * longest]:
  // query i's gap uses the next slot's time, the last query's the request's `now`.
  ws.relations.resize(static_cast<size_t>(rows * std::max<int64_t>(longest, 1)));
  for (int64_t b = 0; b < batch; ++b) {
    const SequencePlan& p = ws.plans[b];
    if (p.n_rows == 0) continue;
    const SequenceInput& in = ws.inputs[b];
    if (in.times.size() != in.items.size())
      throw Error("hstu: every interaction of the sequence needs a timestamp");
    const int64_t* t = in.times.data() + (in.times.size() - p.kept);
    for (int64_t i = 0; i < p.n_rows; ++i) {
      const int64_t next = i + 1 < p.n_rows ? t[i + 1] : in.now;
      int32_t* r = ws.relations.data() + (p.first_row + i) * longest;
      for (int64_t j = 0; j <= i; ++j) r[j] = time_bucket(next - t[j]);
    }
  }

  float* normed = ws.normed.data();
  float* uvqk = ws.qkv.data();
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const bool last = l + 1 == layers_.size();
    kernels::layer_norm(x, d, rows, d, nullptr, nullptr, blocks.ln_eps, normed, d);
    // Where u, v, q, k of row r (or, in the last block, u and q of sequence b) are: uvqk with
    // row stride `width`, or in the last block [v | k] rows of width vk_width and [u | q] rows.
    const int64_t vk_width = value_width + heads * dqk;
    float* uq = uvqk + capacity * vk_width;  // the last block's [u | q], [batch, vk_width]
    if (!last) {
      layer.uvqk.apply(normed, d, rows, uvqk);  // silu fused
    } else {
      layer.vk.apply(normed, d, rows, uvqk);
      float* readout = ws.hidden.data();
      gather_readout_rows(normed, d, {ws.plans.data(), static_cast<size_t>(batch)}, readout);
      layer.uq.apply(readout, d, batch, uq);
    }
    const int64_t row_width = last ? vk_width : width;
    const int64_t v_at = last ? 0 : value_width, k_at = last ? value_width : 2 * value_width + heads * dqk;

    // Attention per sequence and head: o [rows (or batch), H·dv] in context.
    float* o = ws.context.data();
    for (int64_t b = 0; b < batch; ++b) {
      const SequencePlan& p = ws.plans[b];
      const int64_t n = p.n_rows;
      if (n == 0) {  // an empty history: no rows; its read-out state is 0
        if (last) std::fill(o + b * value_width, o + (b + 1) * value_width, 0.0f);
        continue;
      }
      const int64_t first_query = last ? p.readout : 0, n_q = last ? 1 : n;
      // [n_q, n]: p[N−1−(i−j)] + w[b_ij], once for all heads.
      float* bias = ws.pair_keys.data();
      kernels::offset_index_bias(layer.position_bias, N - 1 - first_query, layer.time_bias,
                                 ws.relations.data() + (p.first_row + first_query) * longest, longest, n_q,
                                 first_query, bias, n);
      const float* m = uvqk + p.first_row * row_width;  // this sequence's rows
      const float* q_rows = last ? uq + b * vk_width + value_width : m + first_query * width + 2 * value_width;
      float* out = o + (last ? b : p.first_row) * value_width;
      for (int64_t e = 0; e < heads; ++e) {
        const float* v = m + v_at + e * dv;
        const float* q = q_rows + e * dqk;
        const float* k = m + k_at + e * dqk;
        kernels::silu_attention_head(q, width, n_q, k, row_width, v, row_width, n, dqk, dv, bias, n, first_query,
                                     divisor, out + e * dv, value_width, ws.scores.data());
      }
    }
    // y = u ⊙ LN(o) on the rows that go on, then x += y·W_oᵀ + b_o.
    const int64_t n_out = last ? batch : rows;
    float* y = ws.projected.data();
    // u as the norm's per-row gamma: the same products as LN(o), then ⊙ u (an affine-free norm
    // times 1 is exact), without a second pass over y.
    for (int64_t r = 0; r < n_out; ++r) {
      if (last && ws.plans[r].n_rows == 0) {
        std::fill(y + r * value_width, y + (r + 1) * value_width, 0.0f);
        continue;
      }
      const float* u = last ? uq + r * vk_width : uvqk + r * width;
      kernels::layer_norm(o + r * value_width, value_width, 1, value_width, u, nullptr, blocks.ln_eps,
                          y + r * value_width, value_width);
    }
    if (last) {
      for (int64_t b = 0; b < batch; ++b) {  // the residual: each read-out row's x
        const SequencePlan& p = ws.plans[b];
        if (p.n_rows > 0)
          std::copy(x + (p.first_row + p.readout) * d, x + (p.first_row + p.readout + 1) * d, state + b * d);
        else
          std::fill(state + b * d, state + (b + 1) * d, 0.0f);
      }
      layer.out.apply_add_norm(y, value_width, batch, state, state, nullptr, nullptr, ws.context.data());
      for (int64_t b = 0; b < batch; ++b)  // an empty history has no row: its state stays 0
        if (ws.plans[b].n_rows == 0) std::fill(state + b * d, state + (b + 1) * d, 0.0f);
    } else {
      layer.out.apply_add_norm(y, value_width, rows, x, x, nullptr, nullptr, ws.context.data());
    }
  }
  if (layers_.empty())
    gather_readout_rows(x, d, {ws.plans.data(), static_cast<size_t>(batch)}, state);
}

// ---- the kind ------------------------------------------------------------------------------

void write_fields(const BlockSpec& b, FieldWriter& w) {
  w.number("ln_eps", b.ln_eps);
  w.integer("heads", b.heads);
  w.integer("n_layers", b.n_layers);
  w.integer("attention_dim", b.attention_dim);
  w.integer("linear_dim", b.linear_dim);
  w.integer("attention_len", b.attention_len);
  w.integer("time_buckets", b.time_buckets);
}

void read_fields(FieldReader& r, BlockSpec& b) {
  b.ln_eps = r.number("ln_eps");
  b.heads = r.integer("heads");
  b.n_layers = r.integer("n_layers");
  b.attention_dim = r.integer("attention_dim");
  b.linear_dim = r.integer("linear_dim");
  b.attention_len = r.integer("attention_len");
  b.time_buckets = r.integer_or("time_buckets", kSourceTimeBuckets);
  b.attention = AttentionKind::causal;
  b.mask_padded_keys = false;
  b.out_projection = true;
}

void validate(const ModelSpec& s) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw Error("model spec: " + message);
  };
  const BlockSpec& b = s.blocks;
  require(b.attention_dim >= 1 && b.attention_dim <= (1 << 16),
          "hstu: attention_dim = " + std::to_string(b.attention_dim) + " (expected 1..65536)");
  require(b.linear_dim >= 1 && b.linear_dim <= (1 << 16),
          "hstu: linear_dim = " + std::to_string(b.linear_dim) + " (expected 1..65536)");
  require(b.heads * (b.attention_dim + b.linear_dim) <= (int64_t{1} << 20), "hstu: heads x (attention_dim + linear_dim) too large");
  require(b.attention_len > s.max_len && b.attention_len <= (int64_t{1} << 20),
          "hstu: attention_len = " + std::to_string(b.attention_len) + " (expected > max_len = " +
              std::to_string(s.max_len) + ": the padded length the model trained with)");
  require(b.time_buckets == kSourceTimeBuckets,
          "hstu: time_buckets = " + std::to_string(b.time_buckets) + " (expected 128, the source's)");
  require(s.input.padding == Padding::right && s.input.positions == Positions::slot_index && !s.input.embed_norm &&
              !s.input.zero_padded_rows,
          "hstu: the input is right padded with 0-based positions (padding = right, positions = slot_index)");
}

void declare_tensors(const ModelSpec& s, std::vector<TensorDecl>& out) {
  const BlockSpec& b = s.blocks;
  for (int64_t i = 0; i < b.n_layers; ++i) {
    const std::string p = tensor_names::layer(i);
    out.push_back({p + "/uvqk/weight", {2 * b.heads * (b.linear_dim + b.attention_dim), s.d}});
    out.push_back({p + "/relative_bias/position/weight", {2 * b.attention_len - 1}});
    out.push_back({p + "/relative_bias/time/weight", {b.time_buckets + 1}});
    declare_linear(out, p + "/out", s.d, b.heads * b.linear_dim);
  }
}

PaddedSlots padded_slots(const ModelSpec&) { return PaddedSlots::by_kind; }

std::unique_ptr<BlockStack> make(const ModelSpec& spec, const WeightMap& weights) {
  return std::make_unique<HstuStack>(spec, weights);
}

}  // namespace

const BlockKindInfo& hstu_kind() {
  static const BlockKindInfo info{write_fields, read_fields, validate, declare_tensors, padded_slots, make};
  return info;
}

}  // namespace seqrec
