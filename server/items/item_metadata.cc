#include "server/items/item_metadata.h"

#include <algorithm>
#include <cctype>

#include "engine/error.h"
#include "server/json_io.h"
#include "server/tabular/record_reader.h"

namespace seqrec::items {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The header position of `chosen` (exact, any case), else of the first default name present.
int find_column(const std::vector<std::string>& header, const std::optional<std::string>& chosen,
                std::initializer_list<const char*> defaults, const std::string& path, const char* role) {
  auto position = [&](std::string_view name) -> int {
    for (size_t i = 0; i < header.size(); ++i)
      if (lower(tabular::trim(header[i])) == lower(name)) return static_cast<int>(i);
    return -1;
  };
  if (chosen) {
    const int at = position(*chosen);
    if (at < 0) throw Error("--item-columns: " + std::string(role) + "=" + *chosen + ": no such column in " + path);
    return at;
  }
  for (const char* name : defaults)
    if (const int at = position(name); at >= 0) return at;
  return -1;
}

}  // namespace

ItemColumns parse_item_columns(const std::string& text) {
  ItemColumns out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string_view part = tabular::trim(std::string_view(text).substr(start, comma - start));
    start = comma + 1;
    if (part.empty()) {
      if (comma == text.size()) break;
      continue;
    }
    const size_t equals = part.find('=');
    if (equals == std::string_view::npos)
      throw Error("--item-columns: '" + std::string(part) + "' (expected ROLE=COLUMN, e.g. item=movieId)");
    const std::string role = lower(tabular::trim(part.substr(0, equals)));
    const std::string name(tabular::trim(part.substr(equals + 1)));
    if (name.empty()) throw Error("--item-columns: '" + std::string(part) + "': empty column name");
    std::optional<std::string>* slot = role == "item" ? &out.item : role == "title" ? &out.title : role == "tags" ? &out.tags : nullptr;
    if (!slot) throw Error("--item-columns: unknown role '" + role + "' (expected item, title, tags)");
    if (*slot) throw Error("--item-columns: role '" + role + "' given twice");
    *slot = name;
    if (comma == text.size()) break;
  }
  return out;
}

std::shared_ptr<const ItemMetadata> ItemMetadata::load(const std::string& path, const ItemColumns& columns,
                                                       const std::string& tags_separator) {
  if (tags_separator.empty()) throw Error("--tags-separator: empty");
  tabular::RecordReader reader(path);
  const std::optional<std::string> first_line = reader.first_line();
  if (!first_line) throw Error(path + ": empty (expected a header line, then one line per item)");
  reader.set_format(first_line->find('\t') != std::string::npos ? tabular::Format::kTsv : tabular::Format::kCsv);
  tabular::Record header;
  while (reader.next(header) && tabular::blank(header)) {
  }
  if (!header.error.empty()) throw Error(path + ":" + std::to_string(header.line) + ": " + header.error);
  const int item_at = find_column(header.fields, columns.item, {"item_id", "itemId", "item", "movieId", "id"}, path, "item");
  if (item_at < 0)
    throw Error(path + ": no item id column in the header (expected one of item_id, itemId, item, movieId, id, "
                       "or name it with --item-columns item=NAME)");
  const int title_at = find_column(header.fields, columns.title, {"title", "name"}, path, "title");
  const int tags_at = find_column(header.fields, columns.tags, {"tags", "genres", "categories", "category"}, path, "tags");

  auto out = std::make_shared<ItemMetadata>();
  out->path_ = path;
  out->has_title_ = title_at >= 0;
  out->has_tags_ = tags_at >= 0;
  std::vector<int> other_at;
  for (size_t i = 0; i < header.fields.size(); ++i) {
    const int at = static_cast<int>(i);
    if (at == item_at || at == title_at || at == tags_at) continue;
    std::string name(tabular::trim(header.fields[i]));
    if (name.empty() || name == "id" || name == "title" || name == "tags" || name == "models" || name == "score") continue;
    out->others_.push_back(std::move(name));
    other_at.push_back(at);
  }
  std::unordered_map<std::string, uint64_t> first_line_of;
  tabular::Record record;
  while (reader.next(record)) {
    if (tabular::blank(record)) continue;
    const std::string where = path + ":" + std::to_string(record.line);
    if (!record.error.empty()) throw Error(where + ": " + record.error);
    if (record.fields.size() != header.fields.size())
      throw Error(where + ": " + std::to_string(record.fields.size()) + " fields, the header has " +
                  std::to_string(header.fields.size()));
    ItemRecord item;
    item.id = std::string(tabular::trim(record.fields[static_cast<size_t>(item_at)]));
    if (item.id.empty()) throw Error(where + ": empty item id (column '" + header.fields[static_cast<size_t>(item_at)] + "')");
    if (auto [it, fresh] = first_line_of.emplace(item.id, record.line); !fresh)
      throw Error(where + ": item '" + visible_text(item.id) + "' listed twice (first at line " +
                  std::to_string(it->second) + ")");
    if (title_at >= 0) item.title = record.fields[static_cast<size_t>(title_at)];
    if (tags_at >= 0) {
      const std::string& text = record.fields[static_cast<size_t>(tags_at)];
      size_t start = 0;
      while (start <= text.size()) {
        size_t end = text.find(tags_separator, start);
        if (end == std::string::npos) end = text.size();
        std::string tag(tabular::trim(std::string_view(text).substr(start, end - start)));
        if (!tag.empty() && std::find(item.tags.begin(), item.tags.end(), tag) == item.tags.end())
          item.tags.push_back(std::move(tag));
        start = end + tags_separator.size();
      }
    }
    for (int at : other_at) item.others.push_back(record.fields[static_cast<size_t>(at)]);
    out->items_.push_back(std::move(item));
  }
  if (out->items_.empty()) throw Error(path + ": no item lines after the header");
  out->index_.reserve(out->items_.size());
  for (size_t i = 0; i < out->items_.size(); ++i) out->index_.emplace(out->items_[i].id, i);
  return out;
}

const ItemRecord* ItemMetadata::find(std::string_view id) const {
  const auto it = index_.find(id);
  return it == index_.end() ? nullptr : &items_[it->second];
}

std::vector<std::string> ItemMetadata::field_names() const {
  std::vector<std::string> out;
  if (has_title_) out.emplace_back("title");
  if (has_tags_) out.emplace_back("tags");
  out.insert(out.end(), others_.begin(), others_.end());
  return out;
}

void ItemMetadata::check_fields(const std::vector<std::string>& fields) const {
  const std::vector<std::string> known = field_names();
  for (size_t i = 0; i < fields.size(); ++i) {
    if (std::find(known.begin(), known.end(), fields[i]) != known.end()) continue;
    std::string have;
    for (const std::string& name : known) have += (have.empty() ? "" : ", ") + name;
    throw Error("fields[" + std::to_string(i) + "]: '" + visible_text(fields[i]) + "' is not an item metadata column (" +
                path_ + " has: " + have + ")");
  }
}

void ItemMetadata::append_fields(std::string& out, const ItemRecord* item, const std::vector<std::string>& fields) const {
  for (const std::string& name : fields) {
    out += ", ";
    api::append_quoted(out, name);
    out += ": ";
    if (!item) {
      out += "null";  // an item the model knows but the metadata does not list
    } else if (name == "title" && has_title_) {
      api::append_quoted(out, item->title);
    } else if (name == "tags" && has_tags_) {
      out += '[';
      for (size_t t = 0; t < item->tags.size(); ++t) {
        if (t) out += ", ";
        api::append_quoted(out, item->tags[t]);
      }
      out += ']';
    } else {
      const auto at = std::find(others_.begin(), others_.end(), name);
      if (at == others_.end())
        out += "null";
      else
        api::append_quoted(out, item->others[static_cast<size_t>(at - others_.begin())]);
    }
  }
}

void ItemMetadata::append_all(std::string& out, const ItemRecord& item) const {
  out += "\"id\": " + api::id_json(item.id);
  append_fields(out, &item, field_names());
}

std::vector<const ItemRecord*> ItemMetadata::search(std::string_view query, size_t limit) const {
  std::vector<const ItemRecord*> out;
  const std::string needle = lower(query);
  for (const ItemRecord& item : items_) {
    if (out.size() >= limit) break;
    if (needle.empty() || lower(item.title).find(needle) != std::string::npos ||
        (!has_title_ && lower(item.id).find(needle) != std::string::npos))
      out.push_back(&item);
  }
  return out;
}

size_t ItemMetadata::n_tag_assignments() const {
  size_t n = 0;
  for (const ItemRecord& item : items_) n += item.tags.size();
  return n;
}

std::function<std::shared_ptr<const ItemTags>(const Catalog&)> tags_for(const ItemMetadata* metadata) {
  if (!metadata) return {};
  return [metadata](const Catalog& catalog) {
    return std::make_shared<const ItemTags>(catalog, [metadata](std::string_view id) {
      const ItemRecord* record = metadata->find(id);
      return record ? &record->tags : nullptr;
    });
  };
}

}  // namespace seqrec::items
