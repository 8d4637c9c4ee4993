// The one place the GEMM backends are chosen:
//  - PackedLinear: y = x·Wᵀ + b (+ activation) for weights known at load, packed once.
//    Weights up to 16 MB run panel_gemm (kernels/panel_gemm.h): a register-tiled kernel with
//    no per-call setup — the encoder's products are small (tens to hundreds of rows, K = d),
//    and oneDNN's fixed cost per call (descriptors, memory objects, dispatch, ~1.5 µs) was a
//    third of a short request. Larger tables (a big catalog's scoring) use a oneDNN matmul
//    primitive created once, with W reordered once into oneDNN's preferred
//    layout and the row count M left to run time; per call only `execute` (the oneDNN
//    examples' pattern). Either way a row's result does not depend on the other rows of
//    the call, and each call computes on the calling thread only: parallelism comes from
//    the callers (the inference workers), never from inside a GEMM.
//  - sgemm: a general product for one-off shapes (OpenBLAS).
#pragma once

#include <cstdint>
#include <memory>

namespace seqrec::kernels {

// What PackedLinear applies to its output, fused into the GEMM.
enum class Epilogue { none, relu, gelu_erf, gelu_tanh, swish, tanh, sigmoid };

// A layer norm's parameters: y = (x − mean) / sqrt(var + eps) · gamma + beta over a row.
struct NormParams {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float eps = 1e-5f;
};

// How PackedLinear's oneDNN path treats the row count M (panel_gemm needs neither):
//  - exact:  one primitive for any M (oneDNN's run-time M);
//  - padded: M is rounded up to a multiple of kRowStep and run in chunks of at most
//    kMaxChunkRows by primitives compiled for that M (oneDNN's brgemm, ~2x faster on the
//    encoder's shapes), made on first use and kept. Every row is computed by the same kind
//    of kernel whatever the batch, so a request's scores do not depend on its batch-mates.
//    The caller's x and y must have room for padded_rows(M) rows.
enum class Rows { exact, padded };
inline constexpr int64_t kRowStep = 16;
inline constexpr int64_t kMaxChunkRows = 1024;
inline int64_t padded_rows(int64_t rows) { return (rows + kRowStep - 1) / kRowStep * kRowStep; }

class PackedLinear {
 public:
  PackedLinear();
  // weight: [out, in] row-major (torch Linear); bias: [out] or null. With pack = false
  // the weight is used in place (no copy: for tables too large to hold twice).
  PackedLinear(const float* weight, const float* bias, int64_t out, int64_t in, Epilogue epilogue = Epilogue::none,
               bool pack = true, Rows rows = Rows::exact);
  ~PackedLinear();
  PackedLinear(PackedLinear&&) noexcept;
  PackedLinear& operator=(PackedLinear&&) noexcept;

  // y: [rows, out] (row stride out) = epilogue(x: [rows, in] (row stride ld_x) · Wᵀ + b).
  // Safe to call from several threads at once. With Rows::padded, rows up to
  // padded_rows(rows) of x are read and of y written.
  void apply(const float* x, int64_t ld_x, int64_t rows, float* y) const;

  // s = x·Wᵀ + b + residual — the transformer's residual add, fused into the product when
  // the layer is panel-packed — then sum_out = s (if not null) and normed_out =
  // layer_norm(s) (if norm). residual / sum_out / normed_out: [rows, out], row stride out;
  // either output may alias residual. scratch: room for padded_rows(rows) · out floats,
  // aliasing none of the others (the oneDNN path's product goes there first).
  void apply_add_norm(const float* x, int64_t ld_x, int64_t rows, const float* residual, float* sum_out,
                      const NormParams* norm, float* normed_out, float* scratch) const;

  // Rows::padded: compiles now the primitives for every padded row count up to max_rows
  // with input row stride ld_x, so the first requests do not wait for them.
  void prepare(int64_t max_rows, int64_t ld_x) const;

  // Whether this layer runs panel_gemm (its rows then match kernels::exact_score's bits).
  bool panel_packed() const;

  int64_t out() const { return out_; }
  int64_t in() const { return in_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t out_ = 0, in_ = 0;
};

// C[m, n] = alpha * op(A) · op(B) + beta * C, all row-major.
//   A: [m, k] (or [k, m] when trans_a), leading dimension lda
//   B: [k, n] (or [n, k] when trans_b), leading dimension ldb
//   C: [m, n], leading dimension ldc
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Threads OpenBLAS (sgemm) may use inside one call (a process-wide setting).
void set_gemm_threads(int threads);

}  // namespace seqrec::kernels
