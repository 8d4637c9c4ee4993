#include "server/http_server.h"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <optional>

#include "engine/error.h"
#include "server/json_io.h"

namespace seqrec::http_server {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

HttpResponse json_response(http::status status, std::string body, unsigned version, bool keep_alive) {
  HttpResponse res{status, version};
  res.set(http::field::server, "seqrec");
  res.set(http::field::content_type, "application/json");
  res.keep_alive(keep_alive);
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

HttpResponse error_response(http::status status, const std::string& code, const std::string& message,
                            unsigned version, bool keep_alive) {
  return json_response(status, api::write_error(code, message), version, keep_alive);
}

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;

struct State {
  Options options;
  Handler handler;
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> draining{false};
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<State> state) : stream_(std::move(socket)), state_(std::move(state)) {
    // Beast reads at most the buffer's free capacity per call (512 bytes when empty): room
    // for a typical request lets one recv take it whole instead of a dozen growing reads.
    buffer_.reserve(kReadChunk);
  }

  void run() { net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this())); }

 private:
  void do_read() {
    if (state_->draining) return do_close();
    parser_.emplace();
    parser_->body_limit(state_->options.max_body_bytes);
    parser_->header_limit(64 * 1024);
    stream_.expires_after(state_->options.read_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::on_read_header, shared_from_this()));
  }

  void on_read_header(beast::error_code ec, std::size_t) {
    // Beast itself compares Content-Length with the body limit while parsing the header.
    if (ec == http::error::body_limit) return refuse_oversized(parser_->content_length().value_or(0));
    if (ec) return on_read_error(ec);
    // Decided from Content-Length before a byte of the body is read.
    if (auto length = parser_->content_length(); length && *length > state_->options.max_body_bytes)
      return refuse_oversized(*length);
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec == http::error::body_limit) return refuse_oversized(0);
    if (ec) return on_read_error(ec);
    HttpRequest request = parser_->release();
    const unsigned version = request.version();
    const bool keep_alive = request.keep_alive();
    stream_.expires_never();  // computing the answer is not a read; the timeout resumes with the next read
    ++state_->in_flight;
    auto self = shared_from_this();
    state_->handler(std::move(request), [self, version, keep_alive](HttpResponse response) {
      net::post(self->stream_.get_executor(), [self, version, keep_alive, response = std::move(response)]() mutable {
        response.version(version);
        response.keep_alive(keep_alive && !self->state_->draining);
        self->send(std::move(response), true);
      });
    });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof)
      return do_close();
    if (ec.category() == beast::error_code(http::error::bad_method).category()) {
      // The bytes were not HTTP: say so once, then hang up.
      return send(error_response(http::status::bad_request, "bad_request", "malformed HTTP request: " + ec.message(),
                                 11, false));
    }
    do_close();
  }

  void refuse_oversized(uint64_t length) {
    const std::string limit = std::to_string(state_->options.max_body_bytes);
    send(error_response(http::status::payload_too_large, "payload_too_large",
                        length ? "body: Content-Length " + std::to_string(length) + " exceeds the limit of " + limit +
                                     " bytes"
                               : "body: exceeds the limit of " + limit + " bytes",
                        11, false));
  }

  // `answers_request`: this write completes a request counted in in_flight (the drain on
  // shutdown waits until the answer is written, not merely computed).
  void send(HttpResponse response, bool answers_request = false) {
    response_ = std::move(response);
    response_.prepare_payload();
    stream_.expires_after(state_->options.read_timeout);
    http::async_write(stream_, response_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this(), !response_.keep_alive(),
                                                answers_request));
  }

  void on_write(bool close, bool answers_request, beast::error_code ec, std::size_t) {
    if (answers_request) --state_->in_flight;
    if (ec) return;
    if (close) return do_close();
    do_read();
  }

  // Half-close, then let the peer finish sending (an unread body would otherwise turn our
  // close into a reset that can destroy the answer before the client reads it).
  void do_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    drained_ = 0;
    stream_.expires_after(std::chrono::seconds(2));
    do_drain();
  }

  void do_drain() {
    stream_.async_read_some(net::buffer(drain_buffer_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->drained_ += n;
      if (ec || self->drained_ > (64u << 20)) {
        beast::error_code ignored;
        self->stream_.socket().close(ignored);
        return;
      }
      self->do_drain();
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpResponse response_;
  std::shared_ptr<State> state_;
  char drain_buffer_[8192];
  uint64_t drained_ = 0;
};

}  // namespace

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::io_context& ioc, std::shared_ptr<State> state) : ioc_(ioc), acceptor_(net::make_strand(ioc)), state_(state) {
    beast::error_code ec;
    const std::string where = state->options.bind + ":" + std::to_string(state->options.port);
    const auto address = net::ip::make_address(state->options.bind, ec);
    if (ec) throw Error("--bind: '" + state->options.bind + "' is not an IP address");
    const tcp::endpoint endpoint{address, state->options.port};
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw Error("cannot listen on " + where + ": " + ec.message());
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::shared_ptr<State> state() const { return state_; }

  void run() { do_accept(); }

  void stop() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      self->acceptor_.close(ec);
    });
  }

 private:
  void do_accept() {
    acceptor_.async_accept(net::make_strand(ioc_), beast::bind_front_handler(&Listener::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      socket.set_option(tcp::no_delay(true), ec);  // small JSON answers must not wait for Nagle
      std::make_shared<Session>(std::move(socket), state_)->run();
    }
    do_accept();
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  std::shared_ptr<State> state_;
};

HttpServer::HttpServer(net::io_context& ioc, Options options, Handler handler) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->handler = std::move(handler);
  listener_ = std::make_shared<Listener>(ioc, state);
}

HttpServer::~HttpServer() = default;

uint16_t HttpServer::port() const { return listener_->port(); }
void HttpServer::start() { listener_->run(); }

void HttpServer::stop_accepting() {
  listener_->state()->draining = true;
  listener_->stop();
}

int64_t HttpServer::in_flight() const { return listener_->state()->in_flight; }

}  // namespace seqrec::http_server
