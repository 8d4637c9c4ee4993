// Item metadata (`--items FILE`): a title, tags and any other column per item id, read from a
// CSV or TSV file with a header. Requests filter on the tags (engine/item_filter.h) and ask for
// fields back ("fields": ["title", "tags"]); GET /items/{id} and GET /items?q= read it.
//
// Columns: --item-columns item=NAME,title=NAME,tags=NAME; unset roles take the first header
// name found among item_id/itemId/item/movieId/id, title/name, tags/genres/categories/category
// (any case), so MovieLens's movies.csv works as it is. Every other column is kept too, as text,
// under its header name. Tags are split on --tags-separator (default '|'), blanks trimmed,
// empty ones dropped.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/catalog.h"
#include "engine/item_filter.h"

namespace seqrec::items {

struct ItemColumns {
  std::optional<std::string> item, title, tags;
};
// "item=movieId,title=title,tags=genres" (empty: the defaults). Throws seqrec::Error.
ItemColumns parse_item_columns(const std::string& text);

struct ItemRecord {
  std::string id;
  std::string title;                // empty when the file has no title column
  std::vector<std::string> tags;    // in file order, once each
  std::vector<std::string> others;  // one per ItemMetadata::other_columns()
};

class ItemMetadata {
 public:
  // Reads the whole file. Throws seqrec::Error naming the file, line, column and value of
  // the first defect (a missing column, a line with too few or too many fields, an empty or
  // repeated item id).
  static std::shared_ptr<const ItemMetadata> load(const std::string& path, const ItemColumns& columns = {},
                                                  const std::string& tags_separator = "|");

  const ItemRecord* find(std::string_view id) const;
  size_t size() const { return items_.size(); }
  const std::string& path() const { return path_; }
  bool has_title() const { return has_title_; }
  bool has_tags() const { return has_tags_; }
  const std::vector<std::string>& other_columns() const { return others_; }

  // The names a request may ask for in "fields": title and tags when present, then the others.
  std::vector<std::string> field_names() const;
  // Checks a request's "fields" (ApiError-style message in a seqrec::Error naming the bad one).
  void check_fields(const std::vector<std::string>& fields) const;
  // Appends `, "name": value` for each field of `item` (nothing for an unknown item).
  void append_fields(std::string& out, const ItemRecord* item, const std::vector<std::string>& fields) const;
  // Every column of an item as a JSON object's members (`"id": ..., "title": ..., ...`).
  void append_all(std::string& out, const ItemRecord& item) const;

  // Items whose title contains `query` (ASCII case-insensitive), in file order, at most `limit`.
  std::vector<const ItemRecord*> search(std::string_view query, size_t limit) const;

  // Total tags over all items (for logs).
  size_t n_tag_assignments() const;

 private:
  std::string path_;
  bool has_title_ = false, has_tags_ = false;
  std::vector<std::string> others_;
  std::vector<ItemRecord> items_;
  std::unordered_map<std::string_view, size_t> index_;  // id → items_ (views into items_)
};

// The tag index a model's catalog gets from `metadata` (what load_recommender's tags_for takes);
// empty when there is no metadata. The ItemTags it builds hold no pointer into `metadata`.
std::function<std::shared_ptr<const ItemTags>(const Catalog&)> tags_for(const ItemMetadata* metadata);

}  // namespace seqrec::items
