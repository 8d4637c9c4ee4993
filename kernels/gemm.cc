#include "kernels/gemm.h"

#include "kernels/cpu_isa.h"
#include "kernels/layer_norm.h"
#include "kernels/panel_gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <dnnl.hpp>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace seqrec::kernels {

namespace {

// Weights up to this size (16 MB) are packed for panel_gemm.
constexpr int64_t kMaxPanelFloats = int64_t{4} << 20;

// oneDNN picks its own instructions; it gets no more than the path the kernels run (forcing
// SEQREC_CPU_ISA then tests what a CPU of that class would run). Must precede its first use.
void cap_onednn_isa() {
  try {
    switch (cpu_isa()) {
      case CpuIsa::portable: dnnl::set_max_cpu_isa(dnnl::cpu_isa::sse41); break;
      case CpuIsa::avx2: dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2); break;
      case CpuIsa::avx512: dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx512_core); break;
      case CpuIsa::avx512_vnni: break;  // everything it finds
    }
  } catch (const dnnl::error&) {
    // oneDNN was used before (its ISA is fixed by then): it keeps what it chose.
  }
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine = [] {
    cap_onednn_isa();
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

using MemoryDesc = dnnl::memory::desc;

// A matmul primitive descriptor: oneDNN 3 takes the memory descriptors directly, oneDNN 2
// through matmul::desc (removed in 3.0).
dnnl::matmul::primitive_desc matmul_primitive_desc(const MemoryDesc& src, const MemoryDesc& weights,
                                                   const MemoryDesc* bias, const MemoryDesc& dst,
                                                   const dnnl::primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
  return bias ? dnnl::matmul::primitive_desc(cpu_engine(), src, weights, *bias, dst, attr)
              : dnnl::matmul::primitive_desc(cpu_engine(), src, weights, dst, attr);
#else
  const auto desc = bias ? dnnl::matmul::desc(src, weights, *bias, dst) : dnnl::matmul::desc(src, weights, dst);
  return dnnl::matmul::primitive_desc(desc, attr, cpu_engine());
#endif
}

// One in-order stream per thread: oneDNN primitives may execute concurrently, streams may not.
// Every oneDNN call here runs on one thread — the parallelism is the inference workers —
// and Debian's oneDNN threads with OpenMP, whose thread count is per calling thread and is
// captured when a primitive is created: so pin it to 1 for each thread that gets a stream.
dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream = [] {
    omp_set_num_threads(1);
    return dnnl::stream(cpu_engine());
  }();
  return stream;
}

dnnl::algorithm eltwise(Epilogue e) {
  switch (e) {
    case Epilogue::relu: return dnnl::algorithm::eltwise_relu;
    case Epilogue::gelu_erf: return dnnl::algorithm::eltwise_gelu_erf;
    case Epilogue::gelu_tanh: return dnnl::algorithm::eltwise_gelu_tanh;
    case Epilogue::swish: return dnnl::algorithm::eltwise_swish;
    case Epilogue::tanh: return dnnl::algorithm::eltwise_tanh;
    case Epilogue::sigmoid: return dnnl::algorithm::eltwise_logistic;
    case Epilogue::none: break;
  }
  return dnnl::algorithm::undef;
}

}  // namespace

// A primitive and the scratch memory it needs per execution. Scratch is the caller's
// (scratchpad_mode::user): oneDNN's library-managed scratchpad may be shared between
// concurrent executions, and two workers running one primitive at once must not share it.
struct Compiled {
  dnnl::matmul primitive;
  dnnl::memory::desc scratchpad;
};

Compiled compile(const dnnl::matmul::primitive_desc& pd) { return Compiled{dnnl::matmul(pd), pd.scratchpad_desc()}; }

struct PackedLinear::Impl {
  // Packed weights up to kMaxPanelFloats run panel_gemm (where it is native); the rest oneDNN.
  bool use_panels = false;
  WeightPanels panels;
  Epilogue epilogue = Epilogue::none;
  Compiled any_rows;  // run-time row count
  dnnl::memory weights;
  dnnl::memory bias;
  bool has_bias = false;
  Rows rows = Rows::exact;
  dnnl::primitive_attr attr;
  // Fixed-shape primitives by (padded rows, input row stride), made on first use.
  std::mutex mutex;
  std::unordered_map<uint64_t, Compiled> fixed;

  const Compiled& fixed_primitive(int64_t rows, int64_t ld_x, int64_t in, int64_t out) {
    const uint64_t key = static_cast<uint64_t>(rows) << 32 | static_cast<uint64_t>(ld_x);
    std::lock_guard lock(mutex);
    auto it = fixed.find(key);
    if (it != fixed.end()) return it->second;
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc src({rows, in}, dt::f32, {ld_x, 1});
    const dnnl::memory::desc dst({rows, out}, dt::f32, {out, 1});
    const MemoryDesc bias_desc = has_bias ? bias.get_desc() : MemoryDesc();
    return fixed
        .emplace(key, compile(matmul_primitive_desc(src, weights.get_desc(), has_bias ? &bias_desc : nullptr, dst, attr)))
        .first->second;
  }
};

WeightPanels pack_panels(const float* weight, const float* bias, int64_t out, int64_t in) {
  WeightPanels w;
  w.out = out;
  w.in = in;
  const int64_t n_panels = (out + kPanelWidth - 1) / kPanelWidth;
  w.panels.assign(static_cast<size_t>(n_panels * in * kPanelWidth), 0.0f);
  w.bias.assign(static_cast<size_t>(n_panels * kPanelWidth), 0.0f);
  for (int64_t o = 0; o < out; ++o) {
    float* column = w.panels.data() + (o / kPanelWidth) * in * kPanelWidth + o % kPanelWidth;
    for (int64_t c = 0; c < in; ++c) column[c * kPanelWidth] = weight[o * in + c];
    if (bias) w.bias[static_cast<size_t>(o)] = bias[o];
  }
  return w;
}

PackedLinear::PackedLinear() = default;
PackedLinear::~PackedLinear() = default;
PackedLinear::PackedLinear(PackedLinear&&) noexcept = default;
PackedLinear& PackedLinear::operator=(PackedLinear&&) noexcept = default;

PackedLinear::PackedLinear(const float* weight, const float* bias, int64_t out, int64_t in, Epilogue epilogue,
                           bool pack, Rows rows)
    : impl_(std::make_unique<Impl>()), out_(out), in_(in) {
  impl_->rows = rows;
  if (pack && out * in <= kMaxPanelFloats) {
    impl_->use_panels = true;
    impl_->panels = pack_panels(weight, bias, out, in);
    impl_->epilogue = epilogue;
    return;
  }
  thread_stream();  // pins this thread's OpenMP to 1 before the primitive is created
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  const dnnl::memory::dim runtime = DNNL_RUNTIME_DIM_VAL;
  dnnl::engine& engine = cpu_engine();
  // Rows and row strides are given per call; K and N are fixed.
  const dnnl::memory::desc src({runtime, in}, dt::f32, {runtime, 1});
  const dnnl::memory::desc dst({runtime, out}, dt::f32, {runtime, 1});
  const dnnl::memory::desc plain_weights({in, out}, dt::f32, tag::ba);  // Wᵀ viewed in place
  const dnnl::memory::desc weights_any = pack ? dnnl::memory::desc({in, out}, dt::f32, tag::any) : plain_weights;
  const dnnl::memory::desc bias_desc({1, out}, dt::f32, tag::ab);
  dnnl::primitive_attr& attr = impl_->attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (epilogue != Epilogue::none) {
    dnnl::post_ops ops;
    const float alpha = epilogue == Epilogue::swish ? 1.0f : 0.0f;
#if DNNL_VERSION_MAJOR >= 3
    ops.append_eltwise(eltwise(epilogue), alpha, 0.0f);
#else
    ops.append_eltwise(1.0f, eltwise(epilogue), alpha, 0.0f);
#endif
    attr.set_post_ops(ops);
  }
  impl_->has_bias = bias != nullptr;
  const dnnl::matmul::primitive_desc pd =
      matmul_primitive_desc(src, weights_any, impl_->has_bias ? &bias_desc : nullptr, dst, attr);
  impl_->any_rows = Compiled{dnnl::matmul(pd), pd.scratchpad_desc()};
  dnnl::memory user_weights(plain_weights, engine, const_cast<float*>(weight));
  if (pd.weights_desc() == plain_weights) {
    impl_->weights = user_weights;  // already the layout oneDNN wants (or told to use it)
  } else {
    impl_->weights = dnnl::memory(pd.weights_desc(), engine);
    dnnl::reorder(user_weights, impl_->weights).execute(thread_stream(), user_weights, impl_->weights);
    thread_stream().wait();
  }
  if (impl_->has_bias) impl_->bias = dnnl::memory(bias_desc, engine, const_cast<float*>(bias));
}

bool PackedLinear::panel_packed() const { return impl_ && impl_->use_panels; }

void PackedLinear::apply(const float* x, int64_t ld_x, int64_t rows, float* y) const {
  if (rows == 0) return;
  if (impl_->use_panels) return panel_gemm(impl_->panels, x, ld_x, rows, impl_->epilogue, y);
  using dt = dnnl::memory::data_type;
  dnnl::stream& stream = thread_stream();  // first: pins this thread's OpenMP before any primitive is made
  dnnl::engine& engine = cpu_engine();
  auto run = [&](const Compiled& compiled, const float* x_rows, int64_t m, float* y_rows) {
    dnnl::memory src({{m, in_}, dt::f32, {ld_x, 1}}, engine, const_cast<float*>(x_rows));
    dnnl::memory dst({{m, out_}, dt::f32, {out_, 1}}, engine, y_rows);
    // The C API takes the arguments as an array: no map to build on every call.
    dnnl_exec_arg_t args[5];
    int n = 0;
    args[n++] = {DNNL_ARG_SRC, src.get()};
    args[n++] = {DNNL_ARG_WEIGHTS, impl_->weights.get()};
    args[n++] = {DNNL_ARG_DST, dst.get()};
    if (impl_->has_bias) args[n++] = {DNNL_ARG_BIAS, impl_->bias.get()};
    dnnl::memory scratchpad;
    if (const size_t scratch_bytes = compiled.scratchpad.get_size(); scratch_bytes > 0) {
      thread_local std::vector<float> scratch;  // this thread's, grown to the largest need
      if (scratch.size() * sizeof(float) < scratch_bytes) scratch.resize(scratch_bytes / sizeof(float) + 1);
      scratchpad = dnnl::memory(compiled.scratchpad, engine, scratch.data());
      args[n++] = {DNNL_ARG_SCRATCHPAD, scratchpad.get()};
    }
    dnnl::error::wrap_c_api(dnnl_primitive_execute(compiled.primitive.get(), stream.get(), n, args),
                            "matmul execution failed");
  };
  if (impl_->rows == Rows::exact) {
    run(impl_->any_rows, x, rows, y);
  } else {
    for (int64_t first = 0; first < rows; first += kMaxChunkRows) {
      const int64_t m = padded_rows(std::min(kMaxChunkRows, rows - first));
      run(impl_->fixed_primitive(m, ld_x, in_, out_), x + first * ld_x, m, y + first * out_);
    }
  }
  stream.wait();
}

void PackedLinear::apply_add_norm(const float* x, int64_t ld_x, int64_t rows, const float* residual, float* sum_out,
                                  const NormParams* norm, float* normed_out, float* scratch) const {
  if (rows == 0) return;
  float* sum = sum_out ? sum_out : normed_out;  // where s goes (normed in place when no sum_out)
  if (impl_->use_panels) {
    panel_gemm(impl_->panels, x, ld_x, rows, impl_->epilogue, sum, residual);
  } else {
    apply(x, ld_x, rows, scratch);
    for (int64_t i = 0; i < rows * out_; ++i) sum[i] = scratch[i] + residual[i];
  }
  // The norm stays a pass of its own: fused into the tile's epilogue it measured slower on
  // ml1m (its reductions lengthen each tile's critical path).
  if (norm) layer_norm(sum, out_, rows, out_, norm->gamma, norm->beta, norm->eps, normed_out, out_);
}

void PackedLinear::prepare(int64_t max_rows, int64_t ld_x) const {
  if (impl_->rows != Rows::padded || impl_->use_panels) return;
  thread_stream();  // pins this thread's OpenMP first
  for (int64_t m = kRowStep; m <= padded_rows(std::min(max_rows, kMaxChunkRows)); m += kRowStep)
    impl_->fixed_primitive(m, ld_x, in_, out_);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

void set_gemm_threads(int threads) { openblas_set_num_threads(threads); }

}  // namespace seqrec::kernels
