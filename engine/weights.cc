#include "engine/weights.h"

#include "engine/error.h"

namespace seqrec {

const float* weight(const WeightMap& weights, const std::string& name, const std::vector<int64_t>& shape) {
  auto it = weights.find(name);
  if (it == weights.end()) throw Error("model weights: missing tensor '" + name + "'");
  if (it->second.shape != shape)
    throw Error("model weights: tensor '" + name + "': shape " + shape_string(it->second.shape) + ", expected " +
                shape_string(shape));
  return it->second.ptr();
}

LinearWeights linear_weights(const WeightMap& weights, const std::string& prefix, int64_t out, int64_t in) {
  return LinearWeights{weight(weights, prefix + "/weight", {out, in}), weight(weights, prefix + "/bias", {out}), out,
                       in};
}

kernels::NormParams norm_weights(const WeightMap& weights, const std::string& prefix, int64_t d, float eps) {
  return kernels::NormParams{weight(weights, prefix + "/weight", {d}), weight(weights, prefix + "/bias", {d}), eps};
}

void declare_linear(std::vector<TensorDecl>& out, const std::string& prefix, int64_t out_dim, int64_t in_dim) {
  out.push_back({prefix + "/weight", {out_dim, in_dim}});  // torch Linear layout: [out, in]
  out.push_back({prefix + "/bias", {out_dim}});
}

void declare_norm(std::vector<TensorDecl>& out, const std::string& prefix, int64_t d) {
  out.push_back({prefix + "/weight", {d}});
  out.push_back({prefix + "/bias", {d}});
}

}  // namespace seqrec
