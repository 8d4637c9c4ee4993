// The engine end to end on small random models: batching, fallbacks, messages, score kinds,
// and the slot layouts of each source.
#include "engine/recommender.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <thread>

#include "engine/error.h"
#include "test_models.h"

namespace seqrec {
namespace {

using testing::offset_ids;
using testing::random_weights;
using testing::small_spec;

Request history(std::vector<std::string> ids, int64_t k = 5) {
  Request r;
  for (size_t i = 0; i < ids.size(); ++i) r.interactions.push_back({ids[i], static_cast<int64_t>(i), std::nullopt});
  r.k = k;
  return r;
}

Response one(const Recommender& rec, const Request& r) {
  Workspace ws;
  return rec.recommend({&r, 1}, ws).front();
}

// Every row goes through the same kernels whatever the batch: a request's scores do not
// depend on its batch-mates, bit for bit.
TEST(Recommender, ABatchAnswersExactlyAsOneByOne) {
  ModelSpec spec = small_spec();
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  std::vector<Request> batch{history({"101"}, 11), history({"103", "104", "105", "101", "109", "110", "102"}, 11),
                             history({"110", "110"}, 11)};
  Workspace ws;
  std::vector<Response> together = rec.recommend(batch, ws);
  for (size_t i = 0; i < batch.size(); ++i) {
    Response alone = one(rec, batch[i]);
    ASSERT_EQ(together[i].recommendations.size(), alone.recommendations.size());
    for (size_t j = 0; j < alone.recommendations.size(); ++j) {
      EXPECT_EQ(together[i].recommendations[j].id, alone.recommendations[j].id);
      EXPECT_EQ(together[i].recommendations[j].score, alone.recommendations[j].score);
    }
  }
}

// Workers run the same model at once; each must get exactly what a lone run gets (oneDNN's
// scratch memory must not be shared between concurrent executions).
TEST(Recommender, ConcurrentWorkersGetExactlyTheLoneAnswer) {
  // Large enough that the GEMMs use scratch memory (1024-row chunks, a wide scoring GEMM).
  ModelSpec spec = small_spec(6000, 200, 64, 2);
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  std::vector<Request> batch;
  for (int i = 0; i < 16; ++i) {
    std::vector<std::string> ids;
    for (int j = 0; j < 100 + (i * 37) % 100; ++j) ids.push_back(std::to_string(100 + (i * 13 + j * 5) % 5999));
    batch.push_back(history(ids, 50));
    batch.back().recommend_seen = true;
  }
  Workspace lone_ws;
  const std::vector<Response> lone = rec.recommend(batch, lone_ws);
  std::vector<std::vector<Response>> got(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      Workspace ws;
      for (int round = 0; round < 20; ++round) got[t] = rec.recommend(batch, ws);
    });
  for (auto& t : threads) t.join();
  for (int t = 0; t < 2; ++t)
    for (size_t i = 0; i < batch.size(); ++i)
      for (size_t j = 0; j < lone[i].recommendations.size(); ++j)
        ASSERT_EQ(got[t][i].recommendations[j].score, lone[i].recommendations[j].score) << "thread " << t;
}

TEST(Recommender, OnlyTheMostRecentMaxLenMatter) {
  ModelSpec spec = small_spec(12, 3);
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Request longer = history({"109", "108", "101", "102", "103"}, 11);
  Request cut = history({"101", "102", "103"}, 11);
  longer.recommend_seen = cut.recommend_seen = true;
  Response a = one(rec, longer), b = one(rec, cut);
  ASSERT_EQ(a.recommendations.size(), b.recommendations.size());
  for (size_t j = 0; j < a.recommendations.size(); ++j) EXPECT_EQ(a.recommendations[j].score, b.recommendations[j].score);
}

TEST(Recommender, HistoryChangesTheScores) {
  ModelSpec spec = small_spec();
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Response a = one(rec, history({"101", "102"}, 11)), b = one(rec, history({"102", "101"}, 11));
  float diff = 0;
  for (size_t j = 0; j < a.recommendations.size(); ++j)
    diff += std::abs(a.recommendations[j].score - b.recommendations[j].score);
  EXPECT_GT(diff, 1e-3f) << "order of the history must matter to a causal model";
}

TEST(Recommender, EmptyHistoryWithoutPopularityUsesTheModelAndSaysSo) {
  ModelSpec spec = small_spec();
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Response r = one(rec, history({}, 3));
  EXPECT_EQ(r.recommendations.size(), 3u);
  ASSERT_TRUE(r.message);
  EXPECT_NE(r.message->find("empty history"), std::string::npos) << *r.message;
}

TEST(Recommender, ColdStartFallsBackToPopularity) {
  ModelSpec spec = small_spec();
  std::vector<uint64_t> counts(spec.n_items, 1);
  counts[7] = 50;  // id 106
  counts[3] = 20;  // id 102
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), counts, std::nullopt);
  Request r = history({"nope", "also-unknown"}, 3);
  Response resp = one(rec, r);
  ASSERT_EQ(resp.recommendations.size(), 3u);
  EXPECT_EQ(resp.recommendations[0].id, "106");
  EXPECT_EQ(resp.recommendations[1].id, "102");
  EXPECT_EQ(resp.recommendations[2].id, "100");  // ties by catalog order
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  EXPECT_FLOAT_EQ(resp.recommendations[0].score, static_cast<float>(50 / total));
  ASSERT_TRUE(resp.message);
  EXPECT_NE(resp.message->find("most popular"), std::string::npos) << *resp.message;
  EXPECT_NE(resp.message->find("nope, also-unknown"), std::string::npos) << *resp.message;
}

TEST(Recommender, NegativeRatingsBelowThresholdAreColdStartButSeen) {
  ModelSpec spec = small_spec();
  std::vector<uint64_t> counts(spec.n_items, 1);
  counts[7] = 50;  // id 106
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), counts, 3.5);
  Request r;
  r.interactions = {{"106", 1, 1.0}};
  r.k = 1;
  Response resp = one(rec, r);
  ASSERT_EQ(resp.recommendations.size(), 1u);
  EXPECT_NE(resp.recommendations[0].id, "106");  // seen, though not positive
}

TEST(Recommender, SaysWhenFewerThanKItemsRemain) {
  ModelSpec spec = small_spec();
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Request r = history({"101"}, 100);
  Response resp = one(rec, r);
  EXPECT_EQ(resp.recommendations.size(), 10u);  // 11 items, one seen
  ASSERT_TRUE(resp.message);
  EXPECT_NE(resp.message->find("Only 10 item(s)"), std::string::npos) << *resp.message;
  EXPECT_FALSE(one(rec, history({"101"}, 3)).message);
}

TEST(Recommender, SoftmaxScoresAreProbabilitiesOverTheCatalog) {
  ModelSpec spec = small_spec();
  spec.scorer.score = ScoreKind::softmax;
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Request r = history({"101", "102"}, 11);
  r.recommend_seen = true;
  Response resp = one(rec, r);
  double sum = 0;
  for (auto& item : resp.recommendations) sum += item.score;
  EXPECT_GT(sum, 0.0);
  EXPECT_LT(sum, 1.0 + 1e-5);  // row 0 holds the rest of the mass
}

TEST(Recommender, SigmoidScoresAreSigmoidOfRaw) {
  ModelSpec raw_spec = small_spec();
  ModelSpec sig_spec = raw_spec;
  sig_spec.scorer.score = ScoreKind::sigmoid;
  Recommender raw(raw_spec, random_weights(raw_spec), offset_ids(raw_spec.n_items), {}, std::nullopt);
  Recommender sig(sig_spec, random_weights(sig_spec), offset_ids(sig_spec.n_items), {}, std::nullopt);
  Request r = history({"103"}, 4);
  Response a = one(raw, r), b = one(sig, r);
  for (size_t j = 0; j < a.recommendations.size(); ++j) {
    EXPECT_EQ(a.recommendations[j].id, b.recommendations[j].id);
    EXPECT_NEAR(b.recommendations[j].score, 1.0 / (1.0 + std::exp(-a.recommendations[j].score)), 1e-6);
  }
}

TEST(Recommender, RejectsACatalogOfTheWrongSize) {
  ModelSpec spec = small_spec();
  EXPECT_THROW(Recommender(spec, random_weights(spec), offset_ids(spec.n_items - 1), {}, std::nullopt), Error);
}

// ---- sequence plans ----------------------------------------------------------------------

struct Planned {
  std::vector<int32_t> items, positions;
  SequencePlan plan;
};

Planned plan_of(const ModelSpec& spec, std::vector<int32_t> sequence) {
  WeightMap w = random_weights(spec);
  InputStage input(spec, w);
  Planned out;
  input.plan(sequence, out.items, out.positions, out.plan);
  return out;
}

TEST(InputPlan, LeftPaddedSlotsBecomeOneWeightedRow) {
  Planned p = plan_of(small_spec(12, 5), {3, 4});
  EXPECT_EQ(p.items, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 4, 5}));  // padded slots have position 0
  EXPECT_EQ(p.plan.first_key_weight, 3.0f);
  EXPECT_EQ(p.plan.readout, 2);
  EXPECT_TRUE(p.plan.causal);
  EXPECT_FALSE(p.plan.zero_first_row);
}

TEST(InputPlan, AFullHistoryHasNoPaddingRow) {
  Planned p = plan_of(small_spec(12, 3), {5, 6, 7, 8});  // the most recent 3 are kept
  EXPECT_EQ(p.items, (std::vector<int32_t>{6, 7, 8}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(p.plan.first_key_weight, 1.0f);
}

TEST(InputPlan, LegacyPositionsZeroThePaddingRow) {
  ModelSpec spec = small_spec(12, 5);
  spec.blocks.kind = BlockKind::sasrec_original;
  spec.input.positions = Positions::slot_index;
  spec.input.zero_padded_rows = true;
  Planned p = plan_of(spec, {3, 4});
  EXPECT_EQ(p.items, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{2, 3, 4}));
  EXPECT_TRUE(p.plan.zero_first_row);
}

TEST(InputPlan, DistinctPaddedSlotsAreAllComputed) {
  ModelSpec spec = small_spec(12, 5);
  spec.input.positions = Positions::slot_index;  // padded slots differ by position: no shortcut
  Planned p = plan_of(spec, {3, 4});
  EXPECT_EQ(p.items, (std::vector<int32_t>{0, 0, 0, 3, 4}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(p.plan.readout, 4);
}

ModelSpec recbole_like(int64_t max_len) {
  ModelSpec spec = small_spec(12, max_len);
  spec.input.padding = Padding::right;
  spec.input.positions = Positions::slot_index;
  spec.blocks.mask_padded_keys = true;
  return spec;
}

TEST(InputPlan, MaskedPaddedKeysAreSkipped) {
  Planned p = plan_of(recbole_like(5), {3, 4});
  EXPECT_EQ(p.items, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(p.plan.readout, 1);
  EXPECT_EQ(p.plan.key_end, 2);
}

TEST(InputPlan, MaskedModelWithNoItemComputesEverySlot) {
  Planned p = plan_of(recbole_like(4), {});
  EXPECT_EQ(p.items, (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.plan.key_begin, p.plan.key_end);  // every key masked: the kernel attends to all
}

TEST(InputPlan, MaskTokenLayouts) {
  ModelSpec spec = recbole_like(4);
  spec.blocks.attention = AttentionKind::bidirectional;
  spec.readout.slot = Readout::mask_token;
  Planned p = plan_of(spec, {3, 4, 5});
  EXPECT_EQ(p.items, (std::vector<int32_t>{3, 4, 5, 12}));  // [MASK] = row n_items, at slot len
  EXPECT_EQ(p.plan.readout, 3);
  EXPECT_FALSE(p.plan.causal);

  spec.readout.slot = Readout::mask_token_drop_first;
  p = plan_of(spec, {3, 4, 5});
  EXPECT_EQ(p.items, (std::vector<int32_t>{4, 5, 12}));  // the oldest falls out even when len < L
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(p.plan.readout, 2);
  p = plan_of(spec, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(p.items, (std::vector<int32_t>{4, 5, 6, 12}));
}

// ---- the newer block kinds --------------------------------------------------------------

Request timed(std::vector<std::pair<std::string, int64_t>> items, int64_t k = 11,
              std::optional<int64_t> now = std::nullopt) {
  Request r;
  for (auto& [id, t] : items) r.interactions.push_back({id, t, std::nullopt});
  r.k = k;
  r.recommend_seen = true;
  r.now = now;
  return r;
}

std::vector<float> scores_of(const Response& r) {
  std::vector<float> out;
  for (const auto& item : r.recommendations) out.push_back(item.score);
  return out;
}

TEST(NewerKinds, ABatchAnswersExactlyAsOneByOne) {
  for (const ModelSpec& spec : {testing::tisasrec_spec(), testing::hstu_spec(), testing::gsasrec_spec()}) {
    Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
    const std::vector<Request> batch{
        timed({{"101", 10}}, 11, 50),
        timed({{"103", 5}, {"104", 6}, {"105", 90}, {"101", 91}, {"109", 300}, {"110", 301}, {"102", 305},
               {"106", 400}}, 11, 1000),
        timed({{"110", 1}, {"110", 1}}, 11, 2)};
    Workspace ws;
    const std::vector<Response> together = rec.recommend(batch, ws);
    for (size_t i = 0; i < batch.size(); ++i) {
      const Response alone = one(rec, batch[i]);
      ASSERT_FALSE(alone.error);
      ASSERT_EQ(together[i].recommendations.size(), alone.recommendations.size()) << to_string(spec.blocks.kind);
      for (size_t j = 0; j < alone.recommendations.size(); ++j) {
        EXPECT_EQ(together[i].recommendations[j].id, alone.recommendations[j].id);
        EXPECT_EQ(together[i].recommendations[j].score, alone.recommendations[j].score) << to_string(spec.blocks.kind);
      }
    }
  }
}

TEST(NewerKinds, TimeModelsReadTheTimestampsAndOthersOnlyTheirOrder) {
  const auto differs = [](const ModelSpec& spec, const Request& a, const Request& b) {
    Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
    return scores_of(one(rec, a)) != scores_of(one(rec, b));
  };
  const Request early = timed({{"101", 100}, {"102", 200}, {"103", 300}}, 11, 400);
  const Request late = timed({{"101", 100}, {"102", 200}, {"103", 3000000}}, 11, 400);
  EXPECT_TRUE(differs(testing::tisasrec_spec(), early, late)) << "TiSASRec reads the intervals";
  EXPECT_TRUE(differs(testing::hstu_spec(), early, late)) << "HSTU reads the gaps";
  EXPECT_FALSE(differs(testing::small_spec(), early, late)) << "SASRec reads only the order";
  EXPECT_FALSE(differs(testing::gsasrec_spec(), early, late));
  const Request now_later = timed({{"101", 100}, {"102", 200}, {"103", 300}}, 11, 400000000);
  EXPECT_TRUE(differs(testing::hstu_spec(), early, now_later)) << "HSTU reads now";
  EXPECT_FALSE(differs(testing::tisasrec_spec(), early, now_later)) << "TiSASRec does not";
}

TEST(NewerKinds, AMissingTimestampIsThatRequestsErrorAlone) {
  const ModelSpec spec = testing::tisasrec_spec();
  Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
  Request missing = timed({{"101", 1}, {"102", 2}});
  missing.interactions[1].timestamp.reset();
  const std::vector<Request> batch{timed({{"103", 1}}), missing, timed({{"104", 7}})};
  Workspace ws;
  const std::vector<Response> out = rec.recommend(batch, ws);
  ASSERT_TRUE(out[1].error);
  EXPECT_EQ(out[1].error->code, "invalid_request");
  EXPECT_NE(out[1].error->message.find("interaction 1 (item '102')"), std::string::npos) << out[1].error->message;
  EXPECT_FALSE(out[0].error);
  EXPECT_FALSE(out[2].error);
  EXPECT_EQ(scores_of(out[2]), scores_of(one(rec, batch[2])));
}

TEST(NewerKinds, AnEmptyHistoryIsAnsweredByTheModel) {
  for (const ModelSpec& spec : {testing::tisasrec_spec(), testing::hstu_spec()}) {
    Recommender rec(spec, random_weights(spec), offset_ids(spec.n_items), {}, std::nullopt);
    const Response r = one(rec, timed({{"nope", 1}}, 5, 10));
    EXPECT_FALSE(r.error);
    EXPECT_EQ(r.recommendations.size(), 5u) << to_string(spec.blocks.kind);
    ASSERT_TRUE(r.message);
    EXPECT_NE(r.message->find("empty history"), std::string::npos) << *r.message;
  }
}

}  // namespace
}  // namespace seqrec
