// A model's named weights, and the checked look-ups every stage builds its layers with.
// Names are the /-scoped canonical names of required_tensors() (engine/model_spec.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/model_spec.h"
#include "engine/tensor.h"
#include "kernels/gemm.h"

namespace seqrec {

using WeightMap = std::map<std::string, Tensor>;

// The values of `name`, which must have exactly `shape` (seqrec::Error naming it otherwise).
const float* weight(const WeightMap& weights, const std::string& name, const std::vector<int64_t>& shape);

// A linear layer's weight ([out, in], torch's layout) and bias ([out]).
struct LinearWeights {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t out = 0, in = 0;
};
LinearWeights linear_weights(const WeightMap& weights, const std::string& prefix, int64_t out, int64_t in);
// A LayerNorm's gamma/beta ([d] each) with the model's eps.
kernels::NormParams norm_weights(const WeightMap& weights, const std::string& prefix, int64_t d, float eps);

// The same names, declared (required_tensors).
void declare_linear(std::vector<TensorDecl>& out, const std::string& prefix, int64_t out_dim, int64_t in_dim);
void declare_norm(std::vector<TensorDecl>& out, const std::string& prefix, int64_t d);

}  // namespace seqrec
