// Small random models for engine tests (no files, no PyTorch).
#pragma once

#include <random>
#include <string>
#include <vector>

#include "engine/model_spec.h"
#include "engine/recommender.h"

namespace seqrec::testing {

// Seeded normal noise of standard deviation `scale`: kernel and model test inputs.
inline std::vector<float> noise(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A SASRec.pytorch-like spec (post_ln, left padding, causal) of the given sizes.
inline ModelSpec small_spec(int64_t n_items = 12, int64_t max_len = 6, int64_t d = 8, int64_t heads = 2) {
  ModelSpec s;
  s.block = Block::post_ln;
  s.embed_scale = true;
  s.final_norm = true;
  s.positions = Positions::slot_or_zero;
  s.score = ScoreKind::raw;
  s.max_len = max_len;
  s.d = d;
  s.heads = heads;
  s.ffn_dim = d;
  s.n_layers = 2;
  s.n_items = n_items;
  return s;
}

// Every tensor the spec requires, filled with seeded normal noise (norm weights near 1).
inline WeightMap random_weights(const ModelSpec& spec, unsigned seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  WeightMap weights;
  for (const TensorDecl& decl : required_tensors(spec)) {
    Tensor t(decl.shape);
    const bool norm_gain = decl.name.find("norm/weight") != std::string::npos;
    for (float& v : t.data) v = (norm_gain ? 1.0f : 0.0f) + noise(rng);
    weights.emplace(decl.name, std::move(t));
  }
  return weights;
}

// Catalog ids "[PAD]", "100", "101", ...: row r has id 99 + r.
inline std::vector<std::string> offset_ids(int64_t n_items) {
  std::vector<std::string> ids{"[PAD]"};
  for (int64_t r = 1; r < n_items; ++r) ids.push_back(std::to_string(99 + r));
  return ids;
}

}  // namespace seqrec::testing
