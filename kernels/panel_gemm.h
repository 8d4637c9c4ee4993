// A small-row GEMM over weights packed once into 16-column panels: the read-out rows of the
// last block and the batch's scoring rows, where a library call's fixed cost (descriptors,
// memory objects, dispatch: ~1.5 µs) is larger than the product itself.
//
// Every row is computed the same way whatever the number of rows: y[r, o] = Σ_c x[r, c]·W[o, c]
// accumulated in c order with kernels/multiply_add.h, then + bias, then the activation. So a
// request's result does not depend on its batch-mates. Register-tiled AVX-512 on the AVX-512
// paths; the same lanes, vectorized by the compiler, on AVX2 (same bits) and portable.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/gemm.h"  // Epilogue

namespace seqrec::kernels {

inline constexpr int64_t kPanelWidth = 16;

// W packed into panels of 16 output columns:
//   panels: [ceil(out/16), in, 16]  (panel p holds outputs 16p..16p+15; columns past `out` are 0)
//   bias:   [ceil(out/16)·16]       (0 where the layer has none)
struct WeightPanels {
  int64_t out = 0, in = 0;
  std::vector<float> panels;
  std::vector<float> bias;
};

// weight: [out, in] row-major (torch Linear); bias: [out] or null.
WeightPanels pack_panels(const float* weight, const float* bias, int64_t out, int64_t in);

// y: [rows, out] (row stride out) = epilogue(x: [rows, in] (row stride ld_x) · Wᵀ + bias)
// (+ residual: [rows, out], row stride out, which y may alias — the transformer's residual
// add, fused). The AVX-512 activations are kernels/simd_math.h's (absolute error <= ~2e-7).
void panel_gemm(const WeightPanels& w, const float* x, int64_t ld_x, int64_t rows, Epilogue epilogue, float* y,
                const float* residual = nullptr);

}  // namespace seqrec::kernels
