// The one place the GEMM backend is chosen (OpenBLAS cblas today; oneDNN matmul
// primitives plug in here). Everything else calls these functions.
#pragma once

#include <cstdint>

namespace seqrec::kernels {

// C[m, n] = alpha * op(A) · op(B) + beta * C, all row-major.
//   A: [m, k] (or [k, m] when trans_a), leading dimension lda
//   B: [k, n] (or [n, k] when trans_b), leading dimension ldb
//   C: [m, n], leading dimension ldc
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Threads the GEMM backend may use inside one call (the worker pool calls this once).
void set_gemm_threads(int threads);

}  // namespace seqrec::kernels
