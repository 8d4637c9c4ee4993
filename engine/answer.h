// The answer stage: a request's response from its selected rows — catalog ids, the score the
// API reports, unknown candidates (score 0) in place, and the message.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/catalog.h"
#include "engine/request.h"
#include "engine/scorer.h"

namespace seqrec {

struct ScoredItem {
  std::string id;
  int32_t row = -1;  // -1: a candidate id the model does not know (score 0)
  float score = 0.0f;
};

struct Response {
  std::vector<ScoredItem> recommendations;
  std::optional<std::string> message;  // none: nothing needs saying
  std::optional<RequestError> error;   // set: the request cannot be answered (see RequestError)
};

// Why a request got what it got, for the message.
enum class AnswerKind {
  model,          // the model's ranking of the request's history
  empty_history,  // the model's scores for an empty history (no known positive, no popularity)
  popularity,     // the most popular items (no known positive)
};

// rows / raw: the selected rows, best first, with their raw scores (logits, or popularity
// shares); report maps a raw score to the reported one (monotonic non-decreasing).
Response answer(const Request& request, const PreparedRequest& prepared, const Catalog& catalog, AnswerKind kind,
                std::span<const int32_t> rows, std::span<const float> raw, const ScoreReport& report);

// The response of a request that cannot be answered.
Response answer_error(const RequestError& error);

}  // namespace seqrec
