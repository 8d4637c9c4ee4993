// The model's catalog: the raw item id of every row, and the reverse lookup.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace seqrec {

class Catalog {
 public:
  Catalog() = default;
  // ids[row] for every row; row 0 is padding and is never looked up. Ids must be unique
  // (the model file loader guarantees it).
  explicit Catalog(std::vector<std::string> ids);

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  const std::string& id(int32_t row) const { return ids_[static_cast<size_t>(row)]; }
  // The row of an id, or -1 when the model does not know it.
  int32_t row(std::string_view id) const;

 private:
  std::vector<std::string> ids_;
  // Catalogs whose ids are all canonical decimal numbers (MovieLens, most exports) look an id
  // up by its value in a table — no string hashing on the request path; others by hash.
  std::vector<int32_t> row_of_number_;                  // [max id + 1], -1 where no row
  bool numeric_ = false;
  std::unordered_map<std::string_view, int32_t> rows_;  // views into ids_ (non-numeric catalogs)
};

}  // namespace seqrec
