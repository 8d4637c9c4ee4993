// The model's catalog: the raw item id of every row, and the reverse lookup.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace seqrec {

class Catalog {
 public:
  Catalog() = default;
  // ids[row] for every row; row 0 is padding and is never looked up.
  explicit Catalog(const std::vector<std::string>& ids);
  // The ids in place, in the .seqrec catalog section's layout: row r's id is
  // text[offsets[r], offsets[r + 1]) (offsets: [n + 1], non-decreasing, checked by the caller),
  // kept alive by `backing` (the mapped model file). No copy of the ids is made.
  Catalog(int64_t n, const uint64_t* offsets, const char* text, std::shared_ptr<const void> backing);
  // Views into its own storage: moved, never copied.
  Catalog(Catalog&&) = default;
  Catalog& operator=(Catalog&&) = default;
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  int64_t size() const { return n_; }
  std::string_view id(int32_t row) const {
    const auto r = static_cast<size_t>(row);
    return {text_ + offsets_[r], static_cast<size_t>(offsets_[r + 1] - offsets_[r])};
  }
  // The row of an id, or -1 when the model does not know it.
  int32_t row(std::string_view id) const;

  // What makes a catalog unusable, found while indexing it (row 0, padding, is not checked):
  // the first id seen twice (its two rows), the first empty id (its row).
  std::optional<std::pair<int32_t, int32_t>> duplicate() const { return duplicate_; }
  std::optional<int32_t> empty_id() const { return empty_; }

 private:
  void index();

  int64_t n_ = 0;
  const uint64_t* offsets_ = nullptr;  // [n + 1]
  const char* text_ = nullptr;
  std::vector<uint64_t> own_offsets_;  // storage of an owned catalog (vectors: moves keep the pointers valid)
  std::vector<char> own_text_;
  std::shared_ptr<const void> backing_;  // of a catalog in place
  // Catalogs whose ids are all canonical decimal numbers (MovieLens, most exports) look an id
  // up by its value in a table — no string hashing on the request path; others by an
  // open-addressing table of rows (no allocation per id: a million ids index in a few ms).
  bool numeric_ = false;
  std::vector<int32_t> row_of_number_;  // [max id + 1], -1 where no row
  std::vector<int32_t> slots_;          // [power of two >= 2n]: rows by id hash, linear probing; -1 empty
  std::optional<std::pair<int32_t, int32_t>> duplicate_;
  std::optional<int32_t> empty_;
};

}  // namespace seqrec
