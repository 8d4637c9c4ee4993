#include "engine/model_spec.h"

#include <gtest/gtest.h>

#include "engine/error.h"
#include "test_models.h"

namespace seqrec {
namespace {

TEST(ModelSpec, SmallSpecIsValid) { EXPECT_NO_THROW(testing::small_spec().validate()); }

TEST(ModelSpec, HeadsMustDivideD) {
  ModelSpec s = testing::small_spec(12, 6, 8, 3);
  try {
    s.validate();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("heads = 3"), std::string::npos) << e.what();
  }
}

TEST(ModelSpec, RejectsAbsurdSizes) {
  ModelSpec s = testing::small_spec();
  s.n_items = 1;
  EXPECT_THROW(s.validate(), Error);
  s = testing::small_spec();
  s.max_len = 0;
  EXPECT_THROW(s.validate(), Error);
  s = testing::small_spec();
  s.d = int64_t{1} << 40;
  EXPECT_THROW(s.validate(), Error);
}

TEST(ModelSpec, PositionRowsFollowTheScheme) {
  ModelSpec s = testing::small_spec(12, 6);
  EXPECT_EQ(s.n_positions(), 7);  // slot_or_zero: L + 1
  s.positions = Positions::slot_index;
  EXPECT_EQ(s.n_positions(), 6);
  s.readout = Readout::mask_token;
  EXPECT_EQ(s.n_slots(), 7);
  EXPECT_EQ(s.item_table_rows(), 13);  // catalog + [MASK]
}

TEST(ModelSpec, RequiredTensorsUseCanonicalNames) {
  ModelSpec s = testing::small_spec();
  auto tensors = required_tensors(s);
  auto find = [&](const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return t.shape;
    return std::vector<int64_t>{};
  };
  EXPECT_EQ(find("embedding/item/weight"), (std::vector<int64_t>{12, 8}));
  EXPECT_EQ(find("encoder/layer_1/attention/q/weight"), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(find("encoder/layer_1/ffn/inner/weight"), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(find("encoder/final_norm/bias"), (std::vector<int64_t>{8}));
  EXPECT_TRUE(find("encoder/layer_2/attention/q/weight").empty());
  EXPECT_TRUE(find("head/dense/weight").empty());
}

TEST(ModelSpec, EnumTextRoundTripsAndNamesTheField) {
  EXPECT_EQ(parse_block("block", to_string(Block::sasrec_original)), Block::sasrec_original);
  EXPECT_EQ(parse_score("score", "softmax"), ScoreKind::softmax);
  try {
    parse_activation("activation", "gelu_fast");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("activation: unknown value 'gelu_fast'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace seqrec
