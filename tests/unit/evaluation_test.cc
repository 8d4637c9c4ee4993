// The offline evaluation (engine/evaluation.h): rank and tie rules, metric arithmetic, the
// negatives' generator, the split, and evaluate() against a brute-force recomputation.
#include "engine/evaluation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "engine/error.h"
#include "engine/request.h"
#include "test_models.h"

namespace seqrec {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(EvaluationRank, TiesGoToTheLowerCatalogRow) {
  //                          pad   1     2     3     4
  const std::vector<float> s = {0.f, 1.0f, 2.0f, 2.0f, 0.5f};
  const std::vector<int32_t> all = {1, 2, 3, 4};
  EXPECT_EQ(rank_among(s.data(), 3, all), 1);  // row 2 ties with it and comes first
  EXPECT_EQ(rank_among(s.data(), 2, all), 0);  // row 3 ties with it and comes after
  EXPECT_EQ(rank_among(s.data(), 1, all), 2);
  EXPECT_EQ(rank_among(s.data(), 4, all), 3);
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 3, {}), 1);
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 2, {}), 0);
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 4, {}), 3);
  // Excluded rows do not count, whether they beat the target or not.
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 3, std::vector<int32_t>{2}), 0);
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 4, std::vector<int32_t>{1, 2}), 1);
  EXPECT_EQ(rank_in_catalog(s.data(), 5, 1, std::vector<int32_t>{4}), 2);
  // Duplicates and the target itself among the candidates are ignored.
  EXPECT_EQ(rank_among(s.data(), 4, std::vector<int32_t>{4, 2, 2, 2, 1}), 2);
}

TEST(EvaluationRank, NanRanksBelowEverything) {
  const std::vector<float> s = {0.f, kNaN, 1.0f, kNaN, -5.0f};
  const std::vector<int32_t> all = {1, 2, 3, 4};
  EXPECT_EQ(rank_among(s.data(), 4, all), 1);  // only row 2 beats -5
  EXPECT_EQ(rank_among(s.data(), 2, all), 0);
  EXPECT_EQ(rank_among(s.data(), 1, all), 2);  // 2 and 4 beat it; NaN row 3 comes after
  EXPECT_EQ(rank_among(s.data(), 3, all), 3);  // and NaN row 1 comes before
  for (int32_t t = 1; t <= 4; ++t) EXPECT_EQ(rank_in_catalog(s.data(), 5, t, {}), rank_among(s.data(), t, all)) << t;
}

TEST(EvaluationRank, CatalogRankEqualsBruteForce) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t n = 2 + static_cast<int64_t>(rng() % 60);
    std::vector<float> s(static_cast<size_t>(n));
    for (float& v : s) v = static_cast<float>(static_cast<int>(rng() % 7)) - 3.0f;  // many ties
    if (trial % 5 == 0) s[static_cast<size_t>(rng() % n)] = kNaN;
    const auto target = static_cast<int32_t>(1 + rng() % (n - 1));
    std::set<int32_t> excluded_set;
    for (int i = 0; i < 6; ++i) {
      const auto r = static_cast<int32_t>(1 + rng() % (n - 1));
      if (r != target) excluded_set.insert(r);
    }
    const std::vector<int32_t> excluded(excluded_set.begin(), excluded_set.end());
    std::vector<int32_t> candidates;
    for (int32_t r = 1; r < n; ++r)
      if (!excluded_set.count(r)) candidates.push_back(r);
    EXPECT_EQ(rank_in_catalog(s.data(), n, target, excluded), rank_among(s.data(), target, candidates)) << trial;
  }
}

TEST(EvaluationMetrics, Arithmetic) {
  EXPECT_DOUBLE_EQ(ndcg_at(0, 1), 1.0);
  EXPECT_DOUBLE_EQ(ndcg_at(0, 10), 1.0);
  EXPECT_DOUBLE_EQ(ndcg_at(1, 10), 1.0 / std::log2(3.0));
  EXPECT_DOUBLE_EQ(ndcg_at(2, 10), 0.5);  // 1-based rank 3: 1/log2(3 + 1)
  EXPECT_DOUBLE_EQ(ndcg_at(9, 10), 1.0 / std::log2(11.0));
  EXPECT_DOUBLE_EQ(ndcg_at(10, 10), 0.0);
  EXPECT_DOUBLE_EQ(ndcg_at(1, 1), 0.0);
  EXPECT_DOUBLE_EQ(hit_at(4, 5), 1.0);
  EXPECT_DOUBLE_EQ(hit_at(5, 5), 0.0);
  EXPECT_DOUBLE_EQ(reciprocal_rank(0), 1.0);
  EXPECT_DOUBLE_EQ(reciprocal_rank(3), 0.25);
}

TEST(EvaluationNegatives, DistinctNeverInteractedAndReproducible) {
  const std::vector<int32_t> interacted = {2, 3, 5, 8, 13, 21, 34, 55, 89};
  const auto a = sample_negatives(42, "user-1", 101, interacted, 30);
  ASSERT_EQ(a.size(), 30u);
  std::set<int32_t> distinct(a.begin(), a.end());
  EXPECT_EQ(distinct.size(), a.size());
  for (const int32_t r : a) {
    EXPECT_GE(r, 1);
    EXPECT_LT(r, 101);
    EXPECT_FALSE(std::binary_search(interacted.begin(), interacted.end(), r)) << r;
  }
  EXPECT_EQ(sample_negatives(42, "user-1", 101, interacted, 30), a);  // same inputs, same draws
  EXPECT_NE(sample_negatives(43, "user-1", 101, interacted, 30), a);  // the seed matters
  EXPECT_NE(sample_negatives(42, "user-2", 101, interacted, 30), a);  // so does the user
  // A prefix property: asking for fewer gives the first draws.
  const auto b = sample_negatives(42, "user-1", 101, interacted, 10);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), a.begin()));
}

TEST(EvaluationNegatives, FollowsTheDocumentedGenerator) {
  // The first draw for a user with nothing interacted, recomputed by hand from the recipe.
  std::mt19937_64 engine(splitmix64(7 ^ fnv1a64("u")));
  const uint64_t m = 1000;
  uint64_t x;
  do x = engine();
  while (x > std::numeric_limits<uint64_t>::max() - (0 - m) % m);
  EXPECT_EQ(sample_negatives(7, "u", 1001, {}, 1), std::vector<int32_t>{static_cast<int32_t>(1 + x % m)});
  // Known values of the building blocks.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafULL);
}

TEST(EvaluationNegatives, FewerEligibleThanAskedGivesAllOfThemAscending) {
  const std::vector<int32_t> interacted = {1, 2, 4, 6};
  EXPECT_EQ(sample_negatives(1, "u", 8, interacted, 100), (std::vector<int32_t>{3, 5, 7}));
  EXPECT_EQ(sample_negatives(1, "u", 8, interacted, 3), (std::vector<int32_t>{3, 5, 7}));
  EXPECT_TRUE(sample_negatives(1, "u", 4, std::vector<int32_t>{1, 2, 3}, 5).empty());
}

TEST(EvaluationSplit, OrderIsPrepareRequestsOrder) {
  const Catalog catalog(testing::offset_ids(12));
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    Request request;
    EvalUser user;
    const int n = static_cast<int>(rng() % 15);
    for (int i = 0; i < n; ++i) {
      Interaction it;
      it.item_id = std::to_string(95 + rng() % 20);  // some unknown to the catalog (100..110)
      if (rng() % 4) it.timestamp = static_cast<int64_t>(rng() % 5);
      if (rng() % 3) it.rating = (rng() % 10) / 2.0;
      request.interactions.push_back(it);
      const int32_t row = catalog.row(it.item_id);
      user.interactions.push_back({row > 0 ? row : -1, !it.rating || *it.rating >= 2.5, it.timestamp});
    }
    PrepareRules rules;
    rules.rating_threshold = 2.5;
    const PreparedRequest prepared = prepare_request(request, catalog, rules);
    EXPECT_EQ(ordered_positives(user), prepared.sequence) << trial;
  }
}

// evaluate() against a per-user recomputation with Model::logits on one user at a time.
class EvaluateTest : public ::testing::Test {
 protected:
  EvaluateTest() : spec_(make_spec()), model_(spec_, testing::random_weights(spec_, 3)) {
    std::mt19937 rng(17);
    for (int u = 0; u < 50; ++u) {
      EvalUser user;
      user.id = "u" + std::to_string(u);
      const int n = static_cast<int>(rng() % 12);  // some users with fewer than 3 positives
      for (int i = 0; i < n; ++i)
        user.interactions.push_back({static_cast<int32_t>(1 + rng() % (kItems - 1)), rng() % 4 != 0,
                                     static_cast<int64_t>(rng() % 6)});
      if (u % 7 == 0) user.interactions.push_back({-1, true, 3});  // an item the model does not know
      users_.push_back(std::move(user));
    }
  }

  static ModelSpec make_spec() {
    ModelSpec s = testing::small_spec(kItems, 4, 8, 2);
    return s;
  }

  static constexpr int64_t kItems = 30;
  ModelSpec spec_;
  Model model_;
  std::vector<EvalUser> users_;
};

TEST_F(EvaluateTest, MatchesBruteForce) {
  for (const EvalProtocol protocol : {EvalProtocol::full, EvalProtocol::sampled}) {
    for (const EvalSplit split : {EvalSplit::last, EvalSplit::valid}) {
      EvalOptions options;
      options.protocol = protocol;
      options.split = split;
      options.ks = {1, 3, 10};
      options.negatives = 12;
      options.seed = 9;
      options.batch_size = 7;
      options.keep_negatives = true;
      const EvalResult result = evaluate(model_, users_, options);

      double hr[3] = {}, ndcg[3] = {}, mrr = 0;
      std::set<int32_t> covered[3];
      uint64_t evaluated = 0, skipped = 0;
      Workspace ws;
      for (size_t u = 0; u < users_.size(); ++u) {
        const std::vector<int32_t> positives = ordered_positives(users_[u]);
        if (positives.size() < 3) {
          ++skipped;
          continue;
        }
        const size_t at = positives.size() - (split == EvalSplit::last ? 1 : 2);
        const int32_t target = positives[at];
        std::vector<int32_t> input(positives.begin(), positives.begin() + static_cast<std::ptrdiff_t>(at));
        std::vector<float> scores(kItems);
        const SequenceInput sequence{input, {}, 0};
        model_.logits({&sequence, 1}, ws, scores.data());
        std::set<int32_t> interacted;
        for (const EvalInteraction& it : users_[u].interactions)
          if (it.row > 0) interacted.insert(it.row);
        std::vector<int32_t> candidates;  // the full protocol's
        for (int32_t r = 1; r < kItems; ++r)
          if (r == target || !interacted.count(r)) candidates.push_back(r);
        ASSERT_LT(evaluated, result.cases.size());
        const EvalCase& c = result.cases[evaluated];
        EXPECT_EQ(c.user, u);
        EXPECT_EQ(c.target, target);
        int64_t rank;
        if (protocol == EvalProtocol::sampled) {
          const std::vector<int32_t> interacted_rows(interacted.begin(), interacted.end());
          EXPECT_EQ(c.negatives, sample_negatives(9, users_[u].id, kItems, interacted_rows, 12));
          for (const int32_t r : c.negatives) EXPECT_FALSE(interacted.count(r));
          rank = 0;
          for (const int32_t r : c.negatives)
            rank += scores[r] > scores[target] || (scores[r] == scores[target] && r < target);
        } else {
          rank = 0;
          for (const int32_t r : candidates)
            rank += r != target && (scores[r] > scores[target] || (scores[r] == scores[target] && r < target));
        }
        std::stable_sort(candidates.begin(), candidates.end(),
                         [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
        const int64_t ks[3] = {1, 3, 10};
        for (int j = 0; j < 3; ++j) {
          if (rank < ks[j]) {
            hr[j] += 1;
            ndcg[j] += 1 / std::log2(rank + 2.0);
          }
          for (int64_t p = 0; p < ks[j] && p < static_cast<int64_t>(candidates.size()); ++p) covered[j].insert(candidates[p]);
        }
        mrr += 1.0 / (rank + 1);
        ++evaluated;
      }
      ASSERT_GT(evaluated, 10u);
      ASSERT_GT(skipped, 3u);
      EXPECT_EQ(result.users_evaluated, evaluated);
      EXPECT_EQ(result.users_skipped, skipped);
      EXPECT_EQ(result.users, users_.size());
      for (int j = 0; j < 3; ++j) {
        EXPECT_NEAR(result.at_k[j].hr, hr[j] / evaluated, 1e-12);
        EXPECT_NEAR(result.at_k[j].ndcg, ndcg[j] / evaluated, 1e-12);
        EXPECT_NEAR(result.at_k[j].coverage, static_cast<double>(covered[j].size()) / (kItems - 1), 1e-12);
      }
      EXPECT_NEAR(result.mrr, mrr / evaluated, 1e-12);

      // Any thread count, any batch size: the same numbers, bit for bit.
      EvalOptions threaded = options;
      threaded.threads = 3;
      threaded.batch_size = 2;
      const EvalResult again = evaluate(model_, users_, threaded);
      for (int j = 0; j < 3; ++j) {
        EXPECT_EQ(again.at_k[j].hr, result.at_k[j].hr);
        EXPECT_EQ(again.at_k[j].ndcg, result.at_k[j].ndcg);
        EXPECT_EQ(again.at_k[j].coverage, result.at_k[j].coverage);
      }
      EXPECT_EQ(again.mrr, result.mrr);
    }
  }
}

TEST_F(EvaluateTest, RefusesBadOptions) {
  EvalOptions options;
  options.ks = {0};
  EXPECT_THROW(evaluate(model_, users_, options), Error);
  options.ks = {};
  EXPECT_THROW(evaluate(model_, users_, options), Error);
  options.ks = {5};
  options.threads = 0;
  EXPECT_THROW(evaluate(model_, users_, options), Error);
  options.threads = 1;
  options.protocol = EvalProtocol::sampled;
  options.negatives = 0;
  EXPECT_THROW(evaluate(model_, users_, options), Error);
  std::vector<EvalUser> bad = {{"x", {{static_cast<int32_t>(kItems), true, 1}}}};
  options.negatives = 5;
  EXPECT_THROW(evaluate(model_, bad, options), Error);
}

TEST_F(EvaluateTest, NoUsersGivesZeros) {
  const EvalResult result = evaluate(model_, {}, EvalOptions{});
  EXPECT_EQ(result.users_evaluated, 0u);
  EXPECT_EQ(result.at_k.size(), 4u);
  EXPECT_EQ(result.mrr, 0.0);
}

}  // namespace
}  // namespace seqrec
