// Opening a .seqrec file as a ready-to-serve model (engine/loaded_model.h).
#pragma once

#include <optional>
#include <string>

#include "engine/loaded_model.h"

namespace seqrec {

// Loads and validates `path` (seqrec::Error on any defect); `rating_threshold` overrides
// the one stored in the file when given.
LoadedModel load_recommender(const std::string& path, std::optional<double> rating_threshold = std::nullopt);

}  // namespace seqrec
