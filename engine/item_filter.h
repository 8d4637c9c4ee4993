// Business filters on items: a request may keep only the items carrying some tags
// ("filter": {"tags_any", "tags_all", "tags_none"}). The tags come from the item metadata the
// server loads (--items); ItemTags indexes them by catalog row for one model's catalog.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/catalog.h"

namespace seqrec {

struct ItemFilter {
  std::vector<std::string> tags_any;   // at least one of these (empty: no condition)
  std::vector<std::string> tags_all;   // every one of these
  std::vector<std::string> tags_none;  // none of these
};

class ItemTags {
 public:
  // `tags_of(id)` gives an item's tags (or null when the metadata does not list it); every
  // catalog row is looked up once.
  template <class TagsOf>
  ItemTags(const Catalog& catalog, TagsOf tags_of) : n_rows_(catalog.size()) {
    for (int32_t row = 1; row < catalog.size(); ++row)
      if (const std::vector<std::string>* tags = tags_of(catalog.id(row)))
        for (const std::string& tag : *tags) add(tag, row);
    finish();
  }

  // The catalog rows (ascending, row 0 never) that pass `filter`. A tag no item carries matches
  // nothing (tags_any/tags_all), which is not an error.
  std::vector<int32_t> allowed_rows(const ItemFilter& filter) const;
  int64_t n_rows() const { return n_rows_; }
  size_t n_tags() const { return rows_of_tag_.size(); }

 private:
  void add(const std::string& tag, int32_t row) { rows_of_tag_[tag].push_back(row); }
  void finish();  // each tag's rows sorted, once each

  int64_t n_rows_ = 0;
  std::unordered_map<std::string, std::vector<int32_t>> rows_of_tag_;
};

}  // namespace seqrec
