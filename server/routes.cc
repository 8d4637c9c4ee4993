#include "server/routes.h"

#include <boost/asio/post.hpp>
#include <chrono>
#include <filesystem>

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
  Metrics* metrics = nullptr;
  std::string route = "other";
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::atomic<bool> answered{false};

  void answer(http::status status, std::string body, std::string_view content_type = "application/json") {
    if (answered.exchange(true)) return;
    HttpResponse res = http_server::json_response(status, std::move(body));
    res.set(http::field::content_type, boost::beast::string_view(content_type.data(), content_type.size()));
    if (status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
    metrics->count_request(route, static_cast<int>(status),
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    reply(std::move(res));
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

Service::Service(ServiceOptions options, WorkerPool& workers, history::HistoryStore& store, Metrics& metrics,
                 boost::asio::thread_pool& blocking, ModelLoader loader, LoadedModel model)
    : options_(std::move(options)),
      workers_(workers),
      store_(store),
      metrics_(metrics),
      blocking_(blocking),
      loader_(std::move(loader)),
      model_(std::move(model)) {}

LoadedModel Service::current_model() const {
  std::lock_guard lock(model_mutex_);
  return model_;
}

void Service::handle(http_server::HttpRequest&& request, http_server::Reply reply) {
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->reply = std::move(reply);
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

// The metrics label of a path: the route's pattern, never the raw path (user ids would make
// one series per user).
std::string route_label(std::string_view path) {
  static const char* const kFixed[] = {"/recommend", "/iid_recommend", "/uid_recommend", "/recommend/batch",
                                       "/healthz",   "/readyz",        "/metrics",       "/model",
                                       "/admin/reload"};
  for (const char* fixed : kFixed)
    if (path == fixed) return fixed;
  if (path.substr(0, 7) == "/users/") {
    const std::string_view rest = path.substr(7);
    return rest.size() > 13 && rest.substr(rest.size() - 13) == "/interactions" ? "/users/{id}/interactions"
                                                                                 : "/users/{id}";
  }
  return "other";
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

Service::Access Service::access_for(http::verb method, std::string_view target) const {
  target = path_of(target);
  if (target == "/healthz" || target == "/readyz") return Access::open;
  // The console's static files hold no data; the routes it calls check keys as usual.
  if (target == "/" || target == "/console" || target.substr(0, 9) == "/console/") return Access::open;
  if (target == "/admin/reload") return Access::admin;
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
  const std::string_view target = path_of({call->request.target().data(), call->request.target().size()});
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

  if (target == "/recommend" || target == "/iid_recommend" || target == "/uid_recommend") {
    if (only(http::verb::post, "POST")) recommend(call, call->route);
  } else if (target == "/recommend/batch") {
    if (only(http::verb::post, "POST")) recommend_batch(call);
  } else if (target == "/healthz") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, R"({"status": "ok"})");
  } else if (target == "/readyz") {
    if (only(http::verb::get, "GET, HEAD")) ready(call);
  } else if (target == "/metrics") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, metrics_.render(), "text/plain; version=0.0.4");
  } else if (target == "/model") {
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, model_json());
  } else if (target == "/admin/reload") {
    if (only(http::verb::post, "POST")) admin_reload(call);
  } else if (target.substr(0, 7) == "/users/") {
    std::string_view rest = target.substr(7);
    const bool interactions = rest.size() > 13 && rest.substr(rest.size() - 13) == "/interactions";
    if (interactions) rest.remove_suffix(13);
    if (rest.empty() || rest.find('/') != std::string_view::npos) {
      call->error(http::status::not_found, "not_found", "no route " + std::string(target));
      return;
    }
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
    // The web console: static files from the binary, read-only; it calls the routes above.
    if (only(http::verb::get, "GET, HEAD")) call->answer(http::status::ok, std::string(asset->body), asset->content_type);
  } else {
    call->error(http::status::not_found, "not_found", "no route " + std::string(target));
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

void Service::infer(api::RecommendRequest parsed, std::function<void(std::string json, int status)> done) {
  auto submit = [this, done](Request request) {
    const bool queued = workers_.submit(std::move(request), [done](Response response, std::exception_ptr error) {
      // A request the model cannot answer as sent (e.g. a time-reading model and an
      // interaction without a timestamp) is the client's error, named in the message.
      if (!error && response.error) return done(api::write_error(response.error->code, response.error->message), 400);
      if (!error) return done(api::write_response(response), 200);
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        done(api::write_error("internal", e.what()), 500);
      }
    });
    if (!queued) done(api::write_error("overloaded", "the inference queue is full; retry shortly"), 503);
  };
  if (!parsed.user_id) return submit(std::move(parsed.request));
  // The store may block (disk, network): never on an I/O thread.
  boost::asio::post(blocking_, [this, parsed = std::move(parsed), submit, done]() mutable {
    try {
      parsed.request.interactions = store_.get(*parsed.user_id);
    } catch (const history::StoreUnavailable& e) {
      return done(api::write_error("history_unavailable", e.what()), 503);
    } catch (const std::exception& e) {
      return done(api::write_error("internal", e.what()), 500);
    }
    submit(std::move(parsed.request));
  });
}

void Service::recommend(const std::shared_ptr<Call>& call, const std::string& alias) {
  api::RecommendRequest parsed = api::parse_recommend_request(call->request.body(), options_.limits);
  if (alias == "/iid_recommend" && !parsed.has_interactions)
    throw api::ApiError(400, "invalid_request", "/iid_recommend needs user_interactions (use /uid_recommend for user_id)");
  if (alias == "/uid_recommend" && !parsed.user_id)
    throw api::ApiError(400, "invalid_request", "/uid_recommend needs user_id (use /iid_recommend for user_interactions)");
  infer(std::move(parsed), [call](std::string json, int status) {
    call->answer(static_cast<http::status>(status), std::move(json));
  });
}

void Service::recommend_batch(const std::shared_ptr<Call>& call) {
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
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].error) {
      finish_one(i, api::write_error(entries[i].error->code(), entries[i].error->what()));
      continue;
    }
    // The entry's result is its response, or its {"error": {...}} (e.g. store down).
    infer(std::move(*entries[i].request), [finish_one, i](std::string json, int) { finish_one(i, std::move(json)); });
  }
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

void Service::ready(const std::shared_ptr<Call>& call) {
  off_io(call, [this, call] {
    const bool model = current_model().recommender != nullptr;
    const bool history = store_.ready();
    const std::string body = std::string("{\"model\": ") + (model ? "\"loaded\"" : "\"missing\"") +
                             ", \"history\": " + (history ? "\"ok\"" : "\"unreachable\"") + "}";
    if (model && history)
      call->answer(http::status::ok, body);
    else
      call->error(http::status::service_unavailable, "not_ready",
                  std::string("not ready: ") + (model ? "" : "no model loaded; ") +
                      (history ? "" : "history store " + store_.describe() + " unreachable"));
  });
}

void Service::admin_reload(const std::shared_ptr<Call>& call) {
  std::optional<std::string> path = api::parse_reload_body(call->request.body());
  if (path) {
    // Loading another file is a privilege of the admin key, confined to --model-dir: the
    // route must not become a way to probe or read the server's files.
    if (!options_.api_key)
      throw api::ApiError(403, "forbidden",
                          "path: reloading another file needs the admin key (serve with --api-key-file); without "
                          "one, an empty body reloads the model file itself");
    path = confined_model_path(*path);
  }
  reload(path, [this, call](std::optional<std::string> error) {
    if (error)
      call->error(http::status::unprocessable_entity, "reload_failed", *error);
    else
      call->answer(http::status::ok, "{\"reloaded\": true, \"model\": " + model_json() + "}");
  });
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

void Service::reload(std::optional<std::string> path, std::function<void(std::optional<std::string>)> done) {
  boost::asio::post(blocking_, [this, path = std::move(path), done = std::move(done)] {
    std::lock_guard one_at_a_time(reload_mutex_);
    const std::string file = path.value_or(current_model().path);
    try {
      LoadedModel loaded = loader_(file);
      workers_.set_recommender(loaded.recommender);
      {
        std::lock_guard lock(model_mutex_);
        model_ = std::move(loaded);
      }
      metrics_.count_reload(true);
    } catch (const std::exception& e) {
      metrics_.count_reload(false);
      return done(std::string(e.what()));
    }
    load_popularity();  // the new catalog's counts before anyone is told the reload is done
    done(std::nullopt);
  });
}

void Service::refresh_popularity() {
  boost::asio::post(blocking_, [this] { load_popularity(); });
}

void Service::load_popularity() {
  try {
    const std::shared_ptr<const Recommender> model = workers_.recommender();
    const Catalog& catalog = model->catalog();
    auto counts = std::make_shared<std::vector<uint64_t>>(static_cast<size_t>(catalog.size()), 0);
    bool any = false;
    for (const auto& [item, count] : store_.item_counts()) {
      if (int32_t row = catalog.row(item); row > 0 && count > 0) {
        (*counts)[row] += count;
        any = true;
      }
    }
    // No counted item: leave cold start to the model file's counts (or the model itself).
    workers_.set_popularity(any ? std::move(counts) : nullptr);
  } catch (const std::exception&) {
    // Store unreachable: keep the counts we had; the next refresh tries again.
  }
}

std::string Service::model_json() const {
  const LoadedModel m = current_model();
  const ModelSpec& s = m.recommender->model().spec();
  const auto threshold = m.recommender->rating_threshold();
  auto field = [](const char* name, const std::string& json) { return std::string("\"") + name + "\": " + json; };
  auto text = [](const char* v) { return api::quote(v); };
  std::string out = "{";
  out += field("path", api::quote(m.path)) + ", ";
  out += field("source", api::quote(m.source)) + ", ";
  out += field("source_detail", api::quote(m.source_detail)) + ", ";
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
  out += field("format_version", std::to_string(m.format_version)) + ", ";
  out += field("load_seconds", std::to_string(m.load_seconds)) + ", ";
  out += field("catalog_size", std::to_string(s.n_items - 1)) + ", ";
  out += field("score", text(to_string(s.scorer.score))) + ", ";
  out += field("rating_threshold", threshold ? std::to_string(*threshold) : "null") + ", ";
  out += field("history", api::quote(store_.describe())) + ", ";
  out += field("cpu_path", api::quote(kernel_path()));
  return out + "}";
}

}  // namespace seqrec::server
