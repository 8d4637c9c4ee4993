// seqrec serve: wires the model file, the history store, the inference workers and the
// HTTP front end together, and owns the process lifetime (signals, drain, reload).
#include <malloc.h>
#include <sys/resource.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "engine/error.h"
#include "engine/platform.h"
#include "server/history/store.h"
#include "server/http_server.h"
#include "server/items/item_metadata.h"
#include "server/model_registry.h"
#include "server/routes.h"
#include "weights/model_loader.h"
#include "weights/seqrec_file.h"

namespace seqrec::cli {

namespace {

// A key from a file (its first line) or an environment variable. Set but empty (or only
// blanks) is an error: it must never quietly mean "no authentication".
std::string read_key_file(const char* flag, const std::string& file) {
  std::ifstream in(file);
  if (!in) throw Error(std::string(flag) + ": cannot read '" + file + "'");
  std::string key;
  std::getline(in, key);
  const auto first = key.find_first_not_of(" \t\r");
  const auto last = key.find_last_not_of(" \t\r");
  if (first == std::string::npos) throw Error(std::string(flag) + ": '" + file + "' has an empty first line");
  return key.substr(first, last - first + 1);
}

std::optional<std::string> key_from_env(const char* name) {
  const char* value = std::getenv(name);
  if (!value) return std::nullopt;
  std::string key(value);
  const auto first = key.find_first_not_of(" \t\r\n");
  if (first == std::string::npos)
    throw Error(std::string(name) + ": set but empty; unset it to serve without a key, or give a key");
  const auto last = key.find_last_not_of(" \t\r\n");
  return key.substr(first, last - first + 1);
}

bool is_loopback(const std::string& address) {
  boost::system::error_code ec;
  const auto parsed = boost::asio::ip::make_address(address, ec);
  return !ec && parsed.is_loopback();
}

// http://127.0.0.1:8080, http://[::1]:8080
std::string url_of(const std::string& address, uint16_t port) {
  const bool v6 = address.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + address + "]" : address) + ":" + std::to_string(port);
}

// The soft descriptor limit raised to the hard one (connections, LMDB, Redis all need
// descriptors); returns the limit now in force.
uint64_t raise_descriptor_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? uint64_t{1} << 20 : static_cast<uint64_t>(limit.rlim_cur);
}

void log(const std::string& line) { std::cerr << "seqrec serve: " << line << std::endl; }

}  // namespace

Action add_serve(CLI::App& app) {
  struct Flags {
    std::vector<std::string> models;
    std::string history = "lmdb:seqrec-history", api_key_file, read_key_file, model_dir, split;
    std::string items, item_columns, tags_separator = "|";
    bool allow_unauthenticated = false;
    int64_t max_connections = 0;  // 0: from the descriptor limit
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
  // A 200-item history on the ml1m model takes about 100 µs: one or two clients of that inline,
  // a dozen of a 10-item one (about 9 µs); more clients than the budget covers go to the workers.
  f->workers.inline_max_microseconds = 200;
  app.add_option("--model", f->models,
                 "A .seqrec model file, or NAME=PATH; repeat to serve several (the first is the default; a plain "
                 "PATH is named after its file name)")
      ->required()
      ->envname("SEQREC_MODEL");
  app.add_option("--split", f->split,
                 "A/B split of the default traffic: NAME=PERCENT,NAME=PERCENT (summing to 100), by a hash of user_id "
                 "(or routing_key); change it live with POST /admin/split");
  app.add_option("--items", f->items,
                 "Item metadata: a CSV/TSV file with a header (titles, tags for filters; MovieLens movies.csv works as it is)")
      ->envname("SEQREC_ITEMS");
  app.add_option("--item-columns", f->item_columns,
                 "Columns of --items: item=NAME,title=NAME,tags=NAME (default: item_id/movieId/id, title/name, "
                 "tags/genres/categories)");
  app.add_option("--tags-separator", f->tags_separator, "What separates the tags in the tags column")->capture_default_str();
  app.add_option("--history", f->history, "History store: lmdb:PATH | redis://HOST:PORT[/DB] | redis-cluster://HOST:PORT[,HOST:PORT...] | memory")
      ->capture_default_str()
      ->envname("SEQREC_HISTORY");
  app.add_option("--bind", f->http.bind, "Address to listen on")->capture_default_str()->envname("SEQREC_BIND");
  app.add_option("--port", f->http.port, "Port to listen on (0: any free port)")->capture_default_str()->envname("SEQREC_PORT");
  app.add_option("--threads", f->workers.threads, "Inference workers (default: one per core)")->capture_default_str();
  app.add_option("--io-threads", f->io_threads, "HTTP I/O threads")->capture_default_str();
  app.add_option("--max-batch", f->workers.max_batch, "Most requests answered by one forward pass")->capture_default_str();
  app.add_option("--queue-capacity", f->workers.queue_capacity, "Queued requests beyond which the server answers 503")
      ->capture_default_str();
  app.add_option("--worker-spin-us", f->workers.spin_microseconds,
                 "Microseconds an idle worker watches the queue before sleeping (0: sleep at once; saves a "
                 "wake-up per request at low load, costs that much CPU after each batch)")
      ->capture_default_str();
  app.add_option("--inline-max-us", f->workers.inline_max_microseconds,
                 "Budget (µs) of the inline path: a request that arrives while every worker is idle runs on "
                 "the I/O thread when (connections active in the last 10 ms) x (its model's last batch-1 time) "
                 "is at most this. Saves two thread hand-offs per request for a few clients; many clients go "
                 "to the workers, which batch them. 0: never")
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
  app.add_option("--read-key-file", f->read_key_file,
                 "File whose first line is a key for reads only (or set SEQREC_READ_KEY); needs --protect-reads")
      ->envname("SEQREC_READ_KEY_FILE");
  app.add_flag("--protect-reads", f->service.protect_reads,
               "Every route but /healthz and /readyz needs a key (the read key or the admin key)");
  app.add_flag("--public-metrics", f->service.public_metrics, "With --protect-reads, /metrics stays open");
  app.add_flag("--allow-unauthenticated", f->allow_unauthenticated,
               "Serve on a non-loopback address without an admin key (writes then open to anyone who reaches it)");
  app.add_option("--model-dir", f->model_dir,
                 "POST /admin/reload {\"path\"} loads only files inside this directory (default: the --model file's)")
      ->envname("SEQREC_MODEL_DIR");
  app.add_option("--max-connections", f->max_connections,
                 "Connections served at once; beyond, one short 503 (/healthz still 200) (default: 4096, or fewer "
                 "when the descriptor limit is lower)");
  app.add_option("--max-buffered-body-bytes", f->http.max_buffered_body_bytes,
                 "Request-body bytes being received at once over all connections (503 beyond)")
      ->capture_default_str();

  return [f] {
    auto require_positive = [](const char* flag, int64_t v) {
      if (v < 1) throw Error(std::string(flag) + ": " + std::to_string(v) + " (expected >= 1)");
    };
    require_positive("--threads", f->workers.threads);
    require_positive("--io-threads", f->io_threads);
    require_positive("--max-batch", f->workers.max_batch);
    require_positive("--queue-capacity", f->workers.queue_capacity);
    if (f->workers.spin_microseconds < 0 || f->workers.spin_microseconds > 10000)
      throw Error("--worker-spin-us: " + std::to_string(f->workers.spin_microseconds) + " (expected 0..10000)");
    if (f->workers.inline_max_microseconds < 0 || f->workers.inline_max_microseconds > 100000)
      throw Error("--inline-max-us: " + std::to_string(f->workers.inline_max_microseconds) + " (expected 0..100000)");
    require_positive("--max-k", f->service.limits.max_k);
    require_positive("--max-interactions", f->service.limits.max_interactions);
    require_positive("--max-candidates", f->service.limits.max_candidates);
    require_positive("--max-batch-requests", f->service.max_batch_requests);
    require_positive("--max-body-bytes", static_cast<int64_t>(f->http.max_body_bytes));
    require_positive("--read-timeout", f->http.read_timeout.count());
    require_positive("--history-cap", f->store.max_per_user);
    require_positive("--max-buffered-body-bytes", static_cast<int64_t>(f->http.max_buffered_body_bytes));
    if (f->max_connections < 0) throw Error("--max-connections: " + std::to_string(f->max_connections) + " (expected >= 1)");

    // Who may do what (README "Security").
    if (!f->api_key_file.empty())
      f->service.api_key = read_key_file("--api-key-file", f->api_key_file);
    else
      f->service.api_key = key_from_env("SEQREC_API_KEY");
    if (!f->read_key_file.empty())
      f->service.read_key = read_key_file("--read-key-file", f->read_key_file);
    else
      f->service.read_key = key_from_env("SEQREC_READ_KEY");
    if (f->service.read_key && !f->service.protect_reads)
      throw Error("--read-key-file / SEQREC_READ_KEY: a read key needs --protect-reads (reads are open without it)");
    if (f->service.protect_reads && !f->service.api_key && !f->service.read_key)
      throw Error("--protect-reads: no key to protect them with (give --api-key-file and/or --read-key-file)");
    if (f->service.public_metrics && !f->service.protect_reads)
      throw Error("--public-metrics: only means something with --protect-reads (/metrics is open otherwise)");
    if (!is_loopback(f->http.bind) && !f->service.api_key && !f->allow_unauthenticated)
      throw Error("--bind " + f->http.bind +
                  ": not a loopback address, and no admin key: anyone who reaches it could write and delete "
                  "histories. Give --api-key-file (or SEQREC_API_KEY), or --allow-unauthenticated to mean it");
    {
      namespace fs = std::filesystem;
      std::error_code ec;
      const std::string first_path = server::parse_model_flag(f->models.front()).second;
      const std::string dir = f->model_dir.empty() ? fs::absolute(first_path).parent_path().string() : f->model_dir;
      const fs::path canonical = fs::canonical(dir, ec);
      if (ec || !fs::is_directory(canonical))
        throw Error("--model-dir: '" + dir + "' is not a directory" + (ec ? " (" + ec.message() + ")" : ""));
      f->service.model_dir = canonical.string();
    }
    const uint64_t descriptors = raise_descriptor_limit();
    // Room beside connections for the store, the model file, logs, the reserve descriptor and
    // the short-lived sessions that answer connections over the cap (1024 at most).
    const int64_t connection_room = std::max<int64_t>(8, static_cast<int64_t>(descriptors) - 128 - 1024);
    f->http.max_connections = f->max_connections ? f->max_connections : std::min<int64_t>(4096, connection_room);
    if (f->http.max_connections > connection_room)
      log("warning: --max-connections " + std::to_string(f->http.max_connections) + " exceeds what the descriptor " +
          "limit (" + std::to_string(descriptors) + ") leaves room for; accept() will fail first (raise ulimit -n)");
    // Request bodies (up to --max-body-bytes) come and go in bursts: a fixed mmap threshold
    // keeps large ones out of the heap, so freeing them returns the memory to the OS at once
    // (glibc's default threshold grows after the first large free and keeps them in the heap).
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    f->http.log = [](const std::string& line) { log(line); };
    f->store.log = [](const std::string& line) { log("history: " + line); };

    const std::optional<double> threshold = f->rating_threshold;
    server::ModelLoader loader = [threshold](const std::string& path, const items::ItemMetadata* items) {
      return load_recommender(path, threshold, items::tags_for(items));
    };
    server::ItemsLoader items_loader;
    std::shared_ptr<const items::ItemMetadata> item_metadata;
    if (!f->items.empty()) {
      const items::ItemColumns columns = items::parse_item_columns(f->item_columns);
      items_loader = [path = f->items, columns, separator = f->tags_separator] {
        return items::ItemMetadata::load(path, columns, separator);
      };
      item_metadata = items_loader();
      log("item metadata: " + std::to_string(item_metadata->size()) + " items from " + f->items + " (" +
          std::to_string(item_metadata->n_tag_assignments()) + " tags)");
    } else if (!f->item_columns.empty()) {
      throw Error("--item-columns: only means something with --items FILE");
    }
    std::vector<std::pair<std::string, LoadedModel>> loaded_models;
    for (const std::string& flag : f->models) {
      auto [name, path] = server::parse_model_flag(flag);
      for (const auto& [seen, ignored] : loaded_models)
        if (seen == name)
          throw Error("--model " + flag + ": the name '" + name + "' is already taken (name them: --model NAME=PATH)");
      loaded_models.emplace_back(name, loader(path, item_metadata.get()));
    }
    server::ModelRegistry models(std::move(loaded_models));
    if (!f->split.empty()) {
      try {
        models.set_split(server::parse_split_flag(f->split));
      } catch (const Error& e) {
        throw Error("--split " + f->split + ": " + e.what());
      }
    }
    std::unique_ptr<history::HistoryStore> store = history::open_store(f->history, f->store);

    server::Metrics metrics;
    WorkerPool workers(
        f->workers, [&metrics](size_t size, double seconds) { metrics.observe_batch(size, seconds); },
        [&metrics](double seconds) { metrics.observe_stage("queue", seconds); });
    metrics.queue_depth = [&workers] { return workers.queue_depth(); };
    boost::asio::thread_pool blocking(4);  // history store calls and model loading
    server::Service service(f->service, workers, models, *store, metrics, blocking, loader, items_loader, item_metadata);
    metrics.model_labels = [&models] {
      std::vector<std::string> out;
      for (const auto& served : models.all()) {
        const ModelSpec& s = served->loaded.recommender->model().spec();
        out.push_back("model=\"" + served->name + "\",block=\"" + std::string(to_string(s.blocks.kind)) + "\",n_items=\"" +
                      std::to_string(s.n_items - 1) + "\",d=\"" + std::to_string(s.d) + "\",layers=\"" +
                      std::to_string(s.blocks.n_layers) + "\",score=\"" + to_string(s.scorer.score) + "\"");
      }
      return out;
    };

    boost::asio::io_context ioc(f->io_threads);
    http_server::HttpServer http(
        ioc, f->http,
        [&service](http_server::HttpRequest&& request, http_server::Reply reply, uint64_t connection) {
          service.handle(std::move(request), std::move(reply), connection);
        },
        [&service](const http_server::http::request_header<>& header) { return service.check_header(header); });
    metrics.collectors.push_back([&http](std::string& out) {
      const http_server::Stats& s = http.stats();
      auto line = [&out](const char* name, const char* type, const char* help, uint64_t value) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
               std::to_string(value) + "\n";
      };
      line("seqrec_open_connections", "gauge", "Connections being served.",
           static_cast<uint64_t>(std::max<int64_t>(0, s.open_connections.load())));
      line("seqrec_refused_connections_total", "counter", "Connections over --max-connections (answered 503).",
           s.refused_connections.load());
      line("seqrec_refused_bodies_total", "counter", "Requests refused as --max-buffered-body-bytes was reached.",
           s.refused_bodies.load());
      line("seqrec_accept_errors_total", "counter", "accept() failures (EMFILE at the descriptor limit, ...).",
           s.accept_errors.load());
      line("seqrec_evicted_connections_total", "counter",
           "Connections closed before sending a whole request header, to make room (at the descriptor "
           "limit, or for newer connections over --max-connections).",
           s.evicted_connections.load());
      line("seqrec_buffered_body_bytes", "gauge", "Request-body bytes being received now.",
           s.buffered_body_bytes.load());
      line("seqrec_memory_trims_total", "counter", "Times freed memory was returned to the OS after a burst.",
           s.memory_trims.load());
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
          log("SIGHUP: reloading every model (and the item metadata)");
          service.reload(std::nullopt, std::nullopt, [](std::optional<std::string> error, std::vector<std::string> reloaded) {
            std::string names;
            for (const std::string& name : reloaded) names += " " + name;
            log(error ? "reload refused, the old model keeps serving: " + *error + (names.empty() ? "" : " (reloaded before it:" + names + ")")
                      : "reloaded" + names);
          });
          return wait_for_signal();
        }
        log("signal " + std::to_string(signal) + ": draining in-flight requests");
        http.stop_accepting();
        wait_for_drain();
      });
    };
    wait_for_signal();

    for (const auto& served : models.all())
      log("serving model " + served->name + (served == models.default_model() ? " (default)" : "") + ": " +
          served->loaded.path + " (" + std::to_string(served->loaded.recommender->catalog().size() - 1) +
          " items, format v" + std::to_string(served->loaded.format_version) + ", loaded in " +
          std::to_string(static_cast<int64_t>(served->loaded.load_seconds * 1000 + 0.5)) + " ms" +
          (served->loaded.format_version < kSeqrecFormatVersion ? "; an old file: re-convert it for faster loads" : "") +
          ")");
    log("history " + store->describe() + ", " + std::to_string(f->workers.threads) + " inference worker(s)" +
        (f->split.empty() ? "" : ", split " + f->split));
    log("kernels: " + kernel_path() + " path on " + cpu_model() + " (SEQREC_CPU_ISA may force a lower one: " +
        supported_kernel_paths() + ")");
    log("listening on " + url_of(f->http.bind, http.port()) + " (at most " + std::to_string(f->http.max_connections) +
        " connections; " + (f->service.api_key ? "writes need the admin key" : "writes open: no admin key") + "; " +
        (f->service.protect_reads ? "reads need a key" : "reads open") + ")");

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
