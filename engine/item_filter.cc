#include "engine/item_filter.h"

#include <algorithm>
#include <iterator>

namespace seqrec {

void ItemTags::finish() {
  for (auto& [tag, rows] : rows_of_tag_) {
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  }
}

std::vector<int32_t> ItemTags::allowed_rows(const ItemFilter& filter) const {
  static const std::vector<int32_t> kNone;
  auto rows_of = [&](const std::string& tag) -> const std::vector<int32_t>& {
    auto it = rows_of_tag_.find(tag);
    return it == rows_of_tag_.end() ? kNone : it->second;
  };
  std::vector<int32_t> allowed, scratch;
  if (!filter.tags_any.empty()) {
    for (const std::string& tag : filter.tags_any) {
      const std::vector<int32_t>& rows = rows_of(tag);
      scratch.clear();
      std::set_union(allowed.begin(), allowed.end(), rows.begin(), rows.end(), std::back_inserter(scratch));
      allowed.swap(scratch);
    }
  } else {
    allowed.resize(static_cast<size_t>(std::max<int64_t>(n_rows_ - 1, 0)));
    for (size_t i = 0; i < allowed.size(); ++i) allowed[i] = static_cast<int32_t>(i + 1);
  }
  for (const std::string& tag : filter.tags_all) {
    const std::vector<int32_t>& rows = rows_of(tag);
    scratch.clear();
    std::set_intersection(allowed.begin(), allowed.end(), rows.begin(), rows.end(), std::back_inserter(scratch));
    allowed.swap(scratch);
  }
  for (const std::string& tag : filter.tags_none) {
    const std::vector<int32_t>& rows = rows_of(tag);
    scratch.clear();
    std::set_difference(allowed.begin(), allowed.end(), rows.begin(), rows.end(), std::back_inserter(scratch));
    allowed.swap(scratch);
  }
  return allowed;
}

}  // namespace seqrec
