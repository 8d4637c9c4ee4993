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
#include "server/json_io.h"
#include "server/metrics.h"

namespace seqrec::server {

// Loads a model file (throws seqrec::Error with the loader's message).
using ModelLoader = std::function<LoadedModel(const std::string& path)>;

struct ServiceOptions {
  api::Limits limits;
  int64_t max_batch_requests = 256;
  std::optional<std::string> api_key;  // write and admin routes need it when set
};

class Service {
 public:
  Service(ServiceOptions options, WorkerPool& workers, history::HistoryStore& store, Metrics& metrics,
          boost::asio::thread_pool& blocking, ModelLoader loader, LoadedModel model);

  // The http_server::Handler.
  void handle(http_server::HttpRequest&& request, http_server::Reply reply);

  // Loads `path` (or the current file again) off the I/O threads and swaps it in; `done`
  // gets the loader's error, or nothing on success. Requests in flight finish on the old model.
  void reload(std::optional<std::string> path, std::function<void(std::optional<std::string> error)> done);

  // Re-reads item counts from the store (cold-start popularity) off the I/O threads.
  void refresh_popularity();
  // The same, on the calling thread (at start-up, before the first request is taken).
  void load_popularity();

  std::string model_json() const;

 private:
  struct Call;  // one request being answered
  void route(const std::shared_ptr<Call>& call);
  void recommend(const std::shared_ptr<Call>& call, const std::string& alias);
  void recommend_batch(const std::shared_ptr<Call>& call);
  void user_interactions(const std::shared_ptr<Call>& call, const std::string& user_id);
  void delete_user(const std::shared_ptr<Call>& call, const std::string& user_id);
  void ready(const std::shared_ptr<Call>& call);
  void admin_reload(const std::shared_ptr<Call>& call);
  bool authorized(const Call& call) const;
  // Runs `work` on the blocking pool; a StoreUnavailable becomes 503, any Error 500.
  void off_io(const std::shared_ptr<Call>& call, std::function<void()> work);
  // Resolves user_id (store) when needed, then queues the request for inference.
  void infer(api::RecommendRequest parsed, std::function<void(std::string json, int status)> done);
  LoadedModel current_model() const;

  ServiceOptions options_;
  WorkerPool& workers_;
  history::HistoryStore& store_;
  Metrics& metrics_;
  boost::asio::thread_pool& blocking_;
  ModelLoader loader_;
  mutable std::mutex model_mutex_;
  LoadedModel model_;  // what /model reports; the workers hold their own pointer
  std::mutex reload_mutex_;  // one reload at a time
};

// "%2F" → "/": user ids arrive percent-encoded in paths. Throws api::ApiError on bad escapes.
std::string percent_decode(std::string_view text);

}  // namespace seqrec::server
