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

std::string write_response(const Response& response);
std::string write_error(const std::string& code, const std::string& message);

// JSON text for a catalog id: a number when the id is a canonical decimal integer that
// fits in int64, else a string.
std::string id_json(const std::string& id);

}  // namespace seqrec::api
