#include "engine/catalog.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
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

uint64_t hash_of(std::string_view id) { return XXH3_64bits(id.data(), id.size()); }

}  // namespace

Catalog::Catalog(const std::vector<std::string>& ids) : n_(static_cast<int64_t>(ids.size())) {
  own_offsets_.resize(ids.size() + 1);
  uint64_t at = 0;
  for (size_t r = 0; r < ids.size(); ++r) {
    own_offsets_[r] = at;
    at += ids[r].size();
  }
  own_offsets_[ids.size()] = at;
  own_text_.reserve(at);
  for (const std::string& id : ids) own_text_.insert(own_text_.end(), id.begin(), id.end());
  offsets_ = own_offsets_.data();
  text_ = own_text_.data();
  index();
}

Catalog::Catalog(int64_t n, const uint64_t* offsets, const char* text, std::shared_ptr<const void> backing)
    : n_(n), offsets_(offsets), text_(text), backing_(std::move(backing)) {
  index();
}

void Catalog::index() {
  // The number table is used when it stays small next to the catalog itself.
  int64_t max_number = -1;
  bool numeric = n_ > 1;
  for (int64_t r = 1; r < n_ && numeric; ++r) {
    const int64_t v = canonical_number(id(static_cast<int32_t>(r)));
    numeric = v >= 0;
    max_number = std::max(max_number, v);
  }
  if (numeric && max_number < 4 * n_ + 4096) {
    numeric_ = true;
    row_of_number_.assign(static_cast<size_t>(max_number + 1), -1);
    for (int64_t r = 1; r < n_; ++r) {
      int32_t& slot = row_of_number_[static_cast<size_t>(canonical_number(id(static_cast<int32_t>(r))))];
      if (slot >= 0 && !duplicate_) duplicate_ = {slot, static_cast<int32_t>(r)};
      if (slot < 0) slot = static_cast<int32_t>(r);  // the first row of an id wins, as in the hash table
    }
    return;
  }
  const uint64_t mask = std::bit_ceil(static_cast<uint64_t>(std::max<int64_t>(2 * n_, 2))) - 1;
  slots_.assign(static_cast<size_t>(mask + 1), -1);
  for (int64_t r = 1; r < n_; ++r) {
    const std::string_view key = id(static_cast<int32_t>(r));
    if (key.empty() && !empty_) empty_ = static_cast<int32_t>(r);
    for (uint64_t s = hash_of(key) & mask;; s = (s + 1) & mask) {
      int32_t& slot = slots_[static_cast<size_t>(s)];
      if (slot < 0) {
        slot = static_cast<int32_t>(r);
        break;
      }
      if (id(slot) == key) {
        if (!duplicate_) duplicate_ = {slot, static_cast<int32_t>(r)};
        break;
      }
    }
  }
}

int32_t Catalog::row(std::string_view key) const {
  if (numeric_) {
    const int64_t v = canonical_number(key);
    return v >= 0 && v < static_cast<int64_t>(row_of_number_.size()) ? row_of_number_[static_cast<size_t>(v)] : -1;
  }
  if (slots_.empty()) return -1;
  const uint64_t mask = slots_.size() - 1;
  for (uint64_t s = hash_of(key) & mask;; s = (s + 1) & mask) {
    const int32_t r = slots_[static_cast<size_t>(s)];
    if (r < 0) return -1;
    if (id(r) == key) return r;
  }
}

}  // namespace seqrec
