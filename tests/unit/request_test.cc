// The sequence-building rules of product.md: threshold, order, ties, unknown ids; the times
// and "now" of models that read them.
#include "engine/request.h"

#include <gtest/gtest.h>

#include <ctime>

#include "test_models.h"

namespace seqrec {
namespace {

Interaction at(std::string id, std::optional<int64_t> ts, std::optional<double> rating = std::nullopt) {
  return Interaction{std::move(id), ts, rating};
}

class PrepareRequest : public ::testing::Test {
 protected:
  Catalog catalog{testing::offset_ids(12)};  // ids 100..110 at rows 1..11
  PreparedRequest prepare(std::vector<Interaction> interactions, std::optional<double> threshold = std::nullopt,
                          PrepareRules rules = {}, std::optional<int64_t> now = std::nullopt) {
    Request r;
    r.interactions = std::move(interactions);
    r.now = now;
    rules.rating_threshold = threshold;
    return prepare_request(r, catalog, rules);
  }
  static PrepareRules timed(bool uses_now) {
    PrepareRules rules;
    rules.uses_time = true;
    rules.uses_now = uses_now;
    rules.model_kind = uses_now ? "hstu" : "tisasrec";
    return rules;
  }
};

TEST_F(PrepareRequest, SortsByTimestampAscending) {
  auto p = prepare({at("103", 30), at("101", 10), at("102", 20)});
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{2, 3, 4}));
}

TEST_F(PrepareRequest, EqualTimestampsKeepInputOrder) {
  auto p = prepare({at("105", 5), at("101", 5), at("103", 1), at("102", 5)});
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{4, 6, 2, 3}));
}

TEST_F(PrepareRequest, MissingTimestampKeepsItsPlaceAfterThePreviousOne) {
  auto all_missing = prepare({at("103", std::nullopt), at("101", std::nullopt), at("102", std::nullopt)});
  EXPECT_EQ(all_missing.sequence, (std::vector<int32_t>{4, 2, 3}));
  auto mixed = prepare({at("101", 50), at("102", std::nullopt), at("103", 10)});
  EXPECT_EQ(mixed.sequence, (std::vector<int32_t>{4, 2, 3}));
}

TEST_F(PrepareRequest, ThresholdKeepsOnlyPositivesButAllAreSeen) {
  auto p = prepare({at("101", 1, 4.0), at("102", 2, 2.0), at("103", 3, 3.5), at("104", 4)}, 3.5);
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{2, 4, 5}));  // 2.0 < 3.5 dropped; no rating = positive
  EXPECT_EQ(p.seen_rows, (std::vector<int32_t>{2, 3, 4, 5}));
}

TEST_F(PrepareRequest, WithoutThresholdEveryRatingIsPositive) {
  auto p = prepare({at("101", 1, 0.5), at("102", 2, -3.0)});
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{2, 3}));
}

TEST_F(PrepareRequest, UnknownIdsAreSkippedAndReported) {
  auto p = prepare({at("101", 1), at("999", 2), at("102", 3), at("[PAD]", 4), at("0", 5)});
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(p.unknown_ids, (std::vector<std::string>{"999", "[PAD]", "0"}));
}

TEST_F(PrepareRequest, KeepsEveryKnownPositiveForTheModelToCut) {
  std::vector<Interaction> history;
  for (int i = 0; i < 9; ++i) history.push_back(at(std::to_string(101 + i), 100 - i));  // newest first
  auto p = prepare(history);
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{10, 9, 8, 7, 6, 5, 4, 3, 2}));  // oldest first: ids 109 .. 101
  EXPECT_TRUE(p.times.empty()) << "a model that does not read time gets no times";
}

TEST_F(PrepareRequest, TimeModelsGetEveryPositivesTimeInOrder) {
  auto p = prepare({at("103", 30), at("101", 10, 1.0), at("102", 20)}, 2.0, timed(false));
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{3, 4}));  // the 1.0 rating is not positive
  EXPECT_EQ(p.times, (std::vector<int64_t>{20, 30}));
  EXPECT_FALSE(p.error);
  EXPECT_EQ(p.now, 0) << "a model that does not read now gets none";
}

TEST_F(PrepareRequest, TimeModelsNeedATimestampOnEveryKnownPositive) {
  auto p = prepare({at("101", 10), at("102", std::nullopt), at("999", std::nullopt)}, std::nullopt, timed(false));
  ASSERT_TRUE(p.error);
  EXPECT_EQ(p.error->code, "invalid_request");
  EXPECT_NE(p.error->message.find("interaction 1 (item '102'): no timestamp"), std::string::npos) << p.error->message;
  EXPECT_NE(p.error->message.find("tisasrec"), std::string::npos) << p.error->message;
  // Unknown items and non-positives need none.
  auto fine = prepare({at("101", 10), at("999", std::nullopt), at("102", std::nullopt, 1.0)}, 2.0, timed(false));
  EXPECT_FALSE(fine.error);
}

TEST_F(PrepareRequest, NowIsTheRequestsOrTheClocksInSeconds) {
  auto given = prepare({at("101", 10)}, std::nullopt, timed(true), 12345);
  EXPECT_EQ(given.now, 12345);
  EXPECT_TRUE(given.notes.empty());
  const int64_t before = std::time(nullptr);
  auto clock = prepare({at("101", 10)}, std::nullopt, timed(true));
  EXPECT_GE(clock.now, before);
  EXPECT_LE(clock.now, std::time(nullptr));
  EXPECT_TRUE(clock.notes.empty()) << "second timestamps need no note";
  auto millis = prepare({at("101", 1704060026000)}, std::nullopt, timed(true));
  ASSERT_EQ(millis.notes.size(), 1u);
  EXPECT_NE(millis.notes[0].find("look like milliseconds"), std::string::npos) << millis.notes[0];
}

TEST_F(PrepareRequest, RepeatedItemsStayRepeated) {
  auto p = prepare({at("101", 1), at("101", 2), at("102", 3), at("101", 4)});
  EXPECT_EQ(p.sequence, (std::vector<int32_t>{2, 2, 3, 2}));
}

}  // namespace
}  // namespace seqrec

namespace seqrec {
namespace {

// Numeric catalogs look ids up by value; the id text must still match exactly.
TEST(Catalog, NumericIdsMatchTheirExactText) {
  const Catalog catalog({"<pad>", "7", "193609", "0", "42"});
  EXPECT_EQ(catalog.row("7"), 1);
  EXPECT_EQ(catalog.row("193609"), 2);
  EXPECT_EQ(catalog.row("0"), 3);
  EXPECT_EQ(catalog.row("42"), 4);
  for (const char* absent : {"007", "07", "+7", "-7", "7 ", " 7", "7.0", "", "8", "193610", "4294967303",
                             "99999999999999999999", "x"})
    EXPECT_EQ(catalog.row(absent), -1) << "'" << absent << "'";
}

// Ids that are not all canonical numbers (or numbers too sparse for a table) use the hash.
TEST(Catalog, MixedAndSparseIdsUseTheirText) {
  const Catalog mixed({"<pad>", "7", "007", "item-3"});
  EXPECT_EQ(mixed.row("7"), 1);
  EXPECT_EQ(mixed.row("007"), 2);
  EXPECT_EQ(mixed.row("item-3"), 3);
  EXPECT_EQ(mixed.row("3"), -1);
  const Catalog sparse({"<pad>", "5", "2000000000"});
  EXPECT_EQ(sparse.row("2000000000"), 2);
  EXPECT_EQ(sparse.row("5"), 1);
  EXPECT_EQ(sparse.row("6"), -1);
}

}  // namespace
}  // namespace seqrec
