// --from recbole on the committed RecBole-layout fixture (tests/data/torch/recbole_checkpoint.pt:
// a pickled Config with a torch.device and an enum, an optimizer, a model that is NOT a RecBole
// SASRec). No PyTorch needed, so these run under the sanitizers; the parity suite
// (tests/parity/test_recbole_parity.py) covers real SASRec / BERT4Rec checkpoints.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "weights/sources/recbole.h"

namespace seqrec {
namespace {

const std::string kFixture = std::string(SEQREC_TEST_DATA_DIR) + "/torch/recbole_checkpoint.pt";

std::string error_of(const ConvertOptions& options, const RecboleOptions& recbole = {}) {
  try {
    convert_recbole(options, recbole);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "converted";
  return "";
}

class RecboleSource : public ::testing::Test {
 protected:
  void SetUp() override {
    ids_ = (std::filesystem::temp_directory_path() / ("seqrec_recbole_ids_" + std::to_string(::getpid()))).string();
    std::ofstream(ids_) << "[PAD]\na\nb\nc\nd\ne\n";
    options_.checkpoint = kFixture;
    options_.item_ids_file = ids_;
  }
  void TearDown() override { std::filesystem::remove(ids_); }
  std::string ids_;
  ConvertOptions options_;
};

TEST_F(RecboleSource, ReadsTheConfigPastOpaqueObjectsThenNamesTheMissingWeights) {
  // The config (torch.device, enums, a shared list) is read; the model has no transformer layer.
  const std::string message = error_of(options_);
  EXPECT_NE(message.find("trm_encoder.layer.0.multi_head_attention.query.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("recbole_checkpoint.pt"), std::string::npos) << message;
}

TEST_F(RecboleSource, ItemIdsAreRequired) {
  options_.item_ids_file.reset();
  EXPECT_NE(error_of(options_).find("--item-ids"), std::string::npos);
}

TEST_F(RecboleSource, UnsupportedModelFlagIsNamed) {
  RecboleOptions recbole;
  recbole.model = "GRU4Rec";
  const std::string message = error_of(options_, recbole);
  EXPECT_NE(message.find("--model: model 'GRU4Rec' is not supported"), std::string::npos) << message;
}

TEST_F(RecboleSource, PmixerOnlyFlagIsRefused) {
  options_.variant = "post_ln";
  EXPECT_NE(error_of(options_).find("--variant"), std::string::npos);
}

TEST_F(RecboleSource, NotACheckpointIsNamed) {
  options_.checkpoint = ids_;
  EXPECT_NE(error_of(options_).find(ids_), std::string::npos);
}

}  // namespace
}  // namespace seqrec
