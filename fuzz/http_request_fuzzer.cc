// Feeds the bytes as one HTTP request off the wire: Beast's request_parser reads them with the
// server's limits (server/http_server.cc; inputs Beast refuses, or that end before the request
// does, are skipped: the server would never route them), and the request goes through the
// whole route table, server::Service::handle, in process: JSON readers, the history store
// (a fresh memory store per input), the inference WorkerPool on a tiny model, the blocking
// pool, the metrics, model reload. A request carrying "X-Fuzz-Model: hstu" goes to a service
// on an HSTU-like model (it reads timestamps and "now"), all others to a SASRec-like one. The
// admin key is "fuzz-key", the read key "fuzz-read-key" ("X-Fuzz-Protect-Reads: 1" makes reads
// need a key); reload may name the two models in a temporary folder (the loader reads nothing).
// A failure: any sanitizer report; no reply within kReplyTimeout (a hang), or a second reply;
// a 500 (an unexpected exception in a handler: with a memory store and a sound model there is
// none to expect); a reload path outside the model folder reaching the loader; a status
// outside 200-599; an application/json body that is not valid JSON, or an error status whose
// body is not {"error": {...}}; a response that does not survive Beast's serializer and parser.
// SEQREC_FUZZ_VERBOSE=1 prints each request's status and body (when replaying a reproducer).
#include <boost/asio/buffer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>

#include "engine/error.h"
#include "engine/loaded_model.h"
#include "engine/recommender.h"
#include "engine/worker_pool.h"
#include "fuzz/fuzz_common.h"
#include "server/history/backends.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "tests/unit/test_models.h"

namespace {

using seqrec::fuzz::fail;
namespace http = boost::beast::http;
namespace history = seqrec::history;
namespace server = seqrec::server;
using seqrec::http_server::HttpRequest;
using seqrec::http_server::HttpResponse;

constexpr auto kReplyTimeout = std::chrono::seconds(5);
constexpr uint64_t kMaxBodyBytes = 1 << 20;  // http_server::Options' default
constexpr uint32_t kHeaderLimit = 64 * 1024;  // as the server's sessions
constexpr int kBlockingThreads = 2;

// A tiny model, built once: 11 items with ids "100".."110" (row r has id 99 + r).
seqrec::LoadedModel tiny_model(const seqrec::ModelSpec& spec, const std::filesystem::path& path,
                               std::optional<double> threshold) {
  std::vector<uint64_t> popularity(static_cast<size_t>(spec.n_items));
  for (size_t row = 1; row < popularity.size(); ++row) popularity[row] = row % 4;
  seqrec::LoadedModel model;
  model.recommender = std::make_shared<const seqrec::Recommender>(
      spec, seqrec::testing::random_weights(spec), seqrec::testing::offset_ids(spec.n_items), popularity, threshold);
  model.path = path.string();
  model.source = "fuzz";
  model.source_detail = "random weights";
  model.format_version = 2;
  return model;
}

// The folder POST /admin/reload {"path"} may load from (ServiceOptions::model_dir, when this
// version of the service has it): made once, holding an empty file per model, for the path
// checks to resolve; the loader never reads them.
const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    char pattern[] = "/tmp/seqrec-fuzz-models-XXXXXX";
    if (!mkdtemp(pattern)) fail("mkdtemp failed");
    const std::filesystem::path made = std::filesystem::canonical(pattern);
    for (const char* name : {"sasrec.seqrec", "hstu.seqrec"}) std::ofstream(made / name).put('\n');
    std::atexit([] { std::error_code ignored; std::filesystem::remove_all(model_dir(), ignored); });
    return made;
  }();
  return dir;
}

struct Process {
  const bool verbose = std::getenv("SEQREC_FUZZ_VERBOSE") != nullptr;  // print each request's answer
  server::Metrics metrics;
  boost::asio::thread_pool blocking{kBlockingThreads};
  seqrec::LoadedModel sasrec, hstu;
  std::unique_ptr<seqrec::WorkerPool> workers;
  server::ModelLoader loader;

  Process() {
    sasrec = tiny_model(seqrec::testing::small_spec(12, 6, 8, 2), model_dir() / "sasrec.seqrec", 3.5);
    hstu = tiny_model(seqrec::testing::hstu_spec(12, 6, 8, 2), model_dir() / "hstu.seqrec", std::nullopt);
    workers = std::make_unique<seqrec::WorkerPool>(
        seqrec::WorkerPool::Options{.threads = 1, .max_batch = 64, .queue_capacity = 4096},
        [this](size_t size, double seconds) { metrics.observe_batch(size, seconds); });
    // A model's own path reloads it; any other path is refused as a missing file would be.
    // Nothing is read from disk. A path outside the model folder must never get this far.
    loader = [known = std::vector<seqrec::LoadedModel>{sasrec, hstu}](const std::string& path, const seqrec::items::ItemMetadata*) {
      const std::filesystem::path relative = std::filesystem::path(path).lexically_normal().lexically_relative(model_dir());
      if (relative.empty() || *relative.begin() == "..") fail("reload passed a path outside the model folder: " + path);
      for (const seqrec::LoadedModel& model : known)
        if (path == model.path) return model;
      throw seqrec::Error(path + ": cannot open: no such file");
    };
    metrics.queue_depth = [this] { return workers->queue_depth(); };
    metrics.model_labels = [] { return std::vector<std::string>{"block=\"fuzz\""}; };
  }
};

Process& process() {
  static Process* p = new Process();  // never destroyed: worker threads outlive any static order
  return *p;
}

// The reply, handed over from whichever thread answers.
struct ReplySlot {
  std::mutex mutex;
  std::condition_variable arrived;
  std::optional<HttpResponse> response;
  int calls = 0;
};

// Waits until every task posted to the blocking pool before now has finished: once all its
// threads sit in this barrier together, none is running anything else.
void drain_blocking_pool(boost::asio::thread_pool& pool) {
  auto barrier = std::make_shared<std::latch>(kBlockingThreads + 1);
  for (int i = 0; i < kBlockingThreads; ++i) boost::asio::post(pool, [barrier] { barrier->arrive_and_wait(); });
  barrier->arrive_and_wait();
}

// The service's options for this input. The access settings the service has grown (read key,
// protected reads, model folder) are set only when this version of ServiceOptions has them, so
// the fuzzer builds across its changes; "X-Fuzz-Protect-Reads: 1" turns protected reads on.
server::ServiceOptions service_options(const HttpRequest& request) {
  server::ServiceOptions options;
  options.api_key = "fuzz-key";
  if constexpr (requires { options.read_key = std::string(); }) options.read_key = std::string("fuzz-read-key");
  if constexpr (requires { options.protect_reads = true; }) {
    const auto protect = request.find("X-Fuzz-Protect-Reads");
    options.protect_reads = protect != request.end() && protect->value() == "1";
  }
  if constexpr (requires { options.model_dir = std::string(); }) options.model_dir = model_dir().string();
  return options;
}

std::optional<HttpRequest> parse_request(const uint8_t* data, size_t size) {
  http::request_parser<http::string_body> parser;
  parser.body_limit(kMaxBodyBytes);
  parser.header_limit(kHeaderLimit);
  parser.eager(true);
  boost::beast::error_code ec;
  boost::asio::const_buffer rest(data, size);
  while (rest.size() > 0 && !parser.is_done()) {
    const size_t used = parser.put(rest, ec);
    if (ec) return std::nullopt;  // refused, or ends before the request does (need_more)
    if (used == 0) break;
    rest += used;
  }
  if (!parser.is_done()) return std::nullopt;
  return parser.release();
}

void check_response(const HttpResponse& response, const std::string& target) {
  const unsigned status = response.result_int();
  if (status < 200 || status > 599) fail("status " + std::to_string(status) + " for " + target);
  if (status == 500) fail("500 for " + target + ": " + response.body());
  const auto type = response.find(http::field::content_type);
  const bool json = type != response.end() && type->value() == "application/json";
  if (json) seqrec::fuzz::require_valid_json(response.body(), "the body of the " + std::to_string(status) + " for " + target);
  if (status >= 400 && (!json || response.body().rfind("{\"error\": {", 0) != 0))
    fail("the " + std::to_string(status) + " for " + target + " is not an {\"error\": {...}} object: " + response.body());

  // What the session writes: serialized by Beast, it must read back as the same response.
  HttpResponse wire = response;
  wire.prepare_payload();
  std::ostringstream out;
  out << wire;
  const std::string bytes = out.str();
  http::response_parser<http::string_body> reader;
  reader.eager(true);
  boost::beast::error_code ec;
  reader.put(boost::asio::buffer(bytes), ec);
  if (ec || !reader.is_done() || reader.get().result_int() != status || reader.get().body() != response.body())
    fail("the " + std::to_string(status) + " for " + target + " does not read back as HTTP: " + ec.message());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  process();  // the models and threads, once, before the first input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::optional<HttpRequest> request = parse_request(data, size);
  if (!request) return 0;
  const std::string target(request->target());
  const std::string method(request->method_string());  // a copy: the request is moved on below

  Process& p = process();
  const auto model_header = request->find("X-Fuzz-Model");
  const bool hstu_first = model_header != request->end() && model_header->value() == "hstu";
  // A fresh store, registry and service per input, so an input replays alone exactly as it ran.
  // Both models are served (names "sasrec", "hstu"); the header picks the default.
  const std::unique_ptr<history::HistoryStore> store = history::make_memory_store(history::StoreOptions{});
  const server::ServiceOptions options = service_options(*request);
  std::vector<std::pair<std::string, seqrec::LoadedModel>> served;
  served.emplace_back("sasrec", p.sasrec);
  served.emplace_back("hstu", p.hstu);
  if (hstu_first) std::swap(served[0], served[1]);
  server::ModelRegistry models(std::move(served));
  server::Service service(options, *p.workers, models, *store, p.metrics, p.blocking, p.loader, {}, nullptr);
  service.load_popularity();  // the workers' cold-start counts: this (empty) store's

  auto slot = std::make_shared<ReplySlot>();
  service.handle(std::move(*request), [slot](HttpResponse response) {
    std::lock_guard lock(slot->mutex);
    if (++slot->calls == 1) slot->response = std::move(response);
    slot->arrived.notify_all();
  });
  {
    std::unique_lock lock(slot->mutex);
    if (!slot->arrived.wait_for(lock, kReplyTimeout, [&] { return slot->calls > 0; }))
      fail("no reply within " + std::to_string(kReplyTimeout.count()) + " s for " + target);
  }
  // The service, its store and the request must not be touched once this input returns.
  drain_blocking_pool(p.blocking);
  std::lock_guard lock(slot->mutex);
  if (slot->calls != 1) fail(std::to_string(slot->calls) + " replies for " + target);
  if (p.verbose)
    std::fprintf(stderr, "%s %s -> %u %s\n", method.c_str(), target.c_str(), slot->response->result_int(),
                 slot->response->body().substr(0, 300).c_str());
  check_response(*slot->response, target);
  return 0;
}
