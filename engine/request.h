// A recommendation request as the engine sees it (already parsed and validated by the
// caller), and the first stage of answering it: prepare — the rules that turn its
// interactions into the model's input sequence (recommender.h has the road: prepare →
// encode → score → select → answer).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/item_filter.h"
#include "engine/model_spec.h"

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
  // When the recommendation is asked for, in the unit of the timestamps (models that read it:
  // HSTU); none: the server's clock, in Unix seconds.
  std::optional<int64_t> now;
  // Only items whose tags pass this (item metadata needed); applied before ranking, so k
  // results come back whenever k eligible items exist.
  std::optional<ItemFilter> filter;
};

// Why a request cannot be answered (it is not the request's JSON that is wrong, but what the
// model needs of it): the API answers 400 with this code and message.
struct RequestError {
  std::string code;
  std::string message;
};

// What the model and the ranker need from a request.
struct PreparedRequest {
  std::vector<int32_t> sequence;         // item rows of the known positives, oldest first (all of them)
  std::vector<int64_t> times;            // their timestamps, for models that read time (else empty)
  int64_t now = 0;                       // the time the recommendation is for, for models that read it
  std::vector<int32_t> seen_rows;        // rows of every known interacted item, positive or not
  std::vector<std::string> unknown_ids;  // positives the model does not know, skipped, in input order
  std::vector<std::string> notes;        // sentences for the response's message
  std::optional<RequestError> error;     // set: answer with this error instead
  // Where the answer may come from. restricted: only candidate_rows (the request's known
  // candidate_ids, or the rows its filter allows when they are few), ascending, once each;
  // else the whole catalog minus filtered_out (the rows its filter removes, ascending).
  bool restricted = false;
  std::vector<int32_t> candidate_rows;
  std::vector<int32_t> filtered_out;
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

// Working memory of the functions below, kept by a worker so that they allocate only while a
// history is longer than any before.
struct PrepareScratch {
  struct Kept {
    int64_t time;
    int32_t order;  // place in the input: equal times keep it
    int32_t row;
  };
  std::vector<TimedRow> entries;
  std::vector<Kept> kept;
};
// rows_in_time_order into `rows` (replacing its contents); `times` (if not null) gets each
// kept row's time (the inherited one for an entry without a timestamp).
void rows_in_time_order(const std::vector<TimedRow>& entries, std::vector<int32_t>& rows, std::vector<int64_t>* times,
                        PrepareScratch& scratch);

// The serving rules a request is prepared by: the model file's, overridable at serve.
struct PrepareRules {
  std::optional<double> rating_threshold;  // positives: rating >= threshold (none: all positive)
  bool uses_time = false;                  // the model reads timestamps: every known positive needs one
  bool uses_now = false;                   // the model reads "now"
  const char* model_kind = "";             // named in errors ("hstu")
  const ItemTags* tags = nullptr;          // item tags by row, for filters (none: filters are refused)
};
PrepareRules prepare_rules(const ModelSpec& spec, std::optional<double> rating_threshold);

// The sequence-building rules of product.md:
//  - positive = no rating, or rating >= threshold (no threshold: all positive);
//  - positives sorted by timestamp ascending, stable (ties keep input order); an
//    interaction without a timestamp keeps its place after the one before it in input order;
//  - ids unknown to the catalog are skipped (and reported);
//  - the model keeps the most recent max_len known positives (Model::encode cuts).
// For a model that reads time, a known positive without a timestamp is an error, and `now`
// defaults to the clock (Unix seconds; a note when the timestamps look like milliseconds).
// Reusing `out`'s memory.
void prepare_request(const Request& request, const Catalog& catalog, const PrepareRules& rules, PreparedRequest& out,
                     PrepareScratch& scratch);
PreparedRequest prepare_request(const Request& request, const Catalog& catalog, const PrepareRules& rules);

}  // namespace seqrec
