// Element-wise activations, in place over a contiguous buffer of n floats.
#pragma once

#include <cstdint>

namespace seqrec::kernels {

void relu(float* x, int64_t n);
void gelu_erf(float* x, int64_t n);   // x * 0.5 * (1 + erf(x / sqrt(2)))  (torch/RecBole "gelu")
void gelu_tanh(float* x, int64_t n);  // 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
void swish(float* x, int64_t n);      // x * sigmoid(x)
void tanh(float* x, int64_t n);
void sigmoid(float* x, int64_t n);

// y[i] += bias[i % dim] over rows of length dim: the bias of a linear layer.
//   y: [rows, dim] contiguous; bias: [dim]
void add_bias(float* y, int64_t rows, int64_t dim, const float* bias);

}  // namespace seqrec::kernels
