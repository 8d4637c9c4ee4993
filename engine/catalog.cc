#include "engine/catalog.h"

#include <algorithm>
#include <cstdint>

namespace seqrec {

namespace {

// The value of a canonical decimal id ("0", or digits without a leading zero, < 2^31);
// -1 for anything else ("007" and "7" are different ids, so "007" is not the number 7).
int64_t canonical_number(std::string_view id) {
  if (id.empty() || id.size() > 10 || (id.size() > 1 && id[0] == '0')) return -1;
  int64_t value = 0;
  for (char c : id) {
    if (c < '0' || c > '9') return -1;
    value = value * 10 + (c - '0');
  }
  return value <= INT32_MAX ? value : -1;
}

}  // namespace

Catalog::Catalog(std::vector<std::string> ids) : ids_(std::move(ids)) {
  // The number table is used when it stays small next to the catalog itself.
  int64_t max_number = -1;
  bool numeric = ids_.size() > 1;
  for (size_t r = 1; r < ids_.size() && numeric; ++r) {
    const int64_t v = canonical_number(ids_[r]);
    numeric = v >= 0;
    max_number = std::max(max_number, v);
  }
  if (numeric && max_number < 4 * static_cast<int64_t>(ids_.size()) + 4096) {
    numeric_ = true;
    row_of_number_.assign(static_cast<size_t>(max_number + 1), -1);
    for (size_t r = 1; r < ids_.size(); ++r)
      row_of_number_[static_cast<size_t>(canonical_number(ids_[r]))] = static_cast<int32_t>(r);
    return;
  }
  rows_.reserve(ids_.size());
  for (size_t r = 1; r < ids_.size(); ++r) rows_.emplace(ids_[r], static_cast<int32_t>(r));
}

int32_t Catalog::row(std::string_view id) const {
  if (numeric_) {
    const int64_t v = canonical_number(id);
    return v >= 0 && v < static_cast<int64_t>(row_of_number_.size()) ? row_of_number_[static_cast<size_t>(v)] : -1;
  }
  auto it = rows_.find(id);
  return it == rows_.end() ? -1 : it->second;
}

}  // namespace seqrec
