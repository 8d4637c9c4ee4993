// select + answer: top-k with seen filtering, candidates (unknown ones score 0), exclusions,
// ties, the reported score.
#include "engine/ranker.h"

#include <gtest/gtest.h>

#include <cmath>

#include "engine/answer.h"

#include "test_models.h"

namespace seqrec {
namespace {

class RankItems : public ::testing::Test {
 protected:
  Catalog catalog{testing::offset_ids(8)};  // rows 1..7 = ids 100..106
  // raw scores per row; row 0 (padding) is the best and must never come back
  std::vector<float> scores{9.0f, 0.5f, 3.0f, -1.0f, 3.0f, 2.0f, -0.5f, 1.0f};

  // The recommender's select and answer stages over these scores.
  std::vector<ScoredItem> rank(const Request& r, ScoreKind kind = ScoreKind::raw) {
    const PreparedRequest p = prepare_request(r, catalog, PrepareRules{});
    RankScratch scratch;
    std::vector<int32_t> rows;
    const int64_t found = select_rows(scores.data(), catalog, r, p, scratch, rows);
    std::vector<float> raw;
    for (int64_t j = 0; j < found; ++j) raw.push_back(scores[rows[j]]);
    ScorerSpec spec;
    spec.score = kind;
    return answer(r, p, catalog, AnswerKind::model, std::span<const int32_t>(rows.data(), found), raw,
                  ScoreReport(spec))
        .recommendations;
  }
  std::vector<std::string> ids(const Request& r) {
    std::vector<std::string> out;
    for (auto& item : rank(r)) out.push_back(item.id);
    return out;
  }
};

TEST_F(RankItems, OrdersByScoreThenCatalogOrderAndSkipsPadding) {
  Request r;
  r.k = 4;
  EXPECT_EQ(ids(r), (std::vector<std::string>{"101", "103", "104", "106"}));  // 3.0 tie: row 2 before row 4
}

TEST_F(RankItems, SeenItemsAreFilteredUnlessRecommendSeen) {
  Request r;
  r.k = 3;
  r.interactions = {{"101", 1, std::nullopt}, {"104", 2, 1.0}};
  EXPECT_EQ(ids(r), (std::vector<std::string>{"103", "106", "100"}));
  r.recommend_seen = true;
  EXPECT_EQ(ids(r), (std::vector<std::string>{"101", "103", "104"}));
}

TEST_F(RankItems, ExclusionsAreNeverReturned) {
  Request r;
  r.k = 3;
  r.recommend_seen = true;
  r.exclude_ids = {"103", "nope"};
  EXPECT_EQ(ids(r), (std::vector<std::string>{"101", "104", "106"}));
}

TEST_F(RankItems, CandidatesRestrictTheRankingAndUnknownOnesScoreZero) {
  Request r;
  r.k = 10;
  r.candidate_ids = std::vector<std::string>{"105", "102", "zzz", "100", "102", "101"};
  auto ranked = rank(r);
  std::vector<std::string> got;
  for (auto& item : ranked) got.push_back(item.id);
  // 101 (3.0), 100 (0.5), zzz (0 — unknown), 105 (-0.5), 102 (-1.0); the duplicate 102 counts once
  EXPECT_EQ(got, (std::vector<std::string>{"101", "100", "zzz", "105", "102"}));
  EXPECT_EQ(ranked[2].row, -1);
  EXPECT_EQ(ranked[2].score, 0.0f);
}

TEST_F(RankItems, UnknownCandidatesAlsoObeyExclusionsAndSeen) {
  Request r;
  r.k = 10;
  r.candidate_ids = std::vector<std::string>{"zzz", "yyy", "101"};
  r.exclude_ids = {"yyy"};
  r.interactions = {{"zzz", 1, std::nullopt}};
  EXPECT_EQ(ids(r), (std::vector<std::string>{"101"}));
}

TEST_F(RankItems, KLargerThanTheCatalogReturnsWhatThereIs) {
  Request r;
  r.k = 1000;
  EXPECT_EQ(ids(r).size(), 7u);
}

TEST_F(RankItems, ReportedScoreIsTheTransformOfTheRawOne) {
  Request r;
  r.k = 1;
  auto ranked = rank(r, ScoreKind::sigmoid);
  ASSERT_EQ(ranked.size(), 1u);
  EXPECT_EQ(ranked[0].score, 1.0f / (1.0f + std::exp(-3.0f)));
}

}  // namespace
}  // namespace seqrec
