// The HTTP front end on Boost.Beast, shaped like Beast's http_server_async /
// advanced_server examples: a listener accepts, one session per connection reads a
// request (header first, so an oversized Content-Length is refused before the body is
// read), hands it to the handler, writes the reply, and loops for keep-alive. Every read
// has a timeout; sessions run on their own strand. The handler may answer from any thread:
// the reply is posted back to the session's strand.
//
// Bounded by construction: a cap on connections, a cap on body bytes being received across
// all of them, a header check that can refuse before the body is read (auth), accept() errors
// (EMFILE at the descriptor limit) backed off with a reserve descriptor instead of spinning,
// and memory given back to the OS after bursts.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace seqrec::http_server {

namespace http = boost::beast::http;
using HttpRequest = http::request<http::string_body>;
using HttpResponse = http::response<http::string_body>;
// Call exactly once, from any thread.
using Reply = std::function<void(HttpResponse)>;
// `connection` numbers the connection the request came on (1, 2, ...; never reused while the
// server runs): requests with the same number came from the same client, one after another.
using Handler = std::function<void(HttpRequest&& request, Reply reply, uint64_t connection)>;

struct Options {
  std::string bind = "127.0.0.1";
  uint16_t port = 8080;  // 0 = any free port (tests)
  uint64_t max_body_bytes = 1 << 20;
  std::chrono::seconds read_timeout{30};
  // Open connections served normally. Beyond it a connection gets one short answer (GET
  // /healthz: 200, anything else: 503 overloaded) and is closed, so that idle or slow clients
  // cannot exhaust memory or descriptors, and health checks still get through.
  int64_t max_connections = 4096;
  // Bytes of request bodies being received at once, over every connection (a body reserves its
  // Content-Length, or max_body_bytes when chunked, once its header is read). Beyond it: 503.
  uint64_t max_buffered_body_bytes = uint64_t{64} << 20;
  // One line for the server's log (accept errors, refusals), rate-limited by the caller's side.
  std::function<void(const std::string&)> log;
};

// What the front end did, for /metrics. Every field is read while the server runs.
struct Stats {
  std::atomic<int64_t> open_connections{0};
  std::atomic<uint64_t> refused_connections{0};  // over max_connections
  std::atomic<uint64_t> refused_bodies{0};       // over max_buffered_body_bytes
  std::atomic<uint64_t> accept_errors{0};        // accept() failed (EMFILE, ENFILE, ENOBUFS, ...)
  std::atomic<uint64_t> evicted_connections{0};  // closed before their first request, at the fd limit
  std::atomic<uint64_t> buffered_body_bytes{0};  // reserved by bodies being received now
  std::atomic<uint64_t> memory_trims{0};         // malloc_trim calls after bursts
};

// Called once a request's header is read, before its body: an answer here (e.g. 401 for a
// route that needs a key the header does not carry) is sent at once and the body never read.
using HeaderCheck = std::function<std::optional<HttpResponse>(const http::request_header<>& header)>;

// {"error": {"code", "message"}} with the given status, as every non-2xx answer.
HttpResponse error_response(http::status status, const std::string& code, const std::string& message,
                            unsigned version = 11, bool keep_alive = true);
HttpResponse json_response(http::status status, std::string body, unsigned version = 11, bool keep_alive = true);

class Listener;

class HttpServer {
 public:
  // Binds and listens at once (throws seqrec::Error naming the address on failure).
  HttpServer(boost::asio::io_context& ioc, Options options, Handler handler, HeaderCheck check = nullptr);
  ~HttpServer();

  uint16_t port() const;  // the bound port
  void start();           // begin accepting
  // Stop accepting; connections finish the request they are on and close.
  void stop_accepting();
  // Requests read but not yet answered.
  int64_t in_flight() const;
  const Stats& stats() const;

 private:
  std::shared_ptr<Listener> listener_;
};

}  // namespace seqrec::http_server
