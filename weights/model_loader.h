// Opening a .seqrec file as a ready-to-serve Recommender.
#pragma once

#include <memory>
#include <string>

#include "engine/recommender.h"
#include "weights/seqrec_file.h"

namespace seqrec {

struct LoadedModel {
  std::shared_ptr<const Recommender> recommender;
  Provenance provenance;
  std::string path;
};

// Loads and validates `path` (seqrec::Error on any defect); `rating_threshold` overrides
// the one stored in the file when given.
LoadedModel load_recommender(const std::string& path, std::optional<double> rating_threshold = std::nullopt);

}  // namespace seqrec
