// A recommendation request as the engine sees it (already parsed and validated by the
// caller), and the rules that turn its interactions into the model's input sequence.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/catalog.h"

namespace seqrec {

struct Interaction {
  std::string item_id;
  std::optional<int64_t> timestamp;
  std::optional<double> rating;
};

struct Request {
  std::vector<Interaction> interactions;  // in the order the client (or the store) gave them
  int64_t k = 10;
  bool recommend_seen = false;
  std::optional<std::vector<std::string>> candidate_ids;  // none: the whole catalog
  std::vector<std::string> exclude_ids;
};

// What the model and the ranker need from a request.
struct PreparedRequest {
  std::vector<int32_t> sequence;         // item rows, oldest first, at most max_len
  std::vector<int32_t> seen_rows;        // rows of every known interacted item, positive or not
  std::vector<std::string> unknown_ids;  // positives the model does not know, skipped, in input order
};

// One interaction as the time order sees it.
struct TimedRow {
  std::optional<int64_t> timestamp;
  int32_t row;  // catalog row (<= 0: unknown)
  bool keep;    // enters the sequence (a known positive)
};
// The time order of product.md: the kept rows, sorted by timestamp ascending, stable (ties
// keep input order); an entry without a timestamp takes the time of the entry before it in
// input order (kept or not), i.e. keeps its place.
std::vector<int32_t> rows_in_time_order(const std::vector<TimedRow>& entries);

// Working memory of the two functions below, kept by a worker so that they allocate only
// while a history is longer than any before.
struct PrepareScratch {
  struct Kept {
    int64_t time;
    int32_t order;  // place in the input: equal times keep it
    int32_t row;
  };
  std::vector<TimedRow> entries;
  std::vector<Kept> kept;
};
// rows_in_time_order into `rows` (replacing its contents).
void rows_in_time_order(const std::vector<TimedRow>& entries, std::vector<int32_t>& rows, PrepareScratch& scratch);

// The sequence-building rules of product.md:
//  - positive = no rating, or rating >= threshold (no threshold: all positive);
//  - positives sorted by timestamp ascending, stable (ties keep input order); an
//    interaction without a timestamp keeps its place after the one before it in input order;
//  - ids unknown to the catalog are skipped (and reported);
//  - the most recent max_len known positives are kept.
PreparedRequest prepare_request(const Request& request, const Catalog& catalog,
                                std::optional<double> rating_threshold, int64_t max_len);
// The same into `out` (replacing its contents, reusing its memory).
void prepare_request(const Request& request, const Catalog& catalog, std::optional<double> rating_threshold,
                     int64_t max_len, PreparedRequest& out, PrepareScratch& scratch);

}  // namespace seqrec
