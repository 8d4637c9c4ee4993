// Request parsing (every field, both interaction forms, every error names field and value)
// and response writing.
#include "server/json_io.h"

#include <gtest/gtest.h>

namespace seqrec::api {
namespace {

RecommendRequest parse(const std::string& body) { return parse_recommend_request(body, Limits{}); }

// The message of the ApiError the body raises ("" if it parses).
std::string error_of(const std::string& body, const Limits& limits = Limits{}) {
  try {
    parse_recommend_request(body, limits);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(body, text)                                                         \
  do {                                                                                       \
    const std::string message = error_of(body);                                              \
    EXPECT_NE(message.find(text), std::string::npos) << "body: " << body << "\nmessage: " << message; \
  } while (0)

TEST(ParseRecommend, DictForm) {
  auto r = parse(R"({"user_interactions": {"21253": {"timestamp": 1704060026, "rating": 4.5},
                                           "21252": {"timestamp": 1704060027, "rating": 2}},
                     "k": 3, "recommend_seen": true, "candidate_ids": ["21254", 99], "exclude_ids": [7]})");
  ASSERT_TRUE(r.has_interactions);
  ASSERT_EQ(r.request.interactions.size(), 2u);
  EXPECT_EQ(r.request.interactions[0].item_id, "21253");
  EXPECT_EQ(*r.request.interactions[0].timestamp, 1704060026);
  EXPECT_EQ(*r.request.interactions[0].rating, 4.5);
  EXPECT_EQ(*r.request.interactions[1].rating, 2.0);
  EXPECT_EQ(r.request.k, 3);
  EXPECT_TRUE(r.request.recommend_seen);
  EXPECT_EQ(*r.request.candidate_ids, (std::vector<std::string>{"21254", "99"}));
  EXPECT_EQ(r.request.exclude_ids, (std::vector<std::string>{"7"}));
}

TEST(ParseRecommend, ListFormAllowsRepeatsAndIntegerIds) {
  auto r = parse(R"({"user_interactions": [{"item_id": 5, "timestamp": 1}, {"item_id": "5", "timestamp": 2},
                                           {"item_id": "x", "rating": 1.5}]})");
  ASSERT_EQ(r.request.interactions.size(), 3u);
  EXPECT_EQ(r.request.interactions[0].item_id, "5");
  EXPECT_EQ(r.request.interactions[1].item_id, "5");
  EXPECT_FALSE(r.request.interactions[2].timestamp);
  EXPECT_EQ(r.request.k, 10);  // default
  EXPECT_FALSE(r.request.recommend_seen);
  EXPECT_FALSE(r.request.candidate_ids);
}

TEST(ParseRecommend, UserIdStringOrInteger) {
  EXPECT_EQ(*parse(R"({"user_id": "QBZh", "k": 5})").user_id, "QBZh");
  EXPECT_EQ(*parse(R"({"user_id": 42})").user_id, "42");
}

TEST(ParseRecommend, MalformedJson) {
  try {
    parse(R"({"user_id": "a",)");
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code(), "invalid_json");
  }
  EXPECT_ERROR_HAS("", "not valid JSON");
  EXPECT_ERROR_HAS("[1, 2]", "request body: expected a JSON object, found an array");
}

TEST(ParseRecommend, BothOrNeither) {
  EXPECT_ERROR_HAS(R"({"user_id": "a", "user_interactions": []})", "not both");
  EXPECT_ERROR_HAS(R"({"k": 3})", "found neither");
}

TEST(ParseRecommend, KOutOfRange) {
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": 0})", "k: 0 is out of range 1..1000");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": 1001})", "k: 1001 is out of range");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": -3})", "k: -3");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": 18446744073709551615})", "out of range");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": 2.5})", "k: expected an integer, found a number 2.5");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "k": "10"})", "k: expected an integer, found a string \"10\"");
}

TEST(ParseRecommend, WrongTypesNameTheFieldAndValue) {
  EXPECT_ERROR_HAS(R"({"user_id": true})", "user_id: expected a string or an integer id, found a boolean true");
  EXPECT_ERROR_HAS(R"({"user_id": ""})", "user_id: empty id");
  EXPECT_ERROR_HAS(R"({"user_interactions": "abc"})", "user_interactions: expected an object");
  EXPECT_ERROR_HAS(R"({"user_interactions": {"5": {"timestamp": "yesterday"}}})",
                   "user_interactions[\"5\"].timestamp: expected an integer timestamp, found a string \"yesterday\"");
  EXPECT_ERROR_HAS(R"({"user_interactions": {"5": {"timestamp": 1.5}}})", "timestamp: expected an integer");
  EXPECT_ERROR_HAS(R"({"user_interactions": {"5": {"rating": "good"}}})",
                   "user_interactions[\"5\"].rating: expected a number, found a string \"good\"");
  EXPECT_ERROR_HAS(R"({"user_interactions": {"5": 3}})", "user_interactions[\"5\"]: expected an object, found an integer 3");
  EXPECT_ERROR_HAS(R"({"user_interactions": [{"timestamp": 1}]})", "user_interactions[0]: missing field 'item_id'");
  EXPECT_ERROR_HAS(R"({"user_interactions": [{"item_id": 1.5}]})", "user_interactions[0].item_id: expected a string or an integer id");
  EXPECT_ERROR_HAS(R"({"user_interactions": [{"item_id": "1", "when": 3}]})", "user_interactions[0]: unknown field 'when'");
  EXPECT_ERROR_HAS(R"({"user_interactions": [{"item_id": "1"}, {"item_id": "2"}, {"item_id": "3", "rating": "x"}]})",
                   "user_interactions[2].rating: expected a number, found a string \"x\"");
  EXPECT_ERROR_HAS(R"({"user_interactions": {"5": {}, "5": {}}})", "item id \"5\" appears twice");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "recommend_seen": 1})", "recommend_seen: expected a boolean, found an integer 1");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "candidate_ids": "5"})", "candidate_ids: expected an array of item ids");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "candidate_ids": [1, null]})", "candidate_ids[1]: expected a string or an integer id, found null");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "exclude_ids": [{}]})", "exclude_ids[0]: expected a string or an integer id");
  EXPECT_ERROR_HAS(R"({"user_id": "a", "kk": 3})", "unknown field 'kk'");
}

TEST(ParseRecommend, TooManyInteractionsOrCandidates) {
  Limits small;
  small.max_interactions = 2;
  small.max_candidates = 1;
  EXPECT_NE(error_of(R"({"user_interactions": [{"item_id": 1}, {"item_id": 2}, {"item_id": 3}]})", small)
                .find("user_interactions: 3 interactions, at most 2 allowed"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"user_id": "a", "candidate_ids": [1, 2]})", small).find("candidate_ids: 2 ids, at most 1"),
            std::string::npos);
}

TEST(ParseRecommend, NullTimestampAndRatingMeanAbsent) {
  auto r = parse(R"({"user_interactions": {"5": {"timestamp": null, "rating": null}}})");
  EXPECT_FALSE(r.request.interactions[0].timestamp);
  EXPECT_FALSE(r.request.interactions[0].rating);
}

TEST(WriteResponse, IdsAreNumbersOnlyWhenCanonicalIntegers) {
  EXPECT_EQ(id_json("21254"), "21254");
  EXPECT_EQ(id_json("0"), "0");
  EXPECT_EQ(id_json("-7"), "-7");
  EXPECT_EQ(id_json("007"), "\"007\"");
  EXPECT_EQ(id_json("-0"), "\"-0\"");
  EXPECT_EQ(id_json("1e5"), "\"1e5\"");
  EXPECT_EQ(id_json("tt0114709"), "\"tt0114709\"");
  EXPECT_EQ(id_json("12345678901234567890"), "\"12345678901234567890\"");
  EXPECT_EQ(id_json("a\"b"), "\"a\\\"b\"");
}

TEST(WriteResponse, Shape) {
  Response r;
  r.recommendations = {{"21254", 3, 0.5f}, {"abc", -1, 0.0f}};
  EXPECT_EQ(write_response(r), R"({"recommendations": [{"id": 21254, "score": 0.5}, {"id": "abc", "score": 0}], "message": null})");
  r.message = "Skipped \"x\".";
  EXPECT_NE(write_response(r).find(R"("message": "Skipped \"x\"."})"), std::string::npos);
}

TEST(WriteError, Shape) {
  EXPECT_EQ(write_error("invalid_request", "k: 0"), R"({"error": {"code": "invalid_request", "message": "k: 0"}})");
}

}  // namespace
}  // namespace seqrec::api
