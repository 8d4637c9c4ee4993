#include "server/routes.h"

#include <boost/asio/post.hpp>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <set>

#include "engine/platform.h"
#include "server/console/console.h"

namespace seqrec::server {

namespace http = boost::beast::http;
using http_server::HttpResponse;

std::string percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size() || hex(text[i + 1]) < 0 || hex(text[i + 2]) < 0)
      throw api::ApiError(400, "invalid_request", "path: bad percent-escape in '" + std::string(text) + "'");
    out += static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2]));
    i += 2;
  }
  return out;
}

// One request being answered: answers exactly once, and counts itself in the metrics.
struct Service::Call {
  http_server::HttpRequest request;
  http_server::Reply reply;
  uint64_t connection = 0;  // the HTTP connection it came on (0: unknown)
  Metrics* metrics = nullptr;
  std::string route = "other";
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::atomic<bool> answered{false};
  // The model(s) that answered: the X-Seqrec-Model header and the per-model metrics. Set
  // before the work is queued, read once when answering.
  std::string model;

  void answer(http::status status, std::string body, std::string_view content_type = "application/json") {
    if (answered.exchange(true)) return;
    HttpResponse res = http_server::json_response(status, std::move(body));
    res.set(http::field::content_type, boost::beast::string_view(content_type.data(), content_type.size()));
    if (status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
    if (!model.empty()) res.set("X-Seqrec-Model", model);
    const auto replying = std::chrono::steady_clock::now();
    metrics->count_request(route, static_cast<int>(status), std::chrono::duration<double>(replying - start).count(), model);
    reply(std::move(res));
    metrics->observe_stage("write", std::chrono::duration<double>(std::chrono::steady_clock::now() - replying).count());
  }
  void error(http::status status, const std::string& code, const std::string& message) {
    answer(status, api::write_error(code, message));
  }
  void method_not_allowed(const char* allowed) {
    if (answered.exchange(true)) return;
    HttpResponse res = http_server::error_response(
        http::status::method_not_allowed, "method_not_allowed",
        std::string(request.method_string()) + " " + route + ": method not allowed (allowed: " + allowed + ")");
    res.set(http::field::allow, allowed);
    metrics->count_request(route, 405, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    reply(std::move(res));
  }
};

Service::Service(ServiceOptions options, WorkerPool& workers, ModelRegistry& models, history::HistoryStore& store,
                 Metrics& metrics, boost::asio::thread_pool& blocking, ModelLoader loader, ItemsLoader items_loader,
                 std::shared_ptr<const items::ItemMetadata> items)
    : options_(std::move(options)),
      workers_(workers),
      models_(models),
      store_(store),
      metrics_(metrics),
      blocking_(blocking),
      loader_(std::move(loader)),
      items_loader_(std::move(items_loader)),
      items_(std::move(items)) {}

std::shared_ptr<const items::ItemMetadata> Service::current_items() const {
  std::lock_guard lock(items_mutex_);
  return items_;
}

void Service::handle(http_server::HttpRequest&& request, http_server::Reply reply, uint64_t connection) {
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->reply = std::move(reply);
  call->connection = connection;
  call->metrics = &metrics_;
  try {
    route(call);
  } catch (const api::ApiError& e) {
    call->error(static_cast<http::status>(e.status()), e.code(), e.what());
  } catch (const std::exception& e) {
    call->error(http::status::internal_server_error, "internal", e.what());
  }
}

namespace {

// Constant time in the key's content: a key must not leak through response timing.
bool same_key(std::string_view given, const std::string& expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

std::string_view path_of(std::string_view target) {
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  return target;
}

// "/models/NAME/recommend" → ("NAME", "/recommend"); nullopt when not a /models/ path.
std::optional<std::pair<std::string_view, std::string_view>> split_model_path(std::string_view path) {
  if (path.substr(0, 8) != "/models/") return std::nullopt;
  const std::string_view rest = path.substr(8);
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return std::pair{rest, std::string_view()};
  return std::pair{rest.substr(0, slash), rest.substr(slash)};
}

// The metrics label of a path: the route's pattern, never the raw path (user ids would make
// one series per user).
std::string route_label(std::string_view path) {
  static const char* const kFixed[] = {"/recommend", "/iid_recommend", "/uid_recommend", "/recommend/batch",
                                       "/healthz",   "/readyz",        "/metrics",       "/model",
                                       "/admin/reload", "/admin/split", "/models", "/similar_items",
                                       "/items", "/users", "/openapi.json"};
  for (const char* fixed : kFixed)
    if (path == fixed) return fixed;
  if (const auto model_path = split_model_path(path)) {
    const std::string_view rest = model_path->second;
    if (rest.empty()) return "/models/{name}";
    if (rest == "/recommend" || rest == "/recommend/batch" || rest == "/similar_items")
      return "/models/{name}" + std::string(rest);
    return "other";
  }
  if (path.substr(0, 7) == "/items/") return "/items/{id}";
  if (path.substr(0, 7) == "/users/") {
    const std::string_view rest = path.substr(7);
    return rest.size() > 13 && rest.substr(rest.size() - 13) == "/interactions" ? "/users/{id}/interactions"
                                                                                 : "/users/{id}";
  }
  if (path == "/" || path == "/console" || path.substr(0, 9) == "/console/") return "/console";
  return "other";
}

// A query parameter's value (not decoded), or nullopt.
std::optional<std::string_view> query_param(std::string_view target, std::string_view name) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

// ?limit=N in 1..max (default `fallback`); ApiError 400 naming the value otherwise.
size_t limit_param(std::string_view target, size_t fallback, size_t max) {
  const auto text = query_param(target, "limit");
  if (!text) return fallback;
  size_t value = 0;
  const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (ec != std::errc() || end != text->data() + text->size() || value < 1 || value > max)
    throw api::ApiError(400, "invalid_request",
                        "limit: '" + visible_text(*text) + "' (expected an integer 1.." + std::to_string(max) + ")");
  return value;
}

// "+" is a space in a query string; then percent-escapes.
std::string query_text(std::string_view raw) {
  std::string spaced(raw);
  for (char& c : spaced)
    if (c == '+') c = ' ';
  return percent_decode(spaced);
}

// User ids arrive percent-encoded in paths; once decoded they must be text (UTF-8 without
// control bytes), or `%FF` and `\xFF` sent as JSON would name the same user differently.
std::string user_id_from_path(std::string_view encoded) {
  std::string id = percent_decode(encoded);
  if (visible_text(id) != id)
    throw api::ApiError(400, "invalid_request",
                        "path: user id '" + std::string(encoded) + "' is not UTF-8 text (control or invalid bytes)");
  return id;
}

}  // namespace

const std::vector<RouteInfo>& route_table() {
  static const std::vector<RouteInfo> kRoutes = {
      {"POST", "/recommend", "read", "Top-k items for a user's interactions or stored history"},
      {"POST", "/iid_recommend", "read", "POST /recommend with user_interactions (alias)"},
      {"POST", "/uid_recommend", "read", "POST /recommend with user_id (alias)"},
      {"POST", "/recommend/batch", "read", "Several recommendation requests in one body"},
      {"POST", "/similar_items", "read", "The items most similar to one item (cosine of item representations)"},
      {"POST", "/models/{name}/recommend", "read", "POST /recommend answered by the model NAME"},
      {"POST", "/models/{name}/recommend/batch", "read", "POST /recommend/batch answered by the model NAME"},
      {"POST", "/models/{name}/similar_items", "read", "POST /similar_items answered by the model NAME"},
      {"GET", "/model", "read", "The default model's description"},
      {"GET", "/models", "read", "Every model served, the default and the A/B split"},
      {"GET", "/models/{name}", "read", "One model's description"},
      {"GET", "/items", "read", "Items whose title contains ?q= (item metadata)"},
      {"GET", "/items/{id}", "read", "One item's metadata"},
      {"GET", "/users", "read", "User ids in the history store, a page at a time"},
      {"GET", "/users/{id}/interactions", "read", "A user's stored interactions, oldest first"},
      {"POST", "/users/{id}/interactions", "admin", "Appends interactions to a user's history"},
      {"DELETE", "/users/{id}", "admin", "Erases a user's history"},
      {"POST", "/admin/reload", "admin", "Reloads one model or every model (and the item metadata)"},
      {"GET", "/admin/split", "read", "The A/B split between models"},
      {"POST", "/admin/split", "admin", "Sets or clears the A/B split"},
      {"GET", "/healthz", "open", "Liveness"},
      {"GET", "/readyz", "open", "Readiness: models loaded and history store reachable"},
      {"GET", "/metrics", "read", "Prometheus metrics"},
      {"GET", "/openapi.json", "open", "This API's OpenAPI 3.1 document"},
      {"GET", "/", "open", "The web console"},
      {"GET", "/console", "open", "The web console"},
      {"GET", "/console/{file}", "open", "The web console's files"},
  };
  return kRoutes;
}

Service::Access Service::access_for(http::verb method, std::string_view target) const {
  target = path_of(target);
  if (target == "/healthz" || target == "/readyz") return Access::open;
  // The console's static files hold no data; the routes it calls check keys as usual.
  if (target == "/" || target == "/console" || target.substr(0, 9) == "/console/") return Access::open;
  if (target == "/openapi.json") return Access::open;
  if (target == "/admin/reload") return Access::admin;
  if (target == "/admin/split" && method != http::verb::get && method != http::verb::head) return Access::admin;
  if (target.substr(0, 7) == "/users/" && method != http::verb::get && method != http::verb::head)
    return Access::admin;  // appends and deletes
  if (target == "/metrics" && options_.public_metrics) return Access::open;
  return options_.protect_reads ? Access::read : Access::open;
}

bool Service::authorized(const http::request_header<>& header, Access access) const {
  if (access == Access::open) return true;
  if (access == Access::admin && !options_.api_key) return true;  // no key configured: writes are open
  std::string_view given;
  if (auto it = header.find(http::field::authorization); it != header.end()) {
    const std::string_view value(it->value().data(), it->value().size());
    if (value.substr(0, 7) != "Bearer ") return false;
    given = value.substr(7);
  } else if (auto key = header.find("X-API-Key"); key != header.end()) {
    given = std::string_view(key->value().data(), key->value().size());
  } else {
    return false;
  }
  const bool admin = options_.api_key && same_key(given, *options_.api_key);
  if (access == Access::admin) return admin;
  return admin || (options_.read_key && same_key(given, *options_.read_key));
}

std::optional<HttpResponse> Service::check_header(const http::request_header<>& header) const {
  const std::string_view target(header.target().data(), header.target().size());
  const Access access = access_for(header.method(), target);
  if (authorized(header, access)) return std::nullopt;
  metrics_.count_request(route_label(path_of(target)), 401, 0.0);
  HttpResponse res = http_server::error_response(
      http::status::unauthorized, "unauthorized",
      std::string(access == Access::admin ? "this route needs the admin key" : "this route needs an API key") +
          " (send Authorization: Bearer KEY or X-API-Key: KEY)",
      header.version(), false);
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

void Service::route(const std::shared_ptr<Call>& call) {
  const std::string_view full_target(call->request.target().data(), call->request.target().size());
  const std::string_view target = path_of(full_target);
  // HEAD is GET without the body (the session drops it); the route answers as for GET.
  const http::verb method =
      call->request.method() == http::verb::head ? http::verb::get : call->request.method();
  call->route = route_label(target);
  // The session checked the key from the header before the body was read; checked again
  // here for callers that hand requests in directly.
  const Access access = access_for(method, target);
  if (!authorized(call->request.base(), access)) {
    call->error(http::status::unauthorized, "unauthorized",
                std::string(access == Access::admin ? "this route needs the admin key" : "this route needs an API key") +
                    " (send Authorization: Bearer KEY or X-API-Key: KEY)");
    return;
  }
  auto only = [&](http::verb allowed, const char* name) {
    if (method == allowed) return true;
    call->method_not_allowed(name);
    return false;
  };
  auto no_route = [&] { call->error(http::status::not_found, "not_found", "no route " + visible_text(target)); };

  if (target == "/recommend" || target == "/iid_recommend" || target == "/uid_recommend") {
    if (only(http::verb::post, "POST")) recommend(call, call->route, nullptr);
  } else if (target == "/recommend/batch") {
    if (only(http::verb::post, "POST")) recommend_batch(call, nullptr);
  } else if (target == "/similar_items") {
    if (only(http::verb::post, "POST")) similar_items(call, nullptr);
  } else if (target == "/healthz") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, R"({"status": "ok"})");
  } else if (target == "/readyz") {
    if (only(http::verb::get, "GET, HEAD")) ready(call);
  } else if (target == "/metrics") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, metrics_.render(), "text/plain; version=0.0.4");
  } else if (target == "/model") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, model_json(*models_.default_model()));
  } else if (target == "/models") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, models_json());
  } else if (const auto model_path = split_model_path(target)) {
    const std::string name = percent_decode(model_path->first);
    const std::shared_ptr<const ServedModel> model = models_.find(name);
    if (!model) {
      call->error(http::status::not_found, "model_not_found", "no model named '" + visible_text(name) + "'");
      return;
    }
    const std::string_view rest = model_path->second;
    if (rest.empty()) {
      if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, model_json(*model));
    } else if (rest == "/recommend") {
      if (only(http::verb::post, "POST")) recommend(call, "/recommend", &name);
    } else if (rest == "/recommend/batch") {
      if (only(http::verb::post, "POST")) recommend_batch(call, &name);
    } else if (rest == "/similar_items") {
      if (only(http::verb::post, "POST")) similar_items(call, &name);
    } else {
      no_route();
    }
  } else if (target == "/admin/reload") {
    if (only(http::verb::post, "POST")) admin_reload(call);
  } else if (target == "/admin/split") {
    if (method == http::verb::get || method == http::verb::post)
      admin_split(call);
    else
      call->method_not_allowed("GET, HEAD, POST");
  } else if (target == "/items") {
    if (only(http::verb::get, "GET, HEAD")) search_items(call);
  } else if (target.substr(0, 7) == "/items/") {
    const std::string_view rest = target.substr(7);
    if (rest.empty() || rest.find('/') != std::string_view::npos) return no_route();
    if (only(http::verb::get, "GET, HEAD")) item(call, user_id_from_path(rest));
  } else if (target == "/users") {
    if (only(http::verb::get, "GET, HEAD")) list_users(call);
  } else if (target.substr(0, 7) == "/users/") {
    std::string_view rest = target.substr(7);
    const bool interactions = rest.size() > 13 && rest.substr(rest.size() - 13) == "/interactions";
    if (interactions) rest.remove_suffix(13);
    if (rest.empty() || rest.find('/') != std::string_view::npos) return no_route();
    const std::string user_id = user_id_from_path(rest);
    if (interactions) {
      if (method == http::verb::get || method == http::verb::post)
        user_interactions(call, user_id);
      else
        call->method_not_allowed("GET, HEAD, POST");
    } else {
      if (only(http::verb::delete_, "DELETE")) delete_user(call, user_id);
    }
  } else if (const console::Asset* asset = console::find(target)) {
    // The web console and the OpenAPI document: static files from the binary, read-only.
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, std::string(asset->body), asset->content_type);
  } else {
    no_route();
  }
}

void Service::off_io(const std::shared_ptr<Call>& call, std::function<void()> work) {
  boost::asio::post(blocking_, [call, work = std::move(work)] {
    try {
      work();
    } catch (const history::StoreUnavailable& e) {
      call->error(http::status::service_unavailable, "history_unavailable", e.what());
    } catch (const api::ApiError& e) {
      call->error(static_cast<http::status>(e.status()), e.code(), e.what());
    } catch (const std::exception& e) {
      call->error(http::status::internal_server_error, "internal", e.what());
    }
  });
}

std::shared_ptr<const ServedModel> Service::model_for(const std::optional<std::string>& named,
                                                      const std::string* path_model,
                                                      std::optional<std::string_view> key) const {
  if (named && path_model && *named != *path_model)
    throw api::ApiError(400, "invalid_request",
                        "model: '" + visible_text(*named) + "' disagrees with the path's model '" + *path_model + "'");
  const std::string* name = named ? &*named : path_model;
  if (!name) return models_.route(key);
  std::shared_ptr<const ServedModel> model = models_.find(*name);
  if (!model) {
    std::string list;
    for (const std::string& n : models_.names()) list += (list.empty() ? "" : ", ") + n;
    throw api::ApiError(404, "model_not_found", "model: no model named '" + visible_text(*name) + "' (serving: " + list + ")");
  }
  return model;
}

std::shared_ptr<api::ItemFieldsWriter> Service::fields_writer(const std::vector<std::string>& fields) const {
  if (fields.empty()) return nullptr;
  std::shared_ptr<const items::ItemMetadata> items = current_items();
  if (!items)
    throw api::ApiError(400, "invalid_request",
                        "fields: the server has no item metadata (serve with --items FILE, e.g. movies.csv)");
  try {
    items->check_fields(fields);
  } catch (const api::ApiError&) {
    throw;
  } catch (const Error& e) {
    throw api::ApiError(400, "invalid_request", e.what());
  }
  return std::make_shared<api::ItemFieldsWriter>([items, fields](std::string& out, const std::string& id) {
    items->append_fields(out, items->find(id), fields);
  });
}

void Service::infer(api::RecommendRequest parsed, std::shared_ptr<const ServedModel> model,
                    std::shared_ptr<api::ItemFieldsWriter> fields, uint64_t client,
                    std::function<void(std::string json, int status)> done) {
  auto submit = [this, done, model, fields, client](Request request) {
    const bool queued = workers_.submit(model->handle, std::move(request), [this, done, fields](Response response, std::exception_ptr error) {
      // A request the model cannot answer as sent (e.g. a time-reading model and an
      // interaction without a timestamp) is the client's error, named in the message.
      if (!error && response.error) {
        const int status = response.error->code == "item_not_found" ? 404 : 400;
        return done(api::write_error(response.error->code, response.error->message), status);
      }
      if (!error) {
        const auto start = std::chrono::steady_clock::now();
        std::string json = api::write_response(response, fields.get());
        metrics_.observe_stage("serialize", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        return done(std::move(json), 200);
      }
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        done(api::write_error("internal", e.what()), 500);
      }
    }, client);
    if (!queued) done(api::write_error("overloaded", "the inference queue is full; retry shortly"), 503);
  };
  if (!parsed.user_id) return submit(std::move(parsed.request));
  // The store may block (disk, network): never on an I/O thread.
  boost::asio::post(blocking_, [this, parsed = std::move(parsed), submit, done]() mutable {
    try {
      const auto start = std::chrono::steady_clock::now();
      parsed.request.interactions = store_.get(*parsed.user_id);
      metrics_.observe_stage("history", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    } catch (const history::StoreUnavailable& e) {
      return done(api::write_error("history_unavailable", e.what()), 503);
    } catch (const std::exception& e) {
      return done(api::write_error("internal", e.what()), 500);
    }
    submit(std::move(parsed.request));
  });
}

namespace {
// The split's key of a request: its user id, else its routing_key (inline histories).
std::optional<std::string_view> split_key(const api::RecommendRequest& parsed) {
  if (parsed.user_id) return std::string_view(*parsed.user_id);
  if (parsed.routing_key) return std::string_view(*parsed.routing_key);
  return std::nullopt;
}
}  // namespace

void Service::recommend(const std::shared_ptr<Call>& call, const std::string& alias, const std::string* path_model) {
  api::RecommendRequest parsed = api::parse_recommend_request(call->request.body(), options_.limits);
  if (alias == "/iid_recommend" && !parsed.has_interactions)
    throw api::ApiError(400, "invalid_request", "/iid_recommend needs user_interactions (use /uid_recommend for user_id)");
  if (alias == "/uid_recommend" && !parsed.user_id)
    throw api::ApiError(400, "invalid_request", "/uid_recommend needs user_id (use /iid_recommend for user_interactions)");
  std::shared_ptr<const ServedModel> model = model_for(parsed.model, path_model, split_key(parsed));
  std::shared_ptr<api::ItemFieldsWriter> fields = fields_writer(parsed.fields);
  call->model = model->name;
  metrics_.observe_stage("parse", std::chrono::duration<double>(std::chrono::steady_clock::now() - call->start).count());
  infer(std::move(parsed), std::move(model), std::move(fields), call->connection, [call](std::string json, int status) {
    call->answer(static_cast<http::status>(status), std::move(json));
  });
}

void Service::recommend_batch(const std::shared_ptr<Call>& call, const std::string* path_model) {
  std::vector<api::BatchEntry> entries =
      api::parse_batch_request(call->request.body(), options_.limits, options_.max_batch_requests);
  struct Gather {
    std::mutex mutex;
    std::vector<std::string> results;
    size_t remaining;
  };
  auto gather = std::make_shared<Gather>();
  gather->results.resize(entries.size());
  gather->remaining = entries.size();
  if (entries.empty()) return call->answer(http::status::ok, api::write_batch({}));
  auto finish_one = [call, gather](size_t i, std::string json) {
    std::lock_guard lock(gather->mutex);
    gather->results[i] = std::move(json);
    if (--gather->remaining == 0) call->answer(http::status::ok, api::write_batch(gather->results));
  };
  // Each entry is routed on its own; every entry's model is decided before any is queued.
  std::vector<std::shared_ptr<const ServedModel>> chosen(entries.size());
  std::vector<std::shared_ptr<api::ItemFieldsWriter>> writers(entries.size());
  std::vector<std::string> answering;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].error) continue;
    try {
      chosen[i] = model_for(entries[i].request->model, path_model, split_key(*entries[i].request));
      writers[i] = fields_writer(entries[i].request->fields);
      if (std::find(answering.begin(), answering.end(), chosen[i]->name) == answering.end())
        answering.push_back(chosen[i]->name);
    } catch (const api::ApiError& e) {
      entries[i].error = api::ApiError(e.status(), e.code(), std::string("requests[") + std::to_string(i) + "]: " + e.what());
    }
  }
  for (const std::string& name : answering) call->model += (call->model.empty() ? "" : ",") + name;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].error) {
      finish_one(i, api::write_error(entries[i].error->code(), entries[i].error->what()));
      continue;
    }
    // The entry's result is its response, or its {"error": {...}} (e.g. store down). No client:
    // a batch's entries belong in one forward pass, never computed one by one inline.
    infer(std::move(*entries[i].request), chosen[i], writers[i], 0,
          [finish_one, i](std::string json, int) { finish_one(i, std::move(json)); });
  }
}

void Service::similar_items(const std::shared_ptr<Call>& call, const std::string* path_model) {
  api::SimilarItemsRequest parsed = api::parse_similar_items_request(call->request.body(), options_.limits);
  std::shared_ptr<const ServedModel> model = model_for(parsed.model, path_model, std::nullopt);
  std::shared_ptr<api::ItemFieldsWriter> fields = fields_writer(parsed.fields);
  call->model = model->name;
  const bool queued = workers_.submit_similar(
      model->handle, std::move(parsed.item_id), std::move(parsed.request),
      [call, fields](Response response, std::exception_ptr error) {
        if (!error && response.error) {
          const auto status = response.error->code == "item_not_found" ? http::status::not_found : http::status::bad_request;
          return call->error(status, response.error->code, response.error->message);
        }
        if (!error) return call->answer(http::status::ok, api::write_response(response, fields.get()));
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          call->error(http::status::internal_server_error, "internal", e.what());
        }
      });
  if (!queued) call->error(http::status::service_unavailable, "overloaded", "the inference queue is full; retry shortly");
}

void Service::user_interactions(const std::shared_ptr<Call>& call, const std::string& user_id) {
  if (call->request.method() == http::verb::get || call->request.method() == http::verb::head) {
    return off_io(call, [this, call, user_id] {
      call->answer(http::status::ok, api::write_interactions(user_id, store_.get(user_id)));
    });
  }
  std::vector<Interaction> interactions = api::parse_interactions_body(call->request.body(), options_.limits);
  off_io(call, [this, call, user_id, interactions = std::move(interactions)] {
    store_.append(user_id, interactions);  // returns once durable: only then do we acknowledge
    call->answer(http::status::ok, "{\"user_id\": " + api::quote(user_id) +
                                       ", \"appended\": " + std::to_string(interactions.size()) + "}");
  });
}

void Service::delete_user(const std::shared_ptr<Call>& call, const std::string& user_id) {
  off_io(call, [this, call, user_id] {
    const bool existed = store_.erase(user_id);
    call->answer(http::status::ok, "{\"user_id\": " + api::quote(user_id) +
                                       ", \"deleted\": " + (existed ? "true" : "false") + "}");
  });
}

void Service::list_users(const std::shared_ptr<Call>& call) {
  const std::string_view target(call->request.target().data(), call->request.target().size());
  const size_t limit = limit_param(target, 100, 1000);
  std::optional<std::string> after;
  if (const auto raw = query_param(target, "after"); raw && !raw->empty()) after = query_text(*raw);
  off_io(call, [this, call, limit, after] {
    // A walk from the start, skipping through `after`: the store's walk order is stable
    // (LMDB: key order; Redis: SCAN order of an unchanged key space), so pages follow each other.
    std::unique_ptr<history::UserScan> scan = store_.scan_users();
    std::vector<history::StoredUser> batch;
    std::vector<std::pair<std::string, size_t>> page;  // user id, stored interactions
    bool skipping = after.has_value(), more = false;
    while (!more && scan->next(batch, 256)) {
      for (history::StoredUser& user : batch) {
        if (skipping) {
          skipping = user.user_id != *after;
          continue;
        }
        if (page.size() == limit) {
          more = true;
          break;
        }
        page.emplace_back(std::move(user.user_id), user.interactions.size());
      }
    }
    std::string out = "{\"users\": [";
    for (size_t i = 0; i < page.size(); ++i)
      out += std::string(i ? ", " : "") + "{\"user_id\": " + api::quote(page[i].first) +
             ", \"interactions\": " + std::to_string(page[i].second) + "}";
    out += "], \"next\": " + (more && !page.empty() ? api::quote(page.back().first) : std::string("null")) + "}";
    call->answer(http::status::ok, std::move(out));
  });
}

namespace {
std::string item_json(const items::ItemMetadata& items, const items::ItemRecord& item,
                      const std::vector<std::shared_ptr<const ServedModel>>& models) {
  std::string out = "{";
  items.append_all(out, item);
  out += ", \"models\": [";
  bool first = true;
  for (const auto& model : models)
    if (model->loaded.recommender->catalog().row(item.id) > 0) {
      out += (first ? "" : ", ") + api::quote(model->name);
      first = false;
    }
  return out + "]}";
}
}  // namespace

void Service::item(const std::shared_ptr<Call>& call, const std::string& item_id) {
  const std::shared_ptr<const items::ItemMetadata> items = current_items();
  const auto models = models_.all();
  if (items) {
    if (const items::ItemRecord* record = items->find(item_id))
      return call->answer(http::status::ok, item_json(*items, *record, models));
  }
  // Not in the metadata: an item a model knows still has an id and its models.
  std::string known;
  for (const auto& model : models)
    if (model->loaded.recommender->catalog().row(item_id) > 0) known += (known.empty() ? "" : ", ") + api::quote(model->name);
  if (known.empty())
    return call->error(http::status::not_found, "item_not_found",
                       "item '" + visible_text(item_id) + "' is in no model's catalog" +
                           (items ? " nor in " + items->path() : std::string()));
  call->answer(http::status::ok, "{\"id\": " + api::id_json(item_id) + ", \"models\": [" + known + "]}");
}

void Service::search_items(const std::shared_ptr<Call>& call) {
  const std::string_view target(call->request.target().data(), call->request.target().size());
  const std::shared_ptr<const items::ItemMetadata> items = current_items();
  if (!items)
    return call->error(http::status::not_found, "not_found",
                       "GET /items: the server has no item metadata (serve with --items FILE)");
  const size_t limit = limit_param(target, 20, 1000);
  const auto q = query_param(target, "q");
  const std::string query = q ? query_text(*q) : std::string();
  const auto models = models_.all();
  std::string out = "{\"items\": [";
  bool first = true;
  for (const items::ItemRecord* record : items->search(query, limit)) {
    out += (first ? "" : ", ") + item_json(*items, *record, models);
    first = false;
  }
  call->answer(http::status::ok, out + "]}");
}

void Service::ready(const std::shared_ptr<Call>& call) {
  off_io(call, [this, call] {
    const bool history = store_.ready();
    const std::string body = std::string("{\"model\": \"loaded\", \"models\": ") + std::to_string(models_.all().size()) +
                             ", \"history\": " + (history ? "\"ok\"" : "\"unreachable\"") + "}";
    if (history)
      call->answer(http::status::ok, body);
    else
      call->error(http::status::service_unavailable, "not_ready",
                  "not ready: history store " + store_.describe() + " unreachable");
  });
}

void Service::admin_reload(const std::shared_ptr<Call>& call) {
  api::ReloadRequest body = api::parse_reload_body(call->request.body());
  if (body.model && !models_.find(*body.model))
    throw api::ApiError(404, "model_not_found", "model: no model named '" + visible_text(*body.model) + "'");
  if (body.path) {
    // Loading another file is a privilege of the admin key, confined to --model-dir: the
    // route must not become a way to probe or read the server's files.
    if (!options_.api_key)
      throw api::ApiError(403, "forbidden",
                          "path: reloading another file needs the admin key (serve with --api-key-file); without "
                          "one, an empty body reloads the model files themselves");
    if (!body.model && models_.all().size() > 1)
      throw api::ApiError(400, "invalid_request", "path: name the model it is for (\"model\": NAME); several are served");
    body.path = confined_model_path(*body.path);
  }
  reload(body.model, body.path, [this, call](std::optional<std::string> error, std::vector<std::string> reloaded) {
    if (error) return call->error(http::status::unprocessable_entity, "reload_failed", *error);
    std::string names;
    for (const std::string& name : reloaded) names += (names.empty() ? "" : ", ") + api::quote(name);
    std::string summaries;
    for (const auto& model : models_.all()) summaries += (summaries.empty() ? "" : ", ") + model_summary_json(*model);
    call->answer(http::status::ok, "{\"reloaded\": [" + names + "], \"models\": [" + summaries + "]}");
  });
}

std::string Service::split_json() const {
  const std::optional<Split> split = models_.split();
  if (!split) return "null";
  std::string out = "{";
  for (size_t i = 0; i < split->arms.size(); ++i) {
    char weight[32];
    std::snprintf(weight, sizeof weight, "%g", split->arms[i].second);
    out += (i ? ", " : "") + api::quote(split->arms[i].first) + ": " + weight;
  }
  return out + "}";
}

void Service::admin_split(const std::shared_ptr<Call>& call) {
  if (call->request.method() == http::verb::post) {
    const auto weights = api::parse_split_body(call->request.body());
    std::optional<Split> split;
    if (weights) {
      split = Split{*weights};
      for (const auto& [name, weight] : *weights)
        if (!models_.find(name))
          throw api::ApiError(404, "model_not_found", "weights: no model named '" + visible_text(name) + "'");
      if (weights->empty()) throw api::ApiError(400, "invalid_request", "weights: empty (give null for no split)");
    }
    try {
      models_.set_split(split);
    } catch (const api::ApiError&) {
      throw;
    } catch (const Error& e) {
      throw api::ApiError(400, "invalid_request", std::string("weights: ") + e.what());
    }
  }
  call->answer(http::status::ok, "{\"weights\": " + split_json() + "}");
}

std::string Service::confined_model_path(const std::string& path) const {
  namespace fs = std::filesystem;
  const std::string refused = "path: '" + path + "' is not inside --model-dir" +
                              (options_.model_dir.empty() ? " (none set)" : " " + options_.model_dir);
  if (options_.model_dir.empty()) throw api::ApiError(403, "forbidden", refused);
  const fs::path dir(options_.model_dir);  // canonical, checked at start
  auto inside = [&dir](const fs::path& p) {
    const fs::path relative = p.lexically_relative(dir);
    return !relative.empty() && relative != "." && *relative.begin() != "..";
  };
  // Lexically first (nothing is touched for a path that is plainly outside), then with
  // every symlink resolved: one answer whether or not the file exists.
  const fs::path candidate = (fs::path(path).is_absolute() ? fs::path(path) : dir / path).lexically_normal();
  if (!inside(candidate)) throw api::ApiError(403, "forbidden", refused);
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(candidate, ec);
  if (ec || !inside(real)) throw api::ApiError(403, "forbidden", refused);
  return real.string();
}

void Service::reload(std::optional<std::string> model, std::optional<std::string> path,
                     std::function<void(std::optional<std::string>, std::vector<std::string>)> done) {
  boost::asio::post(blocking_, [this, model = std::move(model), path = std::move(path), done = std::move(done)] {
    std::lock_guard one_at_a_time(reload_mutex_);
    std::vector<std::string> reloaded;
    std::shared_ptr<const items::ItemMetadata> items = current_items();
    if (items_loader_) {
      try {
        items = items_loader_();
      } catch (const std::exception& e) {
        metrics_.count_reload(false);
        return done(std::string("--items: ") + e.what(), reloaded);
      }
      std::lock_guard lock(items_mutex_);
      items_ = items;
    }
    std::vector<std::string> names = model ? std::vector<std::string>{*model} : models_.names();
    for (const std::string& name : names) {
      const std::shared_ptr<const ServedModel> current = models_.find(name);
      if (!current) continue;
      const std::string file = path.value_or(current->loaded.path);
      try {
        models_.replace(name, loader_(file, items.get()));
        metrics_.count_reload(true, name);
        reloaded.push_back(name);
      } catch (const std::exception& e) {
        metrics_.count_reload(false, name);
        load_popularity();
        return done(name + ": " + e.what(), reloaded);
      }
    }
    load_popularity();  // the new catalogs' counts before anyone is told the reload is done
    done(std::nullopt, reloaded);
  });
}

void Service::refresh_popularity() {
  boost::asio::post(blocking_, [this] { load_popularity(); });
}

void Service::load_popularity() {
  std::vector<std::pair<std::string, uint64_t>> counted;
  try {
    counted = store_.item_counts();
  } catch (const std::exception&) {
    return;  // store unreachable: keep the counts we had; the next refresh tries again
  }
  for (const auto& model : models_.all()) {
    const Catalog& catalog = model->loaded.recommender->catalog();
    auto counts = std::make_shared<std::vector<uint64_t>>(static_cast<size_t>(catalog.size()), 0);
    bool any = false;
    for (const auto& [item, count] : counted) {
      if (int32_t row = catalog.row(item); row > 0 && count > 0) {
        (*counts)[row] += count;
        any = true;
      }
    }
    // No counted item: leave cold start to the model file's counts (or the model itself).
    models_.set_popularity(model->name, any ? std::move(counts) : nullptr);
  }
}

std::string Service::model_summary_json(const ServedModel& m) const {
  const ModelSpec& s = m.loaded.recommender->model().spec();
  auto field = [](const char* name, const std::string& json) { return std::string("\"") + name + "\": " + json; };
  auto text = [](const char* v) { return api::quote(v); };
  std::string out = "{";
  out += field("name", api::quote(m.name)) + ", ";
  out += field("default", m.name == models_.default_model()->name ? "true" : "false") + ", ";
  out += field("path", api::quote(m.loaded.path)) + ", ";
  out += field("source", api::quote(m.loaded.source)) + ", ";
  out += field("architecture", "{" + field("block", text(to_string(s.blocks.kind))) + ", " +
                                   field("attention", text(to_string(s.blocks.attention))) + ", " +
                                   field("positions", text(to_string(s.input.positions))) + ", " +
                                   field("padding", text(to_string(s.input.padding))) + ", " +
                                   field("readout", text(to_string(s.readout.slot))) + ", " +
                                   field("activation", text(to_string(s.blocks.activation))) + "}") + ", ";
  out += field("catalog_size", std::to_string(s.n_items - 1)) + ", ";
  out += field("load_seconds", std::to_string(m.loaded.load_seconds)) + ", ";
  out += field("loaded_at", api::quote(m.loaded_at));
  return out + "}";
}

std::string Service::models_json() const {
  std::string out = "{\"default\": " + api::quote(models_.default_model()->name) + ", \"split\": " + split_json() +
                    ", \"models\": [";
  bool first = true;
  for (const auto& model : models_.all()) {
    out += (first ? "" : ", ") + model_summary_json(*model);
    first = false;
  }
  return out + "]}";
}

std::string Service::model_json(const ServedModel& m) const {
  const ModelSpec& s = m.loaded.recommender->model().spec();
  const auto threshold = m.loaded.recommender->rating_threshold();
  auto field = [](const char* name, const std::string& json) { return std::string("\"") + name + "\": " + json; };
  auto text = [](const char* v) { return api::quote(v); };
  std::string out = "{";
  out += field("name", api::quote(m.name)) + ", ";
  out += field("path", api::quote(m.loaded.path)) + ", ";
  out += field("source", api::quote(m.loaded.source)) + ", ";
  out += field("source_detail", api::quote(m.loaded.source_detail)) + ", ";
  // The whole spec, field by field as the .seqrec file stores it; then the usual summaries.
  std::string spec = "{";
  for (const auto& [name, value] : spec_fields(s)) spec += (spec.size() > 1 ? ", " : "") + api::quote(name) + ": " + api::quote(value);
  out += field("spec", spec + "}") + ", ";
  out += field("architecture", "{" + field("block", text(to_string(s.blocks.kind))) + ", " +
                                   field("attention", text(to_string(s.blocks.attention))) + ", " +
                                   field("positions", text(to_string(s.input.positions))) + ", " +
                                   field("padding", text(to_string(s.input.padding))) + ", " +
                                   field("readout", text(to_string(s.readout.slot))) + ", " +
                                   field("activation", text(to_string(s.blocks.activation))) + "}") + ", ";
  out += field("sizes", "{" + field("d", std::to_string(s.d)) + ", " + field("heads", std::to_string(s.blocks.heads)) +
                            ", " + field("ffn_dim", std::to_string(s.blocks.ffn_dim)) + ", " +
                            field("layers", std::to_string(s.blocks.n_layers)) + ", " +
                            field("max_len", std::to_string(s.max_len)) + "}") + ", ";
  out += field("uses_time", s.uses_time() ? "true" : "false") + ", ";
  out += field("uses_now", s.uses_now() ? "true" : "false") + ", ";
  out += field("format_version", std::to_string(m.loaded.format_version)) + ", ";
  out += field("load_seconds", std::to_string(m.loaded.load_seconds)) + ", ";
  out += field("loaded_at", api::quote(m.loaded_at)) + ", ";
  out += field("catalog_size", std::to_string(s.n_items - 1)) + ", ";
  out += field("score", text(to_string(s.scorer.score))) + ", ";
  out += field("rating_threshold", threshold ? std::to_string(*threshold) : "null") + ", ";
  const std::shared_ptr<const items::ItemMetadata> items = current_items();
  out += field("items", items ? "{" + field("path", api::quote(items->path())) + ", " +
                                    field("count", std::to_string(items->size())) + ", " +
                                    field("tags", std::to_string(m.loaded.recommender->item_tags() ? m.loaded.recommender->item_tags()->n_tags() : 0)) + "}"
                              : std::string("null")) + ", ";
  out += field("history", api::quote(store_.describe())) + ", ";
  out += field("cpu_path", api::quote(kernel_path()));
  return out + "}";
}

}  // namespace seqrec::server
