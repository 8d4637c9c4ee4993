// The HTTP API of product.md: the route table and its handlers. Parsing happens here on
// the I/O thread (cheap); history-store calls and model loading go to a blocking pool;
// inference goes to the WorkerPool. No handler computes on an I/O thread.
#pragma once

#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "engine/loaded_model.h"
#include "engine/worker_pool.h"
#include "server/history/store.h"
#include "server/http_server.h"
#include "server/items/item_metadata.h"
#include "server/json_io.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace seqrec::server {

// Loads a model file, indexing the item metadata's tags for its catalog when there is
// metadata (throws seqrec::Error with the loader's message).
using ModelLoader = std::function<LoadedModel(const std::string& path, const items::ItemMetadata* items)>;
// Reads the --items file again (reload); empty when the server has none.
using ItemsLoader = std::function<std::shared_ptr<const items::ItemMetadata>()>;

// One route of the API: what `seqrec routes` prints and the OpenAPI document must list.
struct RouteInfo {
  const char* method;
  const char* path;  // with {name} / {id} placeholders
  const char* access;  // "open", "read" (a key when --protect-reads), "admin"
  const char* summary;
};
const std::vector<RouteInfo>& route_table();

struct ServiceOptions {
  api::Limits limits;
  int64_t max_batch_requests = 256;
  // Who may do what. Write and admin routes need the admin key when one is set. With
  // protect_reads every route but /healthz and /readyz needs a key (the read key or the admin
  // key), /metrics too unless public_metrics.
  std::optional<std::string> api_key;   // the admin key (writes, reload; reads too)
  std::optional<std::string> read_key;  // reads only
  bool protect_reads = false;
  bool public_metrics = false;
  // `POST /admin/reload {"path"}` loads only files that resolve (symlinks followed) inside
  // this directory, and only with the admin key. Empty: reload with a path is refused.
  std::string model_dir;
};

class Service {
 public:
  Service(ServiceOptions options, WorkerPool& workers, ModelRegistry& models, history::HistoryStore& store,
          Metrics& metrics, boost::asio::thread_pool& blocking, ModelLoader loader, ItemsLoader items_loader,
          std::shared_ptr<const items::ItemMetadata> items);

  // The http_server::Handler.
  // `connection`: the HTTP connection's number (see http_server::Handler), which lets the worker
  // pool tell one client from many (its inline path).
  void handle(http_server::HttpRequest&& request, http_server::Reply reply, uint64_t connection = 0);
  // The http_server::HeaderCheck: refuses a request whose route needs a key the header does
  // not carry, before its body is read.
  std::optional<http_server::HttpResponse> check_header(const boost::beast::http::request_header<>& header) const;

  // Reloads, off the I/O threads: the --items file first (when the server has one), then the
  // model `model` (every model when none) from `path` (default: its current file). Each model
  // swaps atomically on its own; requests in flight finish on the old one. `done` gets the
  // first error (models before it were reloaded), or nothing, and the names reloaded.
  void reload(std::optional<std::string> model, std::optional<std::string> path,
              std::function<void(std::optional<std::string> error, std::vector<std::string> reloaded)> done);

  // Re-reads item counts from the store (cold-start popularity) off the I/O threads.
  void refresh_popularity();
  // The same, on the calling thread (at start-up, before the first request is taken).
  void load_popularity();

  std::string model_json(const ServedModel& model) const;
  std::string models_json() const;

 private:
  struct Call;  // one request being answered
  void route(const std::shared_ptr<Call>& call);
  // `path_model`: the model named by a /models/{name}/... path.
  void recommend(const std::shared_ptr<Call>& call, const std::string& alias, const std::string* path_model);
  void recommend_batch(const std::shared_ptr<Call>& call, const std::string* path_model);
  void similar_items(const std::shared_ptr<Call>& call, const std::string* path_model);
  void user_interactions(const std::shared_ptr<Call>& call, const std::string& user_id);
  void delete_user(const std::shared_ptr<Call>& call, const std::string& user_id);
  void list_users(const std::shared_ptr<Call>& call);
  void item(const std::shared_ptr<Call>& call, const std::string& item_id);
  void search_items(const std::shared_ptr<Call>& call);
  void ready(const std::shared_ptr<Call>& call);
  void admin_reload(const std::shared_ptr<Call>& call);
  void admin_split(const std::shared_ptr<Call>& call);
  // What a route needs: nothing, a read key (when reads are protected), the admin key.
  enum class Access { open, read, admin };
  Access access_for(boost::beast::http::verb method, std::string_view target) const;
  bool authorized(const boost::beast::http::request_header<>& header, Access access) const;
  // The reload path inside model_dir, or ApiError 403 (the same message whether the file
  // exists or not: the answer must not map the filesystem).
  std::string confined_model_path(const std::string& path) const;
  // Runs `work` on the blocking pool; a StoreUnavailable becomes 503, any Error 500.
  void off_io(const std::shared_ptr<Call>& call, std::function<void()> work);
  // The model a request is for: `named` (from the body), `path_model` (from the path; both must
  // agree), else the split's arm for `key`, else the default. ApiError 404 model_not_found.
  std::shared_ptr<const ServedModel> model_for(const std::optional<std::string>& named, const std::string* path_model,
                                               std::optional<std::string_view> key) const;
  // The writer of a request's "fields" (null when none asked); ApiError 400 for a bad field.
  std::shared_ptr<api::ItemFieldsWriter> fields_writer(const std::vector<std::string>& fields) const;
  // Resolves user_id (store) when needed, then queues the request for inference. `client`: the
  // connection it came on, 0 when it must go to the workers (e.g. one entry of a batch).
  void infer(api::RecommendRequest parsed, std::shared_ptr<const ServedModel> model,
             std::shared_ptr<api::ItemFieldsWriter> fields, uint64_t client,
             std::function<void(std::string json, int status)> done);
  std::shared_ptr<const items::ItemMetadata> current_items() const;
  std::string model_summary_json(const ServedModel& model) const;
  std::string split_json() const;

  ServiceOptions options_;
  WorkerPool& workers_;
  ModelRegistry& models_;
  history::HistoryStore& store_;
  Metrics& metrics_;
  boost::asio::thread_pool& blocking_;
  ModelLoader loader_;
  ItemsLoader items_loader_;
  mutable std::mutex items_mutex_;
  std::shared_ptr<const items::ItemMetadata> items_;  // null: no --items
  std::mutex reload_mutex_;  // one reload at a time
};

// "%2F" → "/": user ids arrive percent-encoded in paths. Throws api::ApiError on bad escapes.
std::string percent_decode(std::string_view text);

}  // namespace seqrec::server
