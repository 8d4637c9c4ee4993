#include "engine/request.h"

#include <algorithm>
#include <limits>

namespace seqrec {

PreparedRequest prepare_request(const Request& request, const Catalog& catalog,
                                std::optional<double> rating_threshold, int64_t max_len) {
  PreparedRequest out;
  struct Positive {
    int64_t time;
    int32_t row;
  };
  std::vector<Positive> positives;
  positives.reserve(request.interactions.size());
  int64_t previous_time = std::numeric_limits<int64_t>::min();
  for (const Interaction& it : request.interactions) {
    const int64_t time = it.timestamp.value_or(previous_time);
    previous_time = time;
    const int32_t row = catalog.row(it.item_id);
    const bool positive = !it.rating || !rating_threshold || *it.rating >= *rating_threshold;
    if (row > 0) out.seen_rows.push_back(row);
    if (!positive) continue;
    if (row > 0)
      positives.push_back({time, row});
    else
      out.unknown_ids.push_back(it.item_id);
  }
  std::stable_sort(positives.begin(), positives.end(),
                   [](const Positive& a, const Positive& b) { return a.time < b.time; });
  const size_t keep = std::min(positives.size(), static_cast<size_t>(std::max<int64_t>(max_len, 0)));
  out.sequence.reserve(keep);
  for (size_t i = positives.size() - keep; i < positives.size(); ++i) out.sequence.push_back(positives[i].row);
  return out;
}

}  // namespace seqrec
