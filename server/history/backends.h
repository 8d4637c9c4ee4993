// The backends behind open_store, and what they share. Internal to server/history.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/history/store.h"

namespace seqrec::history {

std::unique_ptr<HistoryStore> make_memory_store(const StoreOptions& options);
std::unique_ptr<HistoryStore> make_lmdb_store(const std::string& path, const StoreOptions& options);
std::unique_ptr<HistoryStore> make_redis_store(const std::string& host, int port, int db, const StoreOptions& options);
// `seeds`: host, port of one or more cluster nodes; the rest is learnt from them.
std::unique_ptr<HistoryStore> make_redis_cluster_store(const std::vector<std::pair<std::string, int>>& seeds,
                                                       const StoreOptions& options);

// The order item_counts() promises: most counted first, ties by id.
inline void sort_item_counts(std::vector<std::pair<std::string, uint64_t>>& counts) {
  std::sort(counts.begin(), counts.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
}

// An id as it appears in an error message: quoted, control and non-ASCII bytes escaped,
// cut short when long, so a hostile id cannot break the one-line message.
inline std::string printable_id(std::string_view id) {
  static constexpr size_t kMaxShown = 64;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < id.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += id.size() > kMaxShown ? "'... (" + std::to_string(id.size()) + " bytes)" : "'";
  return out;
}

}  // namespace seqrec::history
