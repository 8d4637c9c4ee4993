#include "engine/request.h"

#include <algorithm>
#include <limits>

namespace seqrec {

void rows_in_time_order(const std::vector<TimedRow>& entries, std::vector<int32_t>& rows, PrepareScratch& scratch) {
  std::vector<PrepareScratch::Kept>& kept = scratch.kept;
  kept.clear();
  int64_t previous_time = std::numeric_limits<int64_t>::min();
  for (const TimedRow& e : entries) {
    const int64_t time = e.timestamp.value_or(previous_time);
    previous_time = time;
    if (e.keep) kept.push_back({time, static_cast<int32_t>(kept.size()), e.row});
  }
  // Stable by construction (equal times keep their input order), and in place: std::sort
  // needs no buffer where std::stable_sort allocates one. Histories usually arrive in time
  // order: then there is nothing to sort.
  const auto earlier = [](const PrepareScratch::Kept& a, const PrepareScratch::Kept& b) {
    return a.time != b.time ? a.time < b.time : a.order < b.order;
  };
  if (!std::is_sorted(kept.begin(), kept.end(), earlier)) std::sort(kept.begin(), kept.end(), earlier);
  rows.clear();
  rows.reserve(kept.size());
  for (const PrepareScratch::Kept& k : kept) rows.push_back(k.row);
}

std::vector<int32_t> rows_in_time_order(const std::vector<TimedRow>& entries) {
  std::vector<int32_t> rows;
  PrepareScratch scratch;
  rows_in_time_order(entries, rows, scratch);
  return rows;
}

void prepare_request(const Request& request, const Catalog& catalog, std::optional<double> rating_threshold,
                     int64_t max_len, PreparedRequest& out, PrepareScratch& scratch) {
  out.seen_rows.clear();
  out.unknown_ids.clear();
  std::vector<TimedRow>& entries = scratch.entries;
  entries.clear();
  for (const Interaction& it : request.interactions) {
    const int32_t row = catalog.row(it.item_id);
    const bool positive = !it.rating || !rating_threshold || *it.rating >= *rating_threshold;
    if (row > 0) out.seen_rows.push_back(row);
    if (positive && row <= 0) out.unknown_ids.push_back(it.item_id);
    entries.push_back({it.timestamp, row, positive && row > 0});
  }
  rows_in_time_order(entries, out.sequence, scratch);
  // The most recent max_len are the model's input.
  const size_t keep = std::min(out.sequence.size(), static_cast<size_t>(std::max<int64_t>(max_len, 0)));
  out.sequence.erase(out.sequence.begin(), out.sequence.end() - static_cast<std::ptrdiff_t>(keep));
}

PreparedRequest prepare_request(const Request& request, const Catalog& catalog,
                                std::optional<double> rating_threshold, int64_t max_len) {
  PreparedRequest out;
  PrepareScratch scratch;
  prepare_request(request, catalog, rating_threshold, max_len, out, scratch);
  return out;
}

}  // namespace seqrec
