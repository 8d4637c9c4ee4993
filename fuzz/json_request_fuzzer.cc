// Feeds the bytes, as an HTTP body, to every JSON request reader of the API (server/json_io.h)
// with the default api::Limits: parse_recommend_request, parse_batch_request (256 entries, the
// service default), parse_interactions_body, parse_reload_body, parse_similar_items_request,
// parse_split_body and parse_filter.
// A failure: any sanitizer report; an exception other than api::ApiError (the readers promise
// a 400 naming the field); an ApiError whose status is not 400 or whose error object is not
// valid JSON; a parsed request breaking a limit; interactions that write back as invalid JSON.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_common.h"
#include "server/json_io.h"

namespace {

using seqrec::fuzz::fail;
using seqrec::fuzz::require_valid_json;
namespace api = seqrec::api;

constexpr int64_t kMaxBatchRequests = 256;  // server::ServiceOptions' default

void check_rejection(const api::ApiError& e, const char* reader) {
  if (e.status() != 400) fail(std::string(reader) + ": ApiError status " + std::to_string(e.status()) + ", expected 400");
  if (e.code() != "invalid_json" && e.code() != "invalid_request")
    fail(std::string(reader) + ": ApiError code '" + e.code() + "', expected invalid_json or invalid_request");
  require_valid_json(api::write_error(e.code(), e.what()), std::string(reader) + "'s error object");
}

void check_within_limits(const api::RecommendRequest& parsed, const api::Limits& limits, const char* reader) {
  const seqrec::Request& r = parsed.request;
  if (parsed.has_interactions == parsed.user_id.has_value())
    fail(std::string(reader) + ": expected exactly one of user_interactions / user_id");
  if (r.k < 1 || r.k > limits.max_k) fail(std::string(reader) + ": k " + std::to_string(r.k) + " accepted");
  if (static_cast<int64_t>(r.interactions.size()) > limits.max_interactions)
    fail(std::string(reader) + ": " + std::to_string(r.interactions.size()) + " interactions accepted");
  if (r.candidate_ids && static_cast<int64_t>(r.candidate_ids->size()) > limits.max_candidates)
    fail(std::string(reader) + ": " + std::to_string(r.candidate_ids->size()) + " candidate_ids accepted");
  if (static_cast<int64_t>(r.exclude_ids.size()) > limits.max_candidates)
    fail(std::string(reader) + ": " + std::to_string(r.exclude_ids.size()) + " exclude_ids accepted");
  // What the service echoes back (GET /users/{id}/interactions) must stay valid JSON.
  require_valid_json(api::write_interactions(parsed.user_id.value_or("u"), r.interactions),
                     std::string(reader) + "'s interactions written back");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const api::Limits limits;

  try {
    check_within_limits(api::parse_recommend_request(body, limits), limits, "parse_recommend_request");
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_recommend_request");
  }

  try {
    const std::vector<api::BatchEntry> entries = api::parse_batch_request(body, limits, kMaxBatchRequests);
    if (static_cast<int64_t>(entries.size()) > kMaxBatchRequests)
      fail("parse_batch_request: " + std::to_string(entries.size()) + " entries accepted");
    for (const api::BatchEntry& entry : entries) {
      if (entry.request.has_value() == entry.error.has_value())
        fail("parse_batch_request: an entry with both or neither of request / error");
      if (entry.request) check_within_limits(*entry.request, limits, "parse_batch_request entry");
      if (entry.error) check_rejection(*entry.error, "parse_batch_request entry");
    }
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_batch_request");
  }

  try {
    const std::vector<seqrec::Interaction> interactions = api::parse_interactions_body(body, limits);
    if (static_cast<int64_t>(interactions.size()) > limits.max_interactions)
      fail("parse_interactions_body: " + std::to_string(interactions.size()) + " interactions accepted");
    require_valid_json(api::write_interactions("u", interactions), "parse_interactions_body's interactions written back");
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_interactions_body");
  }

  try {
    const api::ReloadRequest reload = api::parse_reload_body(body);
    if ((reload.path && reload.path->empty()) || (reload.model && reload.model->empty()))
      fail("parse_reload_body: an empty path or model accepted");
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_reload_body");
  }

  try {
    const api::SimilarItemsRequest similar = api::parse_similar_items_request(body, limits);
    if (similar.request.k < 1 || similar.request.k > limits.max_k) fail("parse_similar_items_request: k out of range");
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_similar_items_request");
  }

  try {
    if (const auto weights = api::parse_split_body(body))
      for (const auto& [name, weight] : *weights)
        if (!(weight >= 0 && weight <= 100)) fail("parse_split_body: weight out of 0..100 accepted");
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_split_body");
  }

  try {
    api::parse_filter(body, limits);
  } catch (const api::ApiError& e) {
    check_rejection(e, "parse_filter");
  }
  return 0;
}
