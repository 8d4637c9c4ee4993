#include "engine/catalog.h"

namespace seqrec {

Catalog::Catalog(std::vector<std::string> ids) : ids_(std::move(ids)) {
  rows_.reserve(ids_.size());
  for (size_t r = 1; r < ids_.size(); ++r) rows_.emplace(ids_[r], static_cast<int32_t>(r));
}

int32_t Catalog::row(std::string_view id) const {
  auto it = rows_.find(id);
  return it == rows_.end() ? -1 : it->second;
}

}  // namespace seqrec
