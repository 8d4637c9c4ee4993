#include "engine/model_spec.h"

#include <gtest/gtest.h>

#include <set>

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
  s.input.positions = Positions::slot_index;
  EXPECT_EQ(s.n_positions(), 6);
  s.readout.slot = Readout::mask_token;
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
  EXPECT_EQ(parse_block("block", to_string(BlockKind::sasrec_original)), BlockKind::sasrec_original);
  EXPECT_EQ(parse_score("score", "softmax"), ScoreKind::softmax);
  try {
    parse_activation("activation", "gelu_fast");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("activation: unknown value 'gelu_fast'"), std::string::npos) << e.what();
  }
}

// Every value of every enum has a name that parses back to it (the tables are checked by
// length at compile time; this checks their order).
TEST(ModelSpec, EveryEnumValueRoundTripsThroughItsName) {
  for (int v = 0; v <= static_cast<int>(BlockKind::hstu); ++v)
    EXPECT_EQ(parse_block("f", to_string(static_cast<BlockKind>(v))), static_cast<BlockKind>(v));
  for (int v = 0; v <= static_cast<int>(Positions::slot_index); ++v)
    EXPECT_EQ(parse_positions("f", to_string(static_cast<Positions>(v))), static_cast<Positions>(v));
  for (int v = 0; v <= static_cast<int>(Padding::right); ++v)
    EXPECT_EQ(parse_padding("f", to_string(static_cast<Padding>(v))), static_cast<Padding>(v));
  for (int v = 0; v <= static_cast<int>(AttentionKind::bidirectional); ++v)
    EXPECT_EQ(parse_attention("f", to_string(static_cast<AttentionKind>(v))), static_cast<AttentionKind>(v));
  for (int v = 0; v <= static_cast<int>(Activation::sigmoid); ++v)
    EXPECT_EQ(parse_activation("f", to_string(static_cast<Activation>(v))), static_cast<Activation>(v));
  for (int v = 0; v <= static_cast<int>(Readout::mask_token_drop_first); ++v)
    EXPECT_EQ(parse_readout("f", to_string(static_cast<Readout>(v))), static_cast<Readout>(v));
  for (int v = 0; v <= static_cast<int>(ScoreKind::raw); ++v)
    EXPECT_EQ(parse_score("f", to_string(static_cast<ScoreKind>(v))), static_cast<ScoreKind>(v));
  EXPECT_STREQ(to_string(BlockKind::tisasrec), "tisasrec");
  EXPECT_STREQ(to_string(Activation::none), "none");
}

// The spec as named fields and back, for every block kind: equal field by field, and each
// kind writes only its own fields.
TEST(ModelSpec, FieldsRoundTripForEveryBlockKind) {
  ModelSpec odd = testing::small_spec();
  odd.scorer.temperature = 0.05f;
  odd.blocks.ln_eps = 1e-12f;
  for (const ModelSpec& spec : {testing::small_spec(), odd, testing::tisasrec_spec(), testing::hstu_spec(),
                                testing::gsasrec_spec()}) {
    const SpecFields fields = spec_fields(spec);
    EXPECT_TRUE(parse_spec_fields(fields, "test") == spec) << to_string(spec.blocks.kind);
    std::set<std::string> names;
    for (const auto& [name, value] : fields) names.insert(name);
    EXPECT_EQ(names.count("time_span"), spec.blocks.kind == BlockKind::tisasrec ? 1u : 0u);
    EXPECT_EQ(names.count("attention_len"), spec.blocks.kind == BlockKind::hstu ? 1u : 0u);
    EXPECT_EQ(names.count("ffn_dim"), spec.blocks.kind <= BlockKind::sasrec_original ? 1u : 0u);
  }
}

TEST(ModelSpec, UnknownFieldsAreErrorsInFilesAndIgnoredInMetadata) {
  SpecFields fields = spec_fields(testing::small_spec());
  fields.emplace_back("colour", "blue");
  try {
    parse_spec_fields(fields, "m.seqrec: spec");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "m.seqrec: spec 'colour': not a field of this model kind (written by a newer "
                                     "seqrec, or a typo)");
  }
  EXPECT_TRUE(parse_spec_fields(fields, "x", false) == testing::small_spec());
  fields.emplace_back("colour", "red");
  EXPECT_THROW(parse_spec_fields(fields, "x", false), Error);  // twice
}

TEST(ModelSpec, EachKindChecksItsOwnFields) {
  auto fails = [](ModelSpec s, const std::string& mention) {
    try {
      s.validate();
      ADD_FAILURE() << "accepted; expected " << mention;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
    }
  };
  ModelSpec s = testing::hstu_spec();
  s.blocks.attention_len = s.max_len;
  fails(s, "attention_len");
  s = testing::hstu_spec();
  s.input.padding = Padding::left;
  fails(s, "hstu: the input is right padded");
  s = testing::tisasrec_spec();
  s.blocks.activation = Activation::gelu;
  fails(s, "tisasrec: activation = gelu");
  s = testing::tisasrec_spec();
  s.input.positions = Positions::slot_index;
  fails(s, "positions = none");
  s = testing::small_spec();
  s.input.positions = Positions::none;
  fails(s, "positions = none needs");
  s = testing::small_spec();
  s.scorer.temperature = 0;
  fails(s, "temperature");
}

TEST(ModelSpec, EveryKindDeclaresItsTensors) {
  auto names = [](const ModelSpec& s) {
    std::set<std::string> out;
    for (const auto& t : required_tensors(s)) out.insert(t.name);
    return out;
  };
  const auto tisasrec = names(testing::tisasrec_spec());
  EXPECT_TRUE(tisasrec.count("encoder/time_key/weight"));
  EXPECT_TRUE(tisasrec.count("encoder/position_value/weight"));
  EXPECT_FALSE(tisasrec.count("embedding/position/weight"));
  EXPECT_FALSE(tisasrec.count("encoder/layer_0/attention/out/weight"));
  const auto hstu = names(testing::hstu_spec());
  EXPECT_TRUE(hstu.count("encoder/layer_1/uvqk/weight"));
  EXPECT_TRUE(hstu.count("encoder/layer_1/relative_bias/time/weight"));
  EXPECT_TRUE(hstu.count("output/item/weight"));
  const auto gsasrec = names(testing::gsasrec_spec());
  EXPECT_FALSE(gsasrec.count("encoder/layer_0/attention/out/weight"));
  EXPECT_TRUE(gsasrec.count("output/item/weight"));
}

}  // namespace
}  // namespace seqrec
