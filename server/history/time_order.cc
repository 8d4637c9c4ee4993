#include "server/history/time_order.h"

#include <algorithm>
#include <utility>

namespace seqrec::history {

bool appends_in_order(int64_t latest, std::span<const Interaction> appended) {
  for (const Interaction& it : appended) {
    if (!it.timestamp) continue;  // "now": after everything, in order by definition
    if (*it.timestamp < latest) return false;
    latest = *it.timestamp;
  }
  return true;
}

int64_t latest_time(std::span<const Interaction> history) {
  for (auto it = history.rbegin(); it != history.rend(); ++it)
    if (it->timestamp) return *it->timestamp;
  return kEarliestTime;
}

void merge_in_time_order(std::vector<Interaction>& history, std::span<const Interaction> appended) {
  // Sort keys: stored interactions take the engine's rule (a missing timestamp inherits the
  // one before it); appended ones without a timestamp take the latest time seen so far, which
  // puts them after everything before them. A stable sort by key is then the same as
  // inserting the appended interactions one by one after every equal or earlier one.
  const size_t stored = history.size();
  std::vector<std::pair<int64_t, size_t>> order;
  order.reserve(stored + appended.size());
  int64_t previous = kEarliestTime, latest = kEarliestTime;
  for (size_t i = 0; i < stored; ++i) {
    previous = history[i].timestamp.value_or(previous);
    latest = std::max(latest, previous);
    order.emplace_back(previous, i);
  }
  for (size_t i = 0; i < appended.size(); ++i) {
    const int64_t time = appended[i].timestamp.value_or(latest);
    latest = std::max(latest, time);
    order.emplace_back(time, stored + i);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Interaction> merged;
  merged.reserve(order.size());
  for (const auto& [time, i] : order) merged.push_back(i < stored ? std::move(history[i]) : appended[i - stored]);
  history.swap(merged);
}

void trim_oldest(std::vector<Interaction>& history, size_t cap, std::vector<Interaction>& trimmed) {
  if (history.size() <= cap) return;
  const auto cut = history.begin() + static_cast<std::ptrdiff_t>(history.size() - cap);
  trimmed.insert(trimmed.end(), std::make_move_iterator(history.begin()), std::make_move_iterator(cut));
  history.erase(history.begin(), cut);
}

}  // namespace seqrec::history
