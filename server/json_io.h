// JSON in and out for the HTTP API (product.md): request parsing with field-named errors,
// response and error writing. Shared by `seqrec serve` and `seqrec recommend`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "engine/recommender.h"
#include "engine/request.h"

namespace seqrec::api {

// A client error: becomes {"error": {"code", "message"}} with an HTTP status.
class ApiError : public Error {
 public:
  ApiError(int status, std::string code, const std::string& message)
      : Error(message), status_(status), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string code_;
};

struct Limits {
  int64_t max_k = 1000;
  int64_t max_interactions = 10000;
  int64_t max_candidates = 100000;
};

// A parsed body of POST /recommend: exactly one of interactions / user_id is set.
struct RecommendRequest {
  Request request;  // interactions filled when given inline
  bool has_interactions = false;
  std::optional<std::string> user_id;
};

// Throws ApiError (400, code "invalid_json" or "invalid_request") naming the field and value.
RecommendRequest parse_recommend_request(std::string_view body, const Limits& limits);

// POST /recommend/batch: {"requests": [...]} with at most max_requests entries. The body
// itself must be valid (else ApiError); each entry parses on its own, so one bad entry
// becomes that entry's error and the others are answered.
struct BatchEntry {
  std::optional<RecommendRequest> request;
  std::optional<ApiError> error;
};
std::vector<BatchEntry> parse_batch_request(std::string_view body, const Limits& limits, int64_t max_requests);

// POST /users/{id}/interactions: {"user_interactions": ...} in either form.
std::vector<Interaction> parse_interactions_body(std::string_view body, const Limits& limits);

// POST /admin/reload: an empty body, or {"path": "NEW.seqrec"}.
std::optional<std::string> parse_reload_body(std::string_view body);

std::string write_response(const Response& response);
std::string write_error(const std::string& code, const std::string& message);
std::string write_batch(const std::vector<std::string>& results_json);  // each a response or an error object
std::string write_interactions(const std::string& user_id, const std::vector<Interaction>& interactions);

// JSON string literal (quoted, escaped).
std::string quote(std::string_view text);

// JSON text for a catalog id: a number when the id is a canonical decimal integer that
// fits in int64, else a string.
std::string id_json(const std::string& id);

}  // namespace seqrec::api
