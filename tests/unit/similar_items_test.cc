// Item-to-item similarity and item filters: the engine's answers against brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/item_filter.h"
#include "engine/recommender.h"
#include "engine/workspace.h"
#include "kernels/quantized_scan.h"
#include "tests/unit/test_models.h"

namespace seqrec {
namespace {

using testing::offset_ids;
using testing::random_weights;
using testing::small_spec;

// Every cosine by the documented formula, ranked: score desc, ties by row.
std::vector<std::pair<int32_t, float>> brute_force(const Recommender& rec, int32_t item, int64_t k,
                                                   const std::vector<int32_t>& eligible) {
  const Scorer& s = rec.model().scorer();
  const auto& inv = s.inverse_norms();
  const int64_t d = rec.model().spec().d;
  std::vector<std::pair<int32_t, float>> all;
  for (int32_t r : eligible)
    all.push_back({r, kernels::exact_score(s.row(item), s.row(r), d) * (inv[item] * inv[r])});
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  if (static_cast<int64_t>(all.size()) > k) all.resize(static_cast<size_t>(k));
  return all;
}

class SimilarItems : public ::testing::TestWithParam<PreScan> {};

TEST_P(SimilarItems, SameAsEveryCosineComputed) {
  ModelSpec spec = small_spec(3000, 6, 16, 2);
  const Recommender rec(spec, random_weights(spec, 11), offset_ids(spec.n_items), {}, std::nullopt, GetParam());
  Workspace ws;
  for (int32_t item : {1, 17, 2999}) {
    std::vector<int32_t> eligible;
    for (int32_t r = 1; r < spec.n_items; ++r)
      if (r != item) eligible.push_back(r);
    for (int64_t k : {1, 10, 200}) {
      Request request;
      request.k = k;
      const Response got = rec.similar_items(std::string(rec.catalog().id(item)), request, ws);
      ASSERT_FALSE(got.error);
      const auto want = brute_force(rec, item, k, eligible);
      ASSERT_EQ(want.size(), got.recommendations.size());
      for (size_t j = 0; j < want.size(); ++j) {
        EXPECT_EQ(std::string(rec.catalog().id(want[j].first)), got.recommendations[j].id) << "item " << item << " k " << k;
        EXPECT_EQ(want[j].second, got.recommendations[j].score);
      }
    }
  }
}

TEST_P(SimilarItems, CandidatesExclusionsAndUnknownItems) {
  ModelSpec spec = small_spec(500, 6, 8, 2);
  const Recommender rec(spec, random_weights(spec, 3), offset_ids(spec.n_items), {}, std::nullopt, GetParam());
  Workspace ws;
  Request request;
  request.k = 5;
  request.candidate_ids = std::vector<std::string>{std::string(rec.catalog().id(7)), std::string(rec.catalog().id(9)), std::string(rec.catalog().id(3)), "nope",
                                                   std::string(rec.catalog().id(3))};
  request.exclude_ids = {std::string(rec.catalog().id(9))};
  const Response got = rec.similar_items(std::string(rec.catalog().id(3)), request, ws);
  const auto want = brute_force(rec, 3, 5, {7});
  ASSERT_EQ(2u, got.recommendations.size());  // item 7, then the unknown candidate at score 0 or before it
  bool has7 = false;
  for (const ScoredItem& it : got.recommendations) has7 |= it.id == std::string(rec.catalog().id(7));
  EXPECT_TRUE(has7);
  const Response unknown = rec.similar_items("no-such-item", request, ws);
  ASSERT_TRUE(unknown.error);
  EXPECT_EQ("item_not_found", unknown.error->code);
  EXPECT_NE(std::string::npos, unknown.error->message.find("no-such-item"));
}

INSTANTIATE_TEST_SUITE_P(Paths, SimilarItems, ::testing::Values(PreScan::always, PreScan::never),
                         [](const auto& info) { return info.param == PreScan::always ? "prescan" : "full"; });

// Tags: row r carries "even"/"odd", and "ten" when r % 10 == 0; row 5 carries nothing.
std::shared_ptr<ItemTags> parity_tags(const Catalog& catalog) {
  static std::vector<std::string> even{"even"}, odd{"odd"}, even_ten{"even", "ten"};
  return std::make_shared<ItemTags>(catalog, [&catalog](std::string_view id) -> const std::vector<std::string>* {
    const int32_t r = catalog.row(id);
    if (r == 5) return nullptr;
    return r % 10 == 0 ? &even_ten : r % 2 == 0 ? &even : &odd;
  });
}

TEST(ItemTags, AnyAllNoneAndUnknownTags) {
  const Catalog catalog(offset_ids(31));
  const auto tags = parity_tags(catalog);
  auto rows = [&](ItemFilter f) { return tags->allowed_rows(f); };
  EXPECT_EQ((std::vector<int32_t>{10, 20, 30}), rows({{"ten"}, {}, {}}));
  EXPECT_EQ((std::vector<int32_t>{10, 20, 30}), rows({{}, {"even", "ten"}, {}}));
  EXPECT_EQ(14u, rows({{"odd", "nothing-has-this"}, {}, {}}).size());  // 1..29 odd but 5
  EXPECT_TRUE(rows({{}, {"ten", "odd"}, {}}).empty());
  EXPECT_TRUE(rows({{"nothing-has-this"}, {}, {}}).empty());
  const auto not_even = rows({{}, {}, {"even"}});
  EXPECT_EQ(15u, not_even.size());  // the 14 odd rows besides 5, and 5 (no tags)
  EXPECT_TRUE(std::binary_search(not_even.begin(), not_even.end(), 5));
}

class Filters : public ::testing::TestWithParam<PreScan> {};

// A filter is applied before ranking: the answer is the unfiltered ranking's first k rows that
// pass it, on every path (the pre-scan, the full product, few rows as candidates).
TEST_P(Filters, FilteredAnswerIsTheFullRankingRestricted) {
  ModelSpec spec = small_spec(4000, 6, 16, 2);
  Recommender rec(spec, random_weights(spec, 5), offset_ids(spec.n_items), {}, std::nullopt, GetParam());
  rec.set_item_tags(parity_tags(rec.catalog()));
  Workspace ws;
  Request base;
  base.interactions = {{std::string(rec.catalog().id(4)), 1, std::nullopt}, {std::string(rec.catalog().id(8)), 2, std::nullopt}};
  base.k = 4000;
  const std::vector<ScoredItem> everything = rec.recommend({&base, 1}, ws)[0].recommendations;
  for (const ItemFilter& filter : {ItemFilter{{"ten"}, {}, {}}, ItemFilter{{}, {}, {"odd"}}, ItemFilter{{"odd"}, {}, {}}}) {
    Request r = base;
    r.k = 25;
    r.filter = filter;
    const auto allowed = rec.item_tags()->allowed_rows(filter);
    std::vector<std::string> want;
    for (const ScoredItem& it : everything)
      if (static_cast<int64_t>(want.size()) < r.k && std::binary_search(allowed.begin(), allowed.end(), it.row))
        want.push_back(it.id);
    const Response got = rec.recommend({&r, 1}, ws)[0];
    ASSERT_FALSE(got.error);
    std::vector<std::string> ids;
    for (const ScoredItem& it : got.recommendations) ids.push_back(it.id);
    EXPECT_EQ(want, ids);
  }
  Request no_metadata = base;
  no_metadata.filter = ItemFilter{{"ten"}, {}, {}};
  Recommender bare(spec, random_weights(spec, 5), offset_ids(spec.n_items), {}, std::nullopt, GetParam());
  const Response refused = bare.recommend({&no_metadata, 1}, ws)[0];
  ASSERT_TRUE(refused.error);
  EXPECT_NE(std::string::npos, refused.error->message.find("--items"));
}

INSTANTIATE_TEST_SUITE_P(Paths, Filters, ::testing::Values(PreScan::always, PreScan::never),
                         [](const auto& info) { return info.param == PreScan::always ? "prescan" : "full"; });

}  // namespace
}  // namespace seqrec
