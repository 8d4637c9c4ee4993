// JSON in and out for the HTTP API (product.md): request parsing with field-named errors,
// response and error writing. Shared by `seqrec serve` and `seqrec recommend`.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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
  std::optional<std::string> model;        // "model": which served model answers
  std::optional<std::string> routing_key;  // "routing_key": the A/B split's key for an inline request
  std::vector<std::string> fields;         // "fields": item metadata returned with each item
};

// A filter object alone ({"tags_any", "tags_all", "tags_none"}), e.g. `seqrec recommend --filter`.
ItemFilter parse_filter(std::string_view json, const Limits& limits);

// POST /similar_items: {"item_id", "k", "candidate_ids", "exclude_ids", "filter", "fields", "model"}.
struct SimilarItemsRequest {
  std::string item_id;
  Request request;  // k, candidate_ids, exclude_ids, filter
  std::optional<std::string> model;
  std::vector<std::string> fields;
};
SimilarItemsRequest parse_similar_items_request(std::string_view body, const Limits& limits);

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

// POST /admin/reload: an empty body, or {"model": NAME, "path": "NEW.seqrec"} (both optional).
struct ReloadRequest {
  std::optional<std::string> model;
  std::optional<std::string> path;
};
ReloadRequest parse_reload_body(std::string_view body);

// POST /admin/split: {"weights": {"NAME": percent, ...} | null}. The names and the sum are
// checked by the caller (it knows the models).
std::optional<std::vector<std::pair<std::string, double>>> parse_split_body(std::string_view body);

// Writes `, "field": value...` for an item id into a recommendation object (item metadata).
using ItemFieldsWriter = std::function<void(std::string& out, const std::string& id)>;

std::string write_response(const Response& response, const ItemFieldsWriter* fields = nullptr);
std::string write_error(const std::string& code, const std::string& message);
std::string write_batch(const std::vector<std::string>& results_json);  // each a response or an error object
std::string write_interactions(const std::string& user_id, const std::vector<Interaction>& interactions);

// JSON string literal (quoted, escaped).
std::string quote(std::string_view text);
void append_quoted(std::string& out, std::string_view text);

// JSON text for a catalog id: a number when the id is a canonical decimal integer that
// fits in int64, else a string.
std::string id_json(const std::string& id);

}  // namespace seqrec::api
