#include "server/json_io.h"

#include "engine/text.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <simdjson.h>
#include <unordered_set>

namespace seqrec::api {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

[[noreturn]] void invalid(const std::string& message) { throw ApiError(400, "invalid_request", message); }

// Where a value sits in the request, for error messages: made into text only when an error
// names it. (A request carries hundreds of interactions; naming each one up front —
// "user_interactions[17].timestamp" — cost more than parsing the JSON itself.)
class Path {
 public:
  Path(const char* root) : text_(root) {}
  Path(const std::string& root) : text_(root) {}
  static Path index(const Path& parent, size_t i) { return Path(&parent, Kind::index, {}, i); }
  static Path key(const Path& parent, std::string_view key) { return Path(&parent, Kind::key, key, 0); }
  static Path member(const Path& parent, const char* name) { return Path(&parent, Kind::member, name, 0); }

  std::string str() const {
    if (!parent_) return std::string(text_);
    std::string out = parent_->str();
    switch (kind_) {
      case Kind::index: return out + "[" + std::to_string(index_) + "]";
      case Kind::key: return out + "[\"" + std::string(text_) + "\"]";
      case Kind::member: return out + "." + std::string(text_);
      case Kind::root: break;
    }
    return out;
  }

 private:
  enum class Kind { root, index, key, member };
  Path(const Path* parent, Kind kind, std::string_view text, size_t index)
      : parent_(parent), kind_(kind), text_(text), index_(index) {}
  const Path* parent_ = nullptr;
  Kind kind_ = Kind::root;
  std::string_view text_;
  size_t index_ = 0;
};

// A short rendering of a JSON value for error messages.
std::string show(const element& value) {
  std::string text = simdjson::minify(value);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

const char* type_name(const element& value) {
  switch (value.type()) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64: return "an integer";
    case element_type::DOUBLE: return "a number";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
  }
  return "a value";
}

[[noreturn]] void wrong_type(const Path& field, const char* expected, const element& value) {
  invalid(field.str() + ": expected " + expected + ", found " + type_name(value) + " " + show(value));
}

// An item or user id: a string, or an integer read as its decimal string.
std::string read_id(const Path& field, const element& value) {
  switch (value.type()) {
    case element_type::STRING: {
      std::string id(std::string_view(value.get_string().value_unsafe()));
      if (id.empty()) invalid(field.str() + ": empty id");
      return id;
    }
    case element_type::INT64: return std::to_string(int64_t(value.get_int64().value_unsafe()));
    case element_type::UINT64: return std::to_string(uint64_t(value.get_uint64().value_unsafe()));
    default: wrong_type(field, "a string or an integer id", value);
  }
}

std::optional<int64_t> read_timestamp(const Path& field, const element& value) {
  if (value.is_null()) return std::nullopt;
  if (value.type() != element_type::INT64) wrong_type(field, "an integer timestamp", value);
  return int64_t(value.get_int64().value_unsafe());
}

std::optional<double> read_rating(const Path& field, const element& value) {
  if (value.is_null()) return std::nullopt;
  if (!value.is_number()) wrong_type(field, "a number", value);
  const double rating = value.get_double().value_unsafe();
  if (!std::isfinite(rating)) invalid(field.str() + ": not a finite number: " + show(value));
  return rating;
}

// {"timestamp": int, "rating": number}, both optional.
void read_interaction_fields(const Path& field, const element& value, Interaction& out, bool list_form) {
  if (!value.is_object()) wrong_type(field, "an object", value);
  simdjson::dom::object object = value.get_object().value_unsafe();
  for (auto [key, member] : object) {
    if (key == "timestamp")
      out.timestamp = read_timestamp(Path::member(field, "timestamp"), member);
    else if (key == "rating")
      out.rating = read_rating(Path::member(field, "rating"), member);
    else if (list_form && key == "item_id")
      out.item_id = read_id(Path::member(field, "item_id"), member);
    else
      invalid(field.str() + ": unknown field '" + std::string(key) + "'");
  }
}

std::vector<Interaction> read_interactions(const Path& field, const element& value, const Limits& limits) {
  std::vector<Interaction> out;
  auto check_count = [&](size_t n) {
    if (static_cast<int64_t>(n) > limits.max_interactions)
      invalid(field.str() + ": " + std::to_string(n) + " interactions, at most " + std::to_string(limits.max_interactions) +
              " allowed");
  };
  if (value.is_object()) {  // {"item_id": {...}, ...}
    simdjson::dom::object object = value.get_object().value_unsafe();
    check_count(object.size());
    out.reserve(object.size());
    std::unordered_set<std::string_view> keys;
    for (auto [key, member] : object) {
      if (key.empty()) invalid(field.str() + ": empty item id");
      if (!keys.insert(key).second) invalid(field.str() + ": item id \"" + std::string(key) + "\" appears twice");
      Interaction it;
      it.item_id = std::string(key);
      read_interaction_fields(Path::key(field, key), member, it, false);
      out.push_back(std::move(it));
    }
  } else if (value.is_array()) {  // [{"item_id", "timestamp", "rating"}, ...]
    simdjson::dom::array array = value.get_array().value_unsafe();
    check_count(array.size());
    out.reserve(array.size());
    size_t i = 0;
    for (element member : array) {
      const Path name = Path::index(field, i++);
      Interaction it;
      read_interaction_fields(name, member, it, true);
      if (it.item_id.empty()) invalid(name.str() + ": missing field 'item_id'");
      out.push_back(std::move(it));
    }
  } else {
    wrong_type(field, "an object (item_id -> {timestamp, rating}) or an array of {item_id, timestamp, rating}", value);
  }
  return out;
}

// An array of at most max_count entries, each read by read_one(Path of the entry, element).
// `what`: the expected value as an error names it; `unit`: what the entries are counted as.
template <class ReadOne>
std::vector<std::string> read_list(const Path& field, const element& value, int64_t max_count, const char* what,
                                   const char* unit, ReadOne read_one) {
  if (!value.is_array()) wrong_type(field, what, value);
  simdjson::dom::array array = value.get_array().value_unsafe();
  if (static_cast<int64_t>(array.size()) > max_count)
    invalid(field.str() + ": " + std::to_string(array.size()) + " " + unit + ", at most " + std::to_string(max_count) +
            " allowed");
  std::vector<std::string> out;
  out.reserve(array.size());
  size_t i = 0;
  for (element member : array) out.push_back(read_one(Path::index(field, i++), member));
  return out;
}

std::vector<std::string> read_id_list(const Path& field, const element& value, int64_t max_count) {
  return read_list(field, value, max_count, "an array of item ids", "ids", read_id);
}

void append_escaped(std::string& out, std::string_view text) {
  out += '"';
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = utf8_sequence_length(text, i);
    char buf[8];
    if (n == 0) {  // not UTF-8 (e.g. a Latin-1 id from a CSV file): read the byte as Latin-1
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20) {
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out.append(text.substr(i, n));
    }
    i += n == 0 ? 1 : n;
  }
  out += '"';
}

// Shortest text that reads back as the same float; non-finite values have no JSON form.
void append_score(std::string& out, float score) {
  if (std::isnan(score)) {
    out += "null";
    return;
  }
  if (std::isinf(score)) score = score > 0 ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::max();
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, score);
  out.append(buf, end);
}

std::string read_name(const Path& field, const element& value) {
  if (!value.is_string()) wrong_type(field, "a string", value);
  std::string text(std::string_view(value.get_string().value_unsafe()));
  if (text.empty()) invalid(field.str() + ": empty");
  return text;
}

std::vector<std::string> read_string_list(const Path& field, const element& value, int64_t max_count) {
  return read_list(field, value, max_count, "an array of strings", "entries", read_name);
}

// {"tags_any": [...], "tags_all": [...], "tags_none": [...]}, each optional.
ItemFilter read_filter(const Path& field, const element& value, int64_t max_count) {
  if (!value.is_object()) wrong_type(field, "an object with tags_any, tags_all, tags_none", value);
  ItemFilter filter;
  simdjson::dom::object object = value.get_object().value_unsafe();
  for (auto [key, member] : object) {
    if (key == "tags_any")
      filter.tags_any = read_string_list(Path::member(field, "tags_any"), member, max_count);
    else if (key == "tags_all")
      filter.tags_all = read_string_list(Path::member(field, "tags_all"), member, max_count);
    else if (key == "tags_none")
      filter.tags_none = read_string_list(Path::member(field, "tags_none"), member, max_count);
    else
      invalid(field.str() + ": unknown field '" + std::string(key) + "' (expected tags_any, tags_all, tags_none)");
  }
  return filter;
}

int64_t read_k(const element& value, const Limits& limits) {
  if (value.type() != element_type::INT64 && value.type() != element_type::UINT64) wrong_type("k", "an integer", value);
  const bool in_range = value.type() == element_type::INT64 && int64_t(value.get_int64().value_unsafe()) >= 1 &&
                        int64_t(value.get_int64().value_unsafe()) <= limits.max_k;
  if (!in_range) invalid("k: " + show(value) + " is out of range 1.." + std::to_string(limits.max_k));
  return int64_t(value.get_int64().value_unsafe());
}

}  // namespace

namespace {

// One parser per thread, reused: a new parser allocates its buffers for every document.
// The elements a parse returns live until the thread's next parse; every caller here reads
// them completely before returning.
simdjson::dom::parser& thread_parser() {
  thread_local simdjson::dom::parser parser;
  return parser;
}

element parse_body(simdjson::dom::parser& parser, std::string_view body) {
  element root;
  if (auto error = parser.parse(body.data(), body.size()).get(root))
    throw ApiError(400, "invalid_json", std::string("request body is not valid JSON: ") + simdjson::error_message(error));
  return root;
}

RecommendRequest read_recommend_request(const element& root, const std::string& where, const Limits& limits) {
  if (!root.is_object()) wrong_type(where, "a JSON object", root);
  RecommendRequest out;
  bool has_user_id = false;
  simdjson::dom::object fields = root.get_object().value_unsafe();
  for (auto [key, value] : fields) {
    if (key == "user_interactions") {
      out.request.interactions = read_interactions("user_interactions", value, limits);
      out.has_interactions = true;
    } else if (key == "user_id") {
      out.user_id = read_id("user_id", value);
      has_user_id = true;
    } else if (key == "k") {
      out.request.k = read_k(value, limits);
    } else if (key == "recommend_seen") {
      if (!value.is_bool()) wrong_type("recommend_seen", "a boolean", value);
      out.request.recommend_seen = bool(value.get_bool().value_unsafe());
    } else if (key == "candidate_ids") {
      out.request.candidate_ids = read_id_list("candidate_ids", value, limits.max_candidates);
    } else if (key == "exclude_ids") {
      out.request.exclude_ids = read_id_list("exclude_ids", value, limits.max_candidates);
    } else if (key == "now") {
      if (value.type() != element_type::INT64) wrong_type("now", "an integer time (the timestamps' unit)", value);
      out.request.now = int64_t(value.get_int64().value_unsafe());
    } else if (key == "filter") {
      out.request.filter = read_filter("filter", value, limits.max_candidates);
    } else if (key == "fields") {
      out.fields = read_string_list("fields", value, 64);
    } else if (key == "model") {
      out.model = read_name("model", value);
    } else if (key == "routing_key") {
      out.routing_key = read_id("routing_key", value);
    } else {
      invalid("unknown field '" + std::string(key) + "'");
    }
  }
  if (out.has_interactions && has_user_id)
    invalid("give exactly one of user_interactions or user_id, not both");
  if (!out.has_interactions && !has_user_id) invalid("give exactly one of user_interactions or user_id; found neither");
  return out;
}

}  // namespace

RecommendRequest parse_recommend_request(std::string_view body, const Limits& limits) {
  simdjson::dom::parser& parser = thread_parser();
  return read_recommend_request(parse_body(parser, body), "request body", limits);
}

std::vector<BatchEntry> parse_batch_request(std::string_view body, const Limits& limits, int64_t max_requests) {
  simdjson::dom::parser& parser = thread_parser();
  const element root = parse_body(parser, body);
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  simdjson::dom::object fields = root.get_object().value_unsafe();
  std::optional<element> requests;
  for (auto [key, value] : fields) {
    if (key != "requests") invalid("unknown field '" + std::string(key) + "'");
    requests = value;
  }
  if (!requests) invalid("missing field 'requests'");
  if (!requests->is_array()) wrong_type("requests", "an array of recommendation requests", *requests);
  simdjson::dom::array array = requests->get_array().value_unsafe();
  if (static_cast<int64_t>(array.size()) > max_requests)
    invalid("requests: " + std::to_string(array.size()) + " requests, at most " + std::to_string(max_requests) +
            " allowed");
  std::vector<BatchEntry> out;
  size_t i = 0;
  for (element entry : array) {
    BatchEntry e;
    try {
      e.request = read_recommend_request(entry, "requests[" + std::to_string(i) + "]", limits);
    } catch (const ApiError& error) {
      e.error = error;
    }
    out.push_back(std::move(e));
    ++i;
  }
  return out;
}

std::vector<Interaction> parse_interactions_body(std::string_view body, const Limits& limits) {
  simdjson::dom::parser& parser = thread_parser();
  const element root = parse_body(parser, body);
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  simdjson::dom::object fields = root.get_object().value_unsafe();
  std::optional<std::vector<Interaction>> out;
  for (auto [key, value] : fields) {
    if (key != "user_interactions") invalid("unknown field '" + std::string(key) + "'");
    out = read_interactions("user_interactions", value, limits);
  }
  if (!out) invalid("missing field 'user_interactions'");
  return std::move(*out);
}

ReloadRequest parse_reload_body(std::string_view body) {
  ReloadRequest out;
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return out;
  simdjson::dom::parser& parser = thread_parser();
  const element root = parse_body(parser, body);
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  simdjson::dom::object fields = root.get_object().value_unsafe();
  for (auto [key, value] : fields) {
    if (key == "path")
      out.path = read_name("path", value);
    else if (key == "model")
      out.model = read_name("model", value);
    else
      invalid("unknown field '" + std::string(key) + "' (expected model, path)");
  }
  return out;
}

std::optional<std::vector<std::pair<std::string, double>>> parse_split_body(std::string_view body) {
  simdjson::dom::parser& parser = thread_parser();
  const element root = parse_body(parser, body);
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  std::optional<element> weights;
  simdjson::dom::object fields = root.get_object().value_unsafe();
  for (auto [key, value] : fields) {
    if (key != "weights") invalid("unknown field '" + std::string(key) + "' (expected weights)");
    weights = value;
  }
  if (!weights) invalid("missing field 'weights' (an object of model name -> percent, or null for no split)");
  if (weights->is_null()) return std::nullopt;
  if (!weights->is_object()) wrong_type("weights", "an object of model name -> percent, or null", *weights);
  std::vector<std::pair<std::string, double>> out;
  const Path weights_path("weights");
  simdjson::dom::object arms = weights->get_object().value_unsafe();
  for (auto [name, value] : arms) {
    const Path field = Path::key(weights_path, name);
    if (!value.is_number()) wrong_type(field, "a number (percent)", value);
    const double weight = value.get_double().value_unsafe();
    if (!std::isfinite(weight) || weight < 0 || weight > 100) invalid(field.str() + ": " + show(value) + " is out of range 0..100");
    out.emplace_back(std::string(name), weight);
  }
  return out;
}

ItemFilter parse_filter(std::string_view json, const Limits& limits) {
  simdjson::dom::parser& parser = thread_parser();
  return read_filter("filter", parse_body(parser, json), limits.max_candidates);
}

SimilarItemsRequest parse_similar_items_request(std::string_view body, const Limits& limits) {
  simdjson::dom::parser& parser = thread_parser();
  const element root = parse_body(parser, body);
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  SimilarItemsRequest out;
  bool has_item = false;
  simdjson::dom::object fields = root.get_object().value_unsafe();
  for (auto [key, value] : fields) {
    if (key == "item_id") {
      out.item_id = read_id("item_id", value);
      has_item = true;
    } else if (key == "k") {
      out.request.k = read_k(value, limits);
    } else if (key == "candidate_ids") {
      out.request.candidate_ids = read_id_list("candidate_ids", value, limits.max_candidates);
    } else if (key == "exclude_ids") {
      out.request.exclude_ids = read_id_list("exclude_ids", value, limits.max_candidates);
    } else if (key == "filter") {
      out.request.filter = read_filter("filter", value, limits.max_candidates);
    } else if (key == "fields") {
      out.fields = read_string_list("fields", value, 64);
    } else if (key == "model") {
      out.model = read_name("model", value);
    } else {
      invalid("unknown field '" + std::string(key) + "'");
    }
  }
  if (!has_item) invalid("missing field 'item_id'");
  return out;
}

std::string id_json(const std::string& id) {
  // Canonical: optional '-', no leading zeros (except "0" itself), digits only, fits int64.
  std::string_view digits = id;
  if (!digits.empty() && digits[0] == '-') digits.remove_prefix(1);
  bool canonical = !digits.empty() && digits.size() <= 18 && (digits == "0" || digits[0] != '0') && id != "-0";
  for (char c : digits) canonical = canonical && c >= '0' && c <= '9';
  if (canonical) return id;
  std::string out;
  append_escaped(out, id);
  return out;
}

std::string write_response(const Response& response, const ItemFieldsWriter* fields) {
  std::string out = "{\"recommendations\": [";
  for (size_t i = 0; i < response.recommendations.size(); ++i) {
    const ScoredItem& item = response.recommendations[i];
    if (i) out += ", ";
    out += "{\"id\": " + id_json(item.id) + ", \"score\": ";
    append_score(out, item.score);
    if (fields && *fields) (*fields)(out, item.id);
    out += "}";
  }
  out += "], \"message\": ";
  if (response.message)
    append_escaped(out, *response.message);
  else
    out += "null";
  out += "}";
  return out;
}

void append_quoted(std::string& out, std::string_view text) { append_escaped(out, text); }

std::string quote(std::string_view text) {
  std::string out;
  append_escaped(out, text);
  return out;
}

std::string write_batch(const std::vector<std::string>& results_json) {
  std::string out = "{\"results\": [";
  for (size_t i = 0; i < results_json.size(); ++i) {
    if (i) out += ", ";
    out += results_json[i];
  }
  return out + "]}";
}

std::string write_interactions(const std::string& user_id, const std::vector<Interaction>& interactions) {
  std::string out = "{\"user_id\": " + quote(user_id) + ", \"interactions\": [";
  for (size_t i = 0; i < interactions.size(); ++i) {
    const Interaction& it = interactions[i];
    if (i) out += ", ";
    out += "{\"item_id\": " + id_json(it.item_id) + ", \"timestamp\": ";
    out += it.timestamp ? std::to_string(*it.timestamp) : "null";
    out += ", \"rating\": ";
    if (it.rating) {
      char buf[40];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, *it.rating);
      out.append(buf, end);
      // The shortest form of a huge whole rating (2^64) is a bare integer that JSON readers
      // (simdjson among them) refuse or read as an integer: keep it a float.
      if (std::string_view(buf, end - buf).find_first_of(".eEn") == std::string_view::npos && end - buf > 15)
        out += ".0";
    } else {
      out += "null";
    }
    out += "}";
  }
  return out + "]}";
}

std::string write_error(const std::string& code, const std::string& message) {
  std::string out = "{\"error\": {\"code\": ";
  append_escaped(out, code);
  out += ", \"message\": ";
  append_escaped(out, message);
  out += "}}";
  return out;
}

}  // namespace seqrec::api
