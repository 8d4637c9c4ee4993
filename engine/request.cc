#include "engine/request.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace seqrec {

void rows_in_time_order(const std::vector<TimedRow>& entries, std::vector<int32_t>& rows, std::vector<int64_t>* times,
                        PrepareScratch& scratch) {
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
  if (times) {
    times->clear();
    times->reserve(kept.size());
    for (const PrepareScratch::Kept& k : kept) times->push_back(k.time);
  }
}

std::vector<int32_t> rows_in_time_order(const std::vector<TimedRow>& entries) {
  std::vector<int32_t> rows;
  PrepareScratch scratch;
  rows_in_time_order(entries, rows, nullptr, scratch);
  return rows;
}

PrepareRules prepare_rules(const ModelSpec& spec, std::optional<double> rating_threshold) {
  PrepareRules rules;
  rules.rating_threshold = rating_threshold;
  rules.uses_time = spec.uses_time();
  rules.uses_now = spec.uses_now();
  rules.model_kind = to_string(spec.blocks.kind);
  return rules;
}

namespace {
// Timestamps past this many seconds (year 5138) are taken for milliseconds in the clock note.
constexpr int64_t kLooksLikeMilliseconds = int64_t{100'000'000'000};
}  // namespace

namespace {

// Below this share of the catalog, a filter's rows are scored one by one like candidates
// instead of ranking the whole catalog without the rest.
constexpr int64_t kFilterAsCandidatesDivisor = 8;

// The request's candidate rows and its filter, as rows (PreparedRequest::restricted).
void restrict_rows(const Request& request, const Catalog& catalog, const PrepareRules& rules, PreparedRequest& out) {
  out.restricted = request.candidate_ids.has_value();
  out.candidate_rows.clear();
  out.filtered_out.clear();
  if (request.candidate_ids) {
    for (const std::string& id : *request.candidate_ids)
      if (const int32_t r = catalog.row(id); r > 0) out.candidate_rows.push_back(r);
    std::sort(out.candidate_rows.begin(), out.candidate_rows.end());  // a candidate listed twice counts once
    out.candidate_rows.erase(std::unique(out.candidate_rows.begin(), out.candidate_rows.end()), out.candidate_rows.end());
  }
  if (!request.filter) return;
  if (!rules.tags) {
    out.error = RequestError{"invalid_request", "filter: this server has no item metadata to filter by "
                                                "(serve with --items FILE)"};
    return;
  }
  const std::vector<int32_t> allowed = rules.tags->allowed_rows(*request.filter);
  if (out.restricted) {
    std::vector<int32_t> kept;
    std::set_intersection(out.candidate_rows.begin(), out.candidate_rows.end(), allowed.begin(), allowed.end(),
                          std::back_inserter(kept));
    out.candidate_rows.swap(kept);
  } else if (static_cast<int64_t>(allowed.size()) * kFilterAsCandidatesDivisor < catalog.size()) {
    out.restricted = true;
    out.candidate_rows = allowed;
  } else {
    size_t a = 0;
    for (int32_t r = 1; r < catalog.size(); ++r) {
      if (a < allowed.size() && allowed[a] == r)
        ++a;
      else
        out.filtered_out.push_back(r);
    }
  }
}

}  // namespace

void prepare_request(const Request& request, const Catalog& catalog, const PrepareRules& rules, PreparedRequest& out,
                     PrepareScratch& scratch) {
  out.seen_rows.clear();
  out.unknown_ids.clear();
  out.notes.clear();
  out.error.reset();
  restrict_rows(request, catalog, rules, out);
  std::vector<TimedRow>& entries = scratch.entries;
  entries.clear();
  for (size_t i = 0; i < request.interactions.size(); ++i) {
    const Interaction& it = request.interactions[i];
    const int32_t row = catalog.row(it.item_id);
    const bool positive = !it.rating || !rules.rating_threshold || *it.rating >= *rules.rating_threshold;
    if (row > 0) out.seen_rows.push_back(row);
    if (positive && row <= 0) out.unknown_ids.push_back(it.item_id);
    if (positive && row > 0 && rules.uses_time && !it.timestamp && !out.error) {
      std::string shown = it.item_id.size() > 40 ? it.item_id.substr(0, 37) + "..." : it.item_id;
      out.error = RequestError{"invalid_request", "interaction " + std::to_string(i) + " (item '" + shown +
                                                      "'): no timestamp, and this model (" + rules.model_kind +
                                                      ") reads the time of every interaction"};
    }
    entries.push_back({it.timestamp, row, positive && row > 0});
  }
  rows_in_time_order(entries, out.sequence, rules.uses_time ? &out.times : nullptr, scratch);
  if (!rules.uses_time) out.times.clear();
  out.now = 0;
  if (rules.uses_now) {
    if (request.now) {
      out.now = *request.now;
    } else {
      out.now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                    .count();
      const bool looks_like_ms = !out.times.empty() && out.times.back() >= kLooksLikeMilliseconds;
      if (looks_like_ms)
        out.notes.push_back("No \"now\" given: the server clock in Unix seconds (" + std::to_string(out.now) +
                            ") was used, but the interactions' timestamps look like milliseconds; send \"now\" in "
                            "the timestamps' unit.");
    }
  }
}

PreparedRequest prepare_request(const Request& request, const Catalog& catalog, const PrepareRules& rules) {
  PreparedRequest out;
  PrepareScratch scratch;
  prepare_request(request, catalog, rules, out, scratch);
  return out;
}

}  // namespace seqrec
