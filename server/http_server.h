// The HTTP front end on Boost.Beast, shaped like Beast's http_server_async /
// advanced_server examples: a listener accepts, one session per connection reads a
// request (header first, so an oversized Content-Length is refused before the body is
// read), hands it to the handler, writes the reply, and loops for keep-alive. Every read
// has a timeout; sessions run on their own strand. The handler may answer from any thread:
// the reply is posted back to the session's strand.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace seqrec::http_server {

namespace http = boost::beast::http;
using HttpRequest = http::request<http::string_body>;
using HttpResponse = http::response<http::string_body>;
// Call exactly once, from any thread.
using Reply = std::function<void(HttpResponse)>;
using Handler = std::function<void(HttpRequest&& request, Reply reply)>;

struct Options {
  std::string bind = "127.0.0.1";
  uint16_t port = 8080;  // 0 = any free port (tests)
  uint64_t max_body_bytes = 1 << 20;
  std::chrono::seconds read_timeout{30};
};

// {"error": {"code", "message"}} with the given status, as every non-2xx answer.
HttpResponse error_response(http::status status, const std::string& code, const std::string& message,
                            unsigned version = 11, bool keep_alive = true);
HttpResponse json_response(http::status status, std::string body, unsigned version = 11, bool keep_alive = true);

class Listener;

class HttpServer {
 public:
  // Binds and listens at once (throws seqrec::Error naming the address on failure).
  HttpServer(boost::asio::io_context& ioc, Options options, Handler handler);
  ~HttpServer();

  uint16_t port() const;  // the bound port
  void start();           // begin accepting
  // Stop accepting; connections finish the request they are on and close.
  void stop_accepting();
  // Requests read but not yet answered.
  int64_t in_flight() const;

 private:
  std::shared_ptr<Listener> listener_;
};

}  // namespace seqrec::http_server
