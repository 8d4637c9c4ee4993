// Top-k with seen filtering, candidates (unknown ones score 0), exclusions, ties.
#include "engine/ranker.h"

#include <gtest/gtest.h>

#include "test_models.h"

namespace seqrec {
namespace {

class RankItems : public ::testing::Test {
 protected:
  Catalog catalog{testing::offset_ids(8)};  // rows 1..7 = ids 100..106
  // raw scores per row; row 0 (padding) is the best and must never come back
  std::vector<float> scores{9.0f, 0.5f, 3.0f, -1.0f, 3.0f, 2.0f, -0.5f, 1.0f};
  std::function<float(float)> identity = [](float x) { return x; };

  std::vector<std::string> ids(const Request& r) {
    PreparedRequest p = prepare_request(r, catalog, std::nullopt, 10);
    std::vector<std::string> out;
    for (auto& item : rank_items(scores.data(), identity, catalog, r, p)) out.push_back(item.id);
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
  PreparedRequest p = prepare_request(r, catalog, std::nullopt, 10);
  auto ranked = rank_items(scores.data(), identity, catalog, r, p);
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
  PreparedRequest p = prepare_request(r, catalog, std::nullopt, 10);
  auto ranked = rank_items(scores.data(), [](float x) { return x * 10.0f; }, catalog, r, p);
  ASSERT_EQ(ranked.size(), 1u);
  EXPECT_EQ(ranked[0].score, 30.0f);
}

}  // namespace
}  // namespace seqrec
