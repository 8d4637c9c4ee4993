// Opening a .seqrec file as a ready-to-serve model (engine/loaded_model.h).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "engine/loaded_model.h"

namespace seqrec {

// Item tags for a model's catalog (request filters), built from item metadata the caller holds.
using ItemTagsFor = std::function<std::shared_ptr<const ItemTags>(const Catalog& catalog)>;

// Loads and validates `path` (seqrec::Error on any defect); `rating_threshold` overrides
// the one stored in the file when given; `tags_for`, when given, indexes the item tags.
LoadedModel load_recommender(const std::string& path, std::optional<double> rating_threshold = std::nullopt,
                             const ItemTagsFor& tags_for = {});

}  // namespace seqrec
