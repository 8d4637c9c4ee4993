// A model as it is served: the recommender and where it came from. The one loaded-model type
// of seqrec: weights/model_loader.h makes it from a file, the server and the CLI use it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/recommender.h"

namespace seqrec {

struct LoadedModel {
  std::shared_ptr<const Recommender> recommender;
  std::string path;
  std::string source;             // "pmixer", "recbole", "tisasrec", "gsasrec", "hstu", "safetensors"
  std::string source_detail;
  std::string source_file;        // the checkpoint it was converted from
  std::string converter_version;  // the seqrec that converted it
  uint32_t format_version = 0;    // of the .seqrec file (1: old, re-convert it for faster loads)
  double load_seconds = 0;        // reading, checking and building the model
};

}  // namespace seqrec
