// seqrec serve: wires the model file, the history store, the inference workers and the
// HTTP front end together, and owns the process lifetime (signals, drain, reload).
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "engine/error.h"
#include "engine/platform.h"
#include "server/history/store.h"
#include "server/http_server.h"
#include "server/routes.h"
#include "weights/model_loader.h"

namespace seqrec::cli {

namespace {

std::string read_api_key(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw Error("--api-key-file: cannot read '" + file + "'");
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
  if (key.empty()) throw Error("--api-key-file: '" + file + "' has an empty first line");
  return key;
}

void log(const std::string& line) { std::cerr << "seqrec serve: " << line << std::endl; }

}  // namespace

Action add_serve(CLI::App& app) {
  struct Flags {
    std::string model, history = "lmdb:seqrec-history", api_key_file;
    http_server::Options http;
    server::ServiceOptions service;
    WorkerPool::Options workers;
    history::StoreOptions store;
    std::optional<double> rating_threshold;
    int io_threads = 1;
    int popularity_refresh_seconds = 10;
  };
  auto f = std::make_shared<Flags>();
  f->workers.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--model", f->model, "The .seqrec model file")->required()->envname("SEQREC_MODEL");
  app.add_option("--history", f->history, "History store: lmdb:PATH | redis://HOST:PORT[/DB] | memory")
      ->capture_default_str()
      ->envname("SEQREC_HISTORY");
  app.add_option("--bind", f->http.bind, "Address to listen on")->capture_default_str()->envname("SEQREC_BIND");
  app.add_option("--port", f->http.port, "Port to listen on (0: any free port)")->capture_default_str()->envname("SEQREC_PORT");
  app.add_option("--threads", f->workers.threads, "Inference workers (default: one per core)")->capture_default_str();
  app.add_option("--io-threads", f->io_threads, "HTTP I/O threads")->capture_default_str();
  app.add_option("--max-batch", f->workers.max_batch, "Most requests answered by one forward pass")->capture_default_str();
  app.add_option("--queue-capacity", f->workers.queue_capacity, "Queued requests beyond which the server answers 503")
      ->capture_default_str();
  app.add_option("--max-k", f->service.limits.max_k, "Largest k a request may ask for")->capture_default_str();
  app.add_option("--max-interactions", f->service.limits.max_interactions, "Most interactions in one request")
      ->capture_default_str();
  app.add_option("--max-candidates", f->service.limits.max_candidates, "Most candidate_ids / exclude_ids in one request")
      ->capture_default_str();
  app.add_option("--max-batch-requests", f->service.max_batch_requests, "Most requests in one POST /recommend/batch")
      ->capture_default_str();
  app.add_option("--max-body-bytes", f->http.max_body_bytes, "Largest request body (413 beyond)")->capture_default_str();
  app.add_option("--read-timeout", f->http.read_timeout, "Seconds a connection may take to send a request")
      ->capture_default_str();
  app.add_option("--history-cap", f->store.max_per_user, "Interactions kept per user (oldest trimmed)")
      ->capture_default_str();
  app.add_option("--rating-threshold", f->rating_threshold, "Override the model file's rating threshold");
  app.add_option("--api-key-file", f->api_key_file,
                 "File whose first line is the API key that write and admin routes require (or set SEQREC_API_KEY)")
      ->envname("SEQREC_API_KEY_FILE");

  return [f] {
    auto require_positive = [](const char* flag, int64_t v) {
      if (v < 1) throw Error(std::string(flag) + ": " + std::to_string(v) + " (expected >= 1)");
    };
    require_positive("--threads", f->workers.threads);
    require_positive("--io-threads", f->io_threads);
    require_positive("--max-batch", f->workers.max_batch);
    require_positive("--queue-capacity", f->workers.queue_capacity);
    require_positive("--max-k", f->service.limits.max_k);
    require_positive("--max-interactions", f->service.limits.max_interactions);
    require_positive("--max-candidates", f->service.limits.max_candidates);
    require_positive("--max-batch-requests", f->service.max_batch_requests);
    require_positive("--max-body-bytes", static_cast<int64_t>(f->http.max_body_bytes));
    require_positive("--read-timeout", f->http.read_timeout.count());
    require_positive("--history-cap", f->store.max_per_user);
    if (!f->api_key_file.empty())
      f->service.api_key = read_api_key(f->api_key_file);
    else if (const char* env = std::getenv("SEQREC_API_KEY"); env && *env)
      f->service.api_key = std::string(env);

    const std::optional<double> threshold = f->rating_threshold;
    server::ModelLoader loader = [threshold](const std::string& path) { return load_recommender(path, threshold); };
    LoadedModel model = loader(f->model);
    std::unique_ptr<history::HistoryStore> store = history::open_store(f->history, f->store);

    server::Metrics metrics;
    WorkerPool workers(model.recommender, f->workers,
                       [&metrics](size_t size, double seconds) { metrics.observe_batch(size, seconds); });
    metrics.queue_depth = [&workers] { return workers.queue_depth(); };
    boost::asio::thread_pool blocking(4);  // history store calls and model loading
    server::Service service(f->service, workers, *store, metrics, blocking, loader, model);
    metrics.model_labels = [&service, &workers] {
      const ModelSpec& s = workers.recommender()->model().spec();
      return "block=\"" + std::string(to_string(s.blocks.kind)) + "\",n_items=\"" + std::to_string(s.n_items - 1) +
             "\",d=\"" + std::to_string(s.d) + "\",layers=\"" + std::to_string(s.blocks.n_layers) + "\",score=\"" +
             to_string(s.scorer.score) + "\"";
    };

    boost::asio::io_context ioc(f->io_threads);
    http_server::HttpServer http(ioc, f->http,
                                 [&service](http_server::HttpRequest&& request, http_server::Reply reply) {
                                   service.handle(std::move(request), std::move(reply));
                                 });
    service.load_popularity();  // cold-start answers use the store's counts from the first request on
    http.start();

    // Cold-start popularity follows the store's counts.
    boost::asio::steady_timer refresh(ioc);
    std::function<void()> schedule_refresh = [&] {
      refresh.expires_after(std::chrono::seconds(f->popularity_refresh_seconds));
      refresh.async_wait([&](boost::system::error_code ec) {
        if (ec) return;
        service.refresh_popularity();
        schedule_refresh();
      });
    };
    schedule_refresh();

    // SIGTERM / SIGINT: stop accepting, answer what is in flight, exit 0. SIGHUP: reload.
    boost::asio::signal_set signals(ioc, SIGINT, SIGTERM, SIGHUP);
    boost::asio::steady_timer drain(ioc);
    std::function<void()> wait_for_drain = [&] {
      if (http.in_flight() == 0 && workers.queue_depth() == 0) {
        refresh.cancel();
        ioc.stop();
        return;
      }
      drain.expires_after(std::chrono::milliseconds(10));
      drain.async_wait([&](boost::system::error_code) { wait_for_drain(); });
    };
    std::function<void()> wait_for_signal = [&] {
      signals.async_wait([&](boost::system::error_code ec, int signal) {
        if (ec) return;
        if (signal == SIGHUP) {
          log("SIGHUP: reloading " + f->model);
          service.reload(std::nullopt, [](std::optional<std::string> error) {
            log(error ? "reload refused, the old model keeps serving: " + *error : "reloaded");
          });
          return wait_for_signal();
        }
        log("signal " + std::to_string(signal) + ": draining in-flight requests");
        http.stop_accepting();
        wait_for_drain();
      });
    };
    wait_for_signal();

    const ModelSpec& s = model.recommender->model().spec();
    log("serving " + f->model + " (" + std::to_string(s.n_items - 1) + " items) with history " + store->describe() +
        ", " + std::to_string(f->workers.threads) + " inference worker(s)");
    log("kernels: " + kernel_path() + " path on " + cpu_model() + " (SEQREC_CPU_ISA may force a lower one: " +
        supported_kernel_paths() + ")");
    log("listening on http://" + f->http.bind + ":" + std::to_string(http.port()));

    std::vector<std::thread> io_threads;
    for (int i = 1; i < f->io_threads; ++i) io_threads.emplace_back([&ioc] { ioc.run(); });
    ioc.run();
    for (std::thread& t : io_threads) t.join();
    workers.shutdown();
    blocking.join();
    log("stopped");
    return 0;
  };
}

}  // namespace seqrec::cli
