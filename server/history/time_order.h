// The time order every backend keeps a user's history in (store.h, "Time order").
//
// A stored history is sorted by each interaction's effective time: its timestamp, or for one
// without a timestamp, the effective time of the interaction before it (the first of a
// history: the earliest time there is). That is the engine's own rule (engine/request.h,
// rows_in_time_order), so the engine never has to reorder a stored history.
//
// Appended interactions are merged in one by one, in the order given: a timestamped one goes
// after every stored interaction with an effective time <= its timestamp (equal times keep
// arrival order); one without a timestamp goes after everything stored so far ("now", in
// arrival order). The oldest by effective time are trimmed first.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "engine/request.h"

namespace seqrec::history {

// The effective time of an empty history, and of interactions before any timestamp.
inline constexpr int64_t kEarliestTime = std::numeric_limits<int64_t>::min();

// Whether appending `appended` after a history whose last timestamp is `latest` (kEarliestTime
// when none) is the same as merging: every timestamp >= `latest` and >= the timestamps before
// it in `appended`. The common case, which every backend appends without reading the history.
bool appends_in_order(int64_t latest, std::span<const Interaction> appended);

// The last timestamp of a history (the effective time of its last interaction when it is in
// time order); kEarliestTime when no interaction has one.
int64_t latest_time(std::span<const Interaction> history);

// Merges `appended` into `history` (the stored interactions, oldest first) by the rules above.
// A history stored before time order was kept (arrival order) comes out sorted.
void merge_in_time_order(std::vector<Interaction>& history, std::span<const Interaction> appended);

// Drops the oldest interactions beyond `cap` from the front of `history`, moving them to
// `trimmed` (appended, oldest first).
void trim_oldest(std::vector<Interaction>& history, size_t cap, std::vector<Interaction>& trimmed);

}  // namespace seqrec::history
