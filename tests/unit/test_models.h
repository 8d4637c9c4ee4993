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
  s.blocks.kind = BlockKind::post_ln;
  s.input.embed_scale = true;
  s.readout.final_norm = true;
  s.input.positions = Positions::slot_or_zero;
  s.scorer.score = ScoreKind::raw;
  s.max_len = max_len;
  s.d = d;
  s.blocks.heads = heads;
  s.blocks.ffn_dim = d;
  s.blocks.n_layers = 2;
  s.n_items = n_items;
  return s;
}

// TiSASRec-like: item embedding alone at the input, time intervals up to `span` in attention.
inline ModelSpec tisasrec_spec(int64_t n_items = 12, int64_t max_len = 6, int64_t d = 8, int64_t heads = 2,
                               int64_t span = 5) {
  ModelSpec s;
  s.d = d;
  s.max_len = max_len;
  s.n_items = n_items;
  s.input.embed_scale = true;
  s.input.positions = Positions::none;
  s.input.padding = Padding::left;
  s.input.zero_padded_rows = true;
  s.blocks.kind = BlockKind::tisasrec;
  s.blocks.heads = heads;
  s.blocks.n_layers = 2;
  s.blocks.time_span = span;
  s.blocks.activation = Activation::relu;
  s.blocks.attention = AttentionKind::causal;
  s.blocks.out_projection = false;
  s.readout.final_norm = true;
  s.scorer.score = ScoreKind::raw;
  return s;
}

// HSTU-like: right padded, SiLU attention with position and time biases, cosine scores.
inline ModelSpec hstu_spec(int64_t n_items = 12, int64_t max_len = 6, int64_t d = 8, int64_t heads = 2) {
  ModelSpec s;
  s.d = d;
  s.max_len = max_len;
  s.n_items = n_items;
  s.input.embed_scale = true;
  s.input.positions = Positions::slot_index;
  s.input.padding = Padding::right;
  s.blocks.kind = BlockKind::hstu;
  s.blocks.heads = heads;
  s.blocks.n_layers = 2;
  s.blocks.attention_dim = 3;
  s.blocks.linear_dim = 5;
  s.blocks.attention_len = max_len + 4;
  s.blocks.ln_eps = 1e-6f;
  s.readout.l2_normalize = true;
  s.scorer.separate_table = true;
  s.scorer.score = ScoreKind::raw;
  return s;
}

// gSASRec-like: sasrec_original blocks without an output projection, a separate output table.
inline ModelSpec gsasrec_spec(int64_t n_items = 12, int64_t max_len = 6, int64_t d = 8, int64_t heads = 2) {
  ModelSpec s = small_spec(n_items, max_len, d, heads);
  s.blocks.kind = BlockKind::sasrec_original;
  s.blocks.out_projection = false;
  s.blocks.mask_padded_keys = true;
  s.blocks.activation = Activation::none;
  s.blocks.ln_eps = 1e-5f;
  s.input.embed_scale = false;
  s.input.positions = Positions::slot_index;
  s.input.zero_padded_rows = true;
  s.scorer.separate_table = true;
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
    if (decl.name.find("relative_bias") != std::string::npos)  // HSTU's biases: small, as trained
      for (float& v : t.data) v *= 0.1f;
    weights.emplace(decl.name, std::move(t));
  }
  return weights;
}

// A request prepared as the recommender prepares it, and its model input.
inline PreparedRequest prepared_for(const Recommender& rec, const Request& r) {
  return prepare_request(r, rec.catalog(), prepare_rules(rec.model().spec(), rec.rating_threshold()));
}
inline SequenceInput input_of(const PreparedRequest& p) { return SequenceInput{p.sequence, p.times, p.now}; }

// The answer the recommender gives a request whose full logits are `logits` (the select and
// answer stages over them): the reference the faster paths are checked against.
inline std::vector<ScoredItem> rank_logits(const Recommender& rec, const Request& r, const float* logits) {
  const PreparedRequest p = prepared_for(rec, r);
  RankScratch scratch;
  std::vector<int32_t> rows;
  const int64_t found = select_rows(logits, rec.catalog(), r, p, scratch, rows);
  std::vector<float> raw;
  for (int64_t j = 0; j < found; ++j) raw.push_back(logits[rows[j]]);
  ScoreReport report(rec.model().spec().scorer);
  report.set_logits(logits, rec.model().spec().n_items);
  return answer(r, p, rec.catalog(), AnswerKind::model, std::span<const int32_t>(rows.data(), found), raw, report)
      .recommendations;
}

// Catalog ids "[PAD]", "100", "101", ...: row r has id 99 + r.
inline std::vector<std::string> offset_ids(int64_t n_items) {
  std::vector<std::string> ids{"[PAD]"};
  for (int64_t r = 1; r < n_items; ++r) ids.push_back(std::to_string(99 + r));
  return ids;
}

}  // namespace seqrec::testing
