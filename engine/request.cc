#include "engine/request.h"

#include <algorithm>
#include <limits>

namespace seqrec {

std::vector<int32_t> rows_in_time_order(const std::vector<TimedRow>& entries) {
  struct Timed {
    int64_t time;
    int32_t row;
  };
  std::vector<Timed> kept;
  kept.reserve(entries.size());
  int64_t previous_time = std::numeric_limits<int64_t>::min();
  for (const TimedRow& e : entries) {
    const int64_t time = e.timestamp.value_or(previous_time);
    previous_time = time;
    if (e.keep) kept.push_back({time, e.row});
  }
  const auto earlier = [](const Timed& a, const Timed& b) { return a.time < b.time; };
  // Histories usually arrive in time order: then there is nothing to sort (and no buffer to
  // allocate for the stable sort).
  if (!std::is_sorted(kept.begin(), kept.end(), earlier)) std::stable_sort(kept.begin(), kept.end(), earlier);
  std::vector<int32_t> rows;
  rows.reserve(kept.size());
  for (const Timed& t : kept) rows.push_back(t.row);
  return rows;
}

PreparedRequest prepare_request(const Request& request, const Catalog& catalog,
                                std::optional<double> rating_threshold, int64_t max_len) {
  PreparedRequest out;
  std::vector<TimedRow> entries;
  entries.reserve(request.interactions.size());
  for (const Interaction& it : request.interactions) {
    const int32_t row = catalog.row(it.item_id);
    const bool positive = !it.rating || !rating_threshold || *it.rating >= *rating_threshold;
    if (row > 0) out.seen_rows.push_back(row);
    if (positive && row <= 0) out.unknown_ids.push_back(it.item_id);
    entries.push_back({it.timestamp, row, positive && row > 0});
  }
  out.sequence = rows_in_time_order(entries);
  // The most recent max_len are the model's input.
  const size_t keep = std::min(out.sequence.size(), static_cast<size_t>(std::max<int64_t>(max_len, 0)));
  out.sequence.erase(out.sequence.begin(), out.sequence.end() - static_cast<std::ptrdiff_t>(keep));
  return out;
}

}  // namespace seqrec
