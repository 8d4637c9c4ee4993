#include "server/http_server.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <cerrno>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <vector>

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
// A connection's read buffer beyond this after a request is given back (a large body or
// header grew it; the next request rarely needs it).
constexpr std::size_t kKeptBufferBytes = 64 * 1024;
// Connections over max_connections answered with one short reply at once; beyond this many
// they get a reply from whatever bytes already arrived, without a session (a flood must not
// get a session each).
constexpr int64_t kMaxOverflowSessions = 1024;
// Past kMaxOverflowSessions minus this, each new overflow connection closes the oldest silent one
// (an idle flood) to take its place; the slack covers the closes still on their way.
constexpr int64_t kOverflowEvictionSlack = 64;
constexpr auto kOverflowReadTimeout = std::chrono::milliseconds(200);
// At the descriptor limit, waiting connections shed per accept retry (10 ms apart): enough to
// keep the backlog short under a flood, so that health checks get through.
constexpr int kShedPerRetry = 1024;
// At the descriptor limit, connections that have not yet sent a whole request header closed
// per accept retry, oldest first, to make room for the connections waiting to be accepted.
constexpr int kEvictPerRetry = 256;
// Body bytes read (and reserved in the shared budget) at a time.
constexpr uint64_t kBodyChunk = 16 * 1024;
// After this many body bytes were received since the last trim, and once none is buffered,
// freed memory is returned to the OS (glibc keeps freed heap pages otherwise).
constexpr uint64_t kTrimAfterBytes = uint64_t{16} << 20;

class Session;

struct State {
  Options options;
  Handler handler;
  HeaderCheck check;
  Stats stats;
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> draining{false};
  std::atomic<int64_t> overflow_sessions{0};
  std::atomic<uint64_t> next_connection{1};
  std::atomic<uint64_t> body_bytes_since_trim{0};
  // Sessions accepted whose first request header has not arrived yet, oldest first: at the
  // descriptor limit these are closed to make room (an idle-connection flood must not lock
  // out the clients that talk). Guarded by silent_mutex, like each Session's place in it.
  std::mutex silent_mutex;
  std::list<std::weak_ptr<Session>> silent;
  // The same for the sessions over max_connections (answered once, then closed): when all
  // kMaxOverflowSessions are taken, the oldest silent one makes room for the newest, so a health
  // check that connects during an idle flood still gets its request read instead of a guess.
  std::list<std::weak_ptr<Session>> silent_overflow;

  bool reserve_body(uint64_t bytes) {
    const uint64_t before = stats.buffered_body_bytes.fetch_add(bytes);
    if (before + bytes > options.max_buffered_body_bytes) {
      stats.buffered_body_bytes.fetch_sub(bytes);
      return false;
    }
    body_bytes_since_trim += bytes;
    return true;
  }
  void release_body(uint64_t bytes) { stats.buffered_body_bytes.fetch_sub(bytes); }
  void log(const std::string& line) const {
    if (options.log) options.log(line);
  }
};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

std::string_view trimmed(boost::beast::string_view value) {
  std::string_view s(value.data(), value.size());
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  // `overflow`: a connection beyond max_connections, answered once and closed.
  Session(tcp::socket&& socket, std::shared_ptr<State> state, bool overflow)
      : stream_(std::move(socket)),
        wait_timer_(stream_.get_executor()),
        state_(std::move(state)),
        overflow_(overflow),
        connection_(overflow ? 0 : state_->next_connection.fetch_add(1, std::memory_order_relaxed)) {
    // Beast reads at most the buffer's free capacity per call (512 bytes when empty): room
    // for a typical request lets one recv take it whole instead of a dozen growing reads.
    buffer_.reserve(kReadChunk);
  }

  ~Session() {
    leave_silent();
    release_body();
    if (overflow_)
      --state_->overflow_sessions;
    else
      --state_->stats.open_connections;
  }

  void run() {
    {
      std::lock_guard lock(state_->silent_mutex);
      auto& silent = silent_list(*state_, overflow_);
      silent_place_ = silent.insert(silent.end(), weak_from_this());
      silent_ = true;
    }
    net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

  // Closes up to `count` of the oldest sessions still waiting for their first request header
  // (from the listener: regular ones at the descriptor limit, overflow ones when all overflow
  // places are taken) → how many were closed. Their descriptors are free once each session's
  // strand has run the close.
  static int evict_silent(State& state, int count, bool overflow) {
    std::vector<std::shared_ptr<Session>> victims;
    {
      std::lock_guard lock(state.silent_mutex);
      auto& silent = silent_list(state, overflow);
      for (auto it = silent.begin(); it != silent.end() && static_cast<int>(victims.size()) < count;) {
        auto session = it->lock();
        if (!session) {  // being destroyed: its destructor takes it off the list
          ++it;
          continue;
        }
        it = silent.erase(it);
        session->silent_ = false;
        victims.push_back(std::move(session));
      }
    }
    for (auto& session : victims) {
      net::post(session->stream_.get_executor(), [session] {
        ++session->state_->stats.evicted_connections;
        beast::error_code ignored;
        session->stream_.socket().close(ignored);  // the pending header read ends with operation_aborted
      });
    }
    return static_cast<int>(victims.size());
  }

 private:
  static std::list<std::weak_ptr<Session>>& silent_list(State& state, bool overflow) {
    return overflow ? state.silent_overflow : state.silent;
  }

  void leave_silent() {
    std::lock_guard lock(state_->silent_mutex);
    if (silent_) silent_list(*state_, overflow_).erase(silent_place_);
    silent_ = false;
  }

  void do_read() {
    if (state_->draining) return do_close();
    parser_.emplace();
    parser_->body_limit(state_->options.max_body_bytes);
    parser_->header_limit(overflow_ ? 8 * 1024 : 64 * 1024);
    if (overflow_)
      stream_.expires_after(kOverflowReadTimeout);
    else
      stream_.expires_after(state_->options.read_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::on_read_header, shared_from_this()));
  }

  void on_read_header(beast::error_code ec, std::size_t) {
    if (!spoken_) {  // the first header: off the list of silent sessions (under its lock)
      spoken_ = true;
      leave_silent();
    }
    // Beast itself compares Content-Length with the body limit while parsing the header.
    if (ec == http::error::body_limit) return refuse_oversized(parser_->content_length().value_or(0));
    if (ec) return on_read_error(ec);
    const auto& header = parser_->get();
    if (overflow_) return answer_overflow(header);
    // Bodies are taken as sent: a transfer or content coding we would have to undo is refused,
    // never silently ignored.
    if (auto te = header.find(http::field::transfer_encoding); te != header.end()) {
      if (!iequals(trimmed(te->value()), "chunked"))
        return refuse(http::status::unsupported_media_type, "unsupported_encoding",
                      "Transfer-Encoding: '" + std::string(te->value()) + "' is not supported (only chunked)");
    }
    if (auto ce = header.find(http::field::content_encoding); ce != header.end()) {
      if (!iequals(trimmed(ce->value()), "identity"))
        return refuse(http::status::unsupported_media_type, "unsupported_encoding",
                      "Content-Encoding: '" + std::string(ce->value()) + "' is not supported (send the body as is)");
    }
    if (state_->check) {
      if (std::optional<HttpResponse> refused = state_->check(header.base())) {
        refused->keep_alive(false);
        return send(std::move(*refused));
      }
    }
    // Decided from Content-Length before a byte of the body is read.
    const auto length = parser_->content_length();
    if (length && *length > state_->options.max_body_bytes) return refuse_oversized(*length);
    if (parser_->is_done()) return on_read({}, 0);
    do_read_body();
  }

  // The body piece by piece, each piece (at most kBodyChunk bytes) reserved in the shared
  // budget before it is read, and only once bytes are waiting: a Content-Length alone, or a
  // connection that goes quiet, holds no budget, so announcing bodies blocks no one.
  void do_read_body() {
    if (buffer_.size() > 0) return read_body_chunk();
    wait_timer_.expires_after(state_->options.read_timeout);
    wait_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return;  // cancelled: the bytes came
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);  // quiet for the whole read timeout
    });
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      self->wait_timer_.cancel();
      if (ec) return self->do_close();
      self->read_body_chunk();
    });
  }

  void read_body_chunk() {
    // A piece is at most kBodyChunk, and no more than the Content-Length still to come: a
    // small body reserves only its own size.
    const uint64_t body = parser_->get().body().size();
    uint64_t piece = kBodyChunk;
    if (const auto length = parser_->content_length(); length && *length > body)
      piece = std::min<uint64_t>(piece, *length - body);
    const uint64_t wanted = body + buffer_.size() + piece;
    if (wanted > reserved_) {
      if (!state_->reserve_body(wanted - reserved_)) {
        ++state_->stats.refused_bodies;
        return refuse(http::status::service_unavailable, "overloaded",
                      "too many request bodies being received at once; retry shortly");
      }
      reserved_ = wanted;
    }
    buffer_.max_size(buffer_.size() + piece);  // one read takes no more than was reserved
    http::async_read_some(stream_, buffer_, *parser_,
                          beast::bind_front_handler(&Session::on_read_body, shared_from_this()));
  }

  void on_read_body(beast::error_code ec, std::size_t) {
    buffer_.max_size(std::numeric_limits<std::size_t>::max());
    if (ec == http::error::body_limit) return refuse_oversized(0);
    if (ec) return on_read_error(ec);
    if (!parser_->is_done()) return do_read_body();
    on_read({}, 0);
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec == http::error::body_limit) return refuse_oversized(0);
    if (ec) return on_read_error(ec);
    HttpRequest request = parser_->release();
    parser_.reset();
    if (buffer_.capacity() > kKeptBufferBytes) buffer_.shrink_to_fit();
    const unsigned version = request.version();
    const bool keep_alive = request.keep_alive();
    head_ = request.method() == http::verb::head;
    stream_.expires_never();  // computing the answer is not a read; the timeout resumes with the next read
    ++state_->in_flight;
    auto self = shared_from_this();
    state_->handler(std::move(request), [self, version, keep_alive](HttpResponse response) {
      response.version(version);
      response.keep_alive(keep_alive && !self->state_->draining);
      self->answer_request(std::move(response));
    }, connection_);
  }

  // The answer to the request being handled, from whatever thread computed it (usually an
  // inference worker). While a request is handled the session has no operation pending on its
  // socket (the next read starts only after this answer is written), so the worker may write
  // it itself: one non-blocking send, and the client has its answer without waiting for the
  // I/O thread to wake up. What does not fit in the socket buffer (rare: answers are small) is
  // written by the strand as usual; the strand always takes over for what follows.
  void answer_request(HttpResponse response) {
    response.prepare_payload();
    if (head_) {  // HEAD: the headers GET would send (Content-Length included), no body
      const auto length = response.body().size();
      response.body().clear();
      response.content_length(length);
    }
    const bool close = !response.keep_alive();
    wire_.clear();
    http::serializer<false, http::string_body> serializer(response);
    beast::error_code ec;
    while (!ec && !serializer.is_done()) {
      serializer.next(ec, [&](beast::error_code&, const auto& buffers) {
        for (const auto buffer : beast::buffers_range_ref(buffers))
          wire_.append(static_cast<const char*>(buffer.data()), buffer.size());
        serializer.consume(beast::buffer_bytes(buffers));
      });
    }
    size_t sent = 0;
    int send_error = 0;
    while (!ec && sent < wire_.size()) {
      const ssize_t n = ::send(stream_.socket().native_handle(), wire_.data() + sent, wire_.size() - sent,
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        send_error = n < 0 ? errno : EPIPE;
        break;
      }
    }
    net::post(stream_.get_executor(), [self = shared_from_this(), close, sent, send_error]() {
      if (send_error && send_error != EAGAIN && send_error != EWOULDBLOCK)
        return self->on_write(close, true, beast::error_code(send_error, beast::system_category()), sent);
      if (sent == self->wire_.size()) return self->on_write(close, true, {}, sent);
      // The socket buffer was full: the rest goes out asynchronously, with the write timeout.
      self->stream_.expires_after(self->state_->options.read_timeout);
      net::async_write(self->stream_, net::buffer(self->wire_.data() + sent, self->wire_.size() - sent),
                       beast::bind_front_handler(&Session::on_write, self, close, true));
    });
  }

  // Over max_connections: health checks still answered, everything else told to come back.
  void answer_overflow(const http::request_parser<http::string_body>::value_type& header) {
    std::string_view target(header.target().data(), header.target().size());
    const bool health = (header.method() == http::verb::get || header.method() == http::verb::head) &&
                        target.substr(0, target.find('?')) == "/healthz";
    if (health) return send(json_response(http::status::ok, R"({"status": "ok"})", 11, false));
    refuse(http::status::service_unavailable, "overloaded",
           "too many connections (--max-connections " + std::to_string(state_->options.max_connections) +
               "); retry shortly");
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof)
      return do_close();
    if (ec.category() == beast::error_code(http::error::bad_method).category()) {
      // The bytes were not HTTP: say so once, then hang up.
      return refuse(http::status::bad_request, "bad_request", "malformed HTTP request: " + ec.message());
    }
    do_close();
  }

  void refuse(http::status status, const std::string& code, const std::string& message) {
    parser_.reset();  // a refused request's body is not needed any more
    buffer_.consume(buffer_.size());
    buffer_.shrink_to_fit();
    release_body();
    send(error_response(status, code, message, 11, false));
  }

  void refuse_oversized(uint64_t length) {
    const std::string limit = std::to_string(state_->options.max_body_bytes);
    refuse(http::status::payload_too_large, "payload_too_large",
           length ? "body: Content-Length " + std::to_string(length) + " exceeds the limit of " + limit + " bytes"
                  : "body: exceeds the limit of " + limit + " bytes");
  }

  // `answers_request`: this write completes a request counted in in_flight (the drain on
  // shutdown waits until the answer is written, not merely computed).
  void send(HttpResponse response, bool answers_request = false) {
    response_ = std::move(response);
    response_.prepare_payload();
    if (head_ && answers_request) {
      // HEAD: the headers GET would send (Content-Length included), no body.
      const auto length = response_.body().size();
      response_.body().clear();
      response_.content_length(length);
    }
    stream_.expires_after(state_->options.read_timeout);
    http::async_write(stream_, response_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this(), !response_.keep_alive(),
                                                answers_request));
  }

  void on_write(bool close, bool answers_request, beast::error_code ec, std::size_t) {
    if (answers_request) --state_->in_flight;
    release_body();
    response_ = {};  // the answer's memory goes now, not when the next one replaces it
    if (wire_.capacity() > kKeptBufferBytes) std::string().swap(wire_);
    head_ = false;
    if (ec) return;
    if (close) return do_close();
    do_read();
  }

  void release_body() {
    if (reserved_) state_->release_body(reserved_);
    reserved_ = 0;
  }

  // Half-close, then let the peer finish sending (an unread body would otherwise turn our
  // close into a reset that can destroy the answer before the client reads it).
  void do_close() {
    // What the request held goes now, with its budget: the session may live on a while to
    // drain what the peer still sends.
    parser_.reset();
    buffer_.consume(buffer_.size());
    buffer_.shrink_to_fit();
    release_body();
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
  net::steady_timer wait_timer_;  // bounds the wait for a body's next bytes
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpResponse response_;
  std::string wire_;  // a handled request's answer as bytes (answer_request)
  std::shared_ptr<State> state_;
  const bool overflow_;
  const uint64_t connection_;  // this connection's number for the handler (0: overflow, never handled)
  bool head_ = false;
  uint64_t reserved_ = 0;  // body bytes reserved in State for the request being read
  char drain_buffer_[8192];
  uint64_t drained_ = 0;
  // This session's entry in State::silent (or silent_overflow) until its first request header is read (both
  // guarded by State::silent_mutex).
  std::list<std::weak_ptr<Session>>::iterator silent_place_;
  bool silent_ = false;
  bool spoken_ = false;  // a request header was read (the session's strand only)
};

}  // namespace

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::io_context& ioc, std::shared_ptr<State> state)
      : ioc_(ioc), acceptor_(net::make_strand(ioc)), retry_(acceptor_.get_executor()), trim_(acceptor_.get_executor()),
        state_(state) {
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
    // Held back for the moment every descriptor is taken: closing it lets us accept (and
    // close) one waiting connection instead of leaving accept() failing in a loop.
    reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }

  ~Listener() {
    if (reserve_fd_ >= 0) ::close(reserve_fd_);
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::shared_ptr<State> state() const { return state_; }

  void run() {
    do_accept();
    schedule_trim();
  }

  void stop() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      self->acceptor_.close(ec);
      self->retry_.cancel();
      self->trim_.cancel();
    });
  }

 private:
  void do_accept() {
    acceptor_.async_accept(net::make_strand(ioc_), beast::bind_front_handler(&Listener::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) return on_accept_error(ec);
    socket.set_option(tcp::no_delay(true), ec);  // small JSON answers must not wait for Nagle
    Stats& stats = state_->stats;
    if (stats.open_connections.load() < state_->options.max_connections) {
      ++stats.open_connections;
      std::make_shared<Session>(std::move(socket), state_, false)->run();
    } else {
      ++stats.refused_connections;
      const int64_t overflow = state_->overflow_sessions.fetch_add(1);
      if (overflow < kMaxOverflowSessions - kOverflowEvictionSlack ||
          (overflow < kMaxOverflowSessions && Session::evict_silent(*state_, 1, true) > 0)) {
        std::make_shared<Session>(std::move(socket), state_, true)->run();
      } else {
        --state_->overflow_sessions;
        answer_briefly(socket.native_handle());  // whatever request already arrived gets its short answer
        beast::error_code ignored;
        socket.close(ignored);
      }
      log_limited("connection refused: " + std::to_string(state_->options.max_connections) +
                  " connections open (--max-connections)");
    }
    do_accept();
  }

  // accept() failing must never become a busy loop. At the descriptor limit (EMFILE/ENFILE)
  // room is made first by closing the oldest connections that have not sent a whole request
  // header yet (an idle flood, a slowloris): the connections waiting behind them, health checks
  // among them, then get real sessions. With no such connection to close, the reserve
  // descriptor lets us take waiting connections one at a time and answer each briefly (its
  // client gets an answer rather than a hang). Accepting resumes after a pause.
  void on_accept_error(beast::error_code ec) {
    ++state_->stats.accept_errors;
    const bool out_of_descriptors = ec == net::error::no_descriptors || ec.value() == ENFILE;
    log_limited("accept failed: " + ec.message() +
                (out_of_descriptors ? " (at the file-descriptor limit: raise `ulimit -n` or lower --max-connections)"
                                    : ""));
    auto pause = std::chrono::milliseconds(10);
    if (out_of_descriptors && Session::evict_silent(*state_, kEvictPerRetry, false) > 0) {
      pause = std::chrono::milliseconds(2);  // the closes run on the sessions' strands first
    } else if (out_of_descriptors && reserve_fd_ >= 0) {
      ::close(reserve_fd_);
      // Shed the waiting connections one descriptor at a time, each with a one-line answer:
      // health checks still get their 200, everyone else a 503 instead of a hang.
      for (int shed = 0; shed < kShedPerRetry; ++shed) {
        const int fd = ::accept4(acceptor_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        answer_briefly(fd);
        ::close(fd);
      }
      reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    retry_.expires_after(pause);
    retry_.async_wait([self = shared_from_this()](beast::error_code wait_ec) {
      if (!wait_ec && self->acceptor_.is_open()) self->do_accept();
    });
  }

  // No room for a session (over the caps, or at the descriptor limit): whatever request already
  // arrived is peeked at, /healthz gets 200, anything else 503. The caller closes the socket.
  static void answer_briefly(int fd) {
    // Never waited for: under a flood the connection has usually sat in the backlog long
    // enough for its request line to be there, and waiting would slow the shedding down.
    char request[256];
    const ssize_t n = ::recv(fd, request, sizeof request, MSG_DONTWAIT);
    const std::string_view seen(request, n > 0 ? static_cast<size_t>(n) : 0);
    const bool health = seen.starts_with("GET /healthz ") || seen.starts_with("HEAD /healthz ");
    auto reply = [](std::string_view status, std::string_view body) {
      return "HTTP/1.1 " + std::string(status) + "\r\nServer: seqrec\r\nContent-Type: application/json\r\n" +
             "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
    };
    static const std::string kHealthy = reply("200 OK", R"({"status": "ok"})");
    static const std::string kBusy =
        reply("503 Service Unavailable",
              R"({"error": {"code": "overloaded", "message": "too many connections open; retry shortly"}})");
    const std::string_view answer = health ? kHealthy : kBusy;
    if (seen.starts_with("HEAD ")) {
      const std::string_view head = answer.substr(0, answer.find("\r\n\r\n") + 4);
      (void)!::send(fd, head.data(), head.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
      (void)!::send(fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  }

  // One line per kind of event per 10 s at most: a flood must not flood the log too.
  void log_limited(const std::string& line) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_log_ < std::chrono::seconds(10)) {
      ++suppressed_;
      return;
    }
    state_->log(line + (suppressed_ ? " (" + std::to_string(suppressed_) + " similar events not logged)" : ""));
    suppressed_ = 0;
    last_log_ = now;
  }

  // After a burst of bodies has been received and none is buffered any more, hand the freed
  // heap back to the OS so that RSS falls back instead of staying at the burst's peak.
  void schedule_trim() {
    trim_.expires_after(std::chrono::seconds(1));
    trim_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->acceptor_.is_open()) return;
      State& s = *self->state_;
      if (s.body_bytes_since_trim.load() > kTrimAfterBytes && s.stats.buffered_body_bytes.load() == 0) {
        s.body_bytes_since_trim = 0;
        ::malloc_trim(0);
        ++s.stats.memory_trims;
      }
      self->schedule_trim();
    });
  }

  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  net::steady_timer retry_;
  net::steady_timer trim_;
  std::shared_ptr<State> state_;
  int reserve_fd_ = -1;
  std::chrono::steady_clock::time_point last_log_{};
  uint64_t suppressed_ = 0;
};

HttpServer::HttpServer(net::io_context& ioc, Options options, Handler handler, HeaderCheck check) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->handler = std::move(handler);
  state->check = std::move(check);
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
const Stats& HttpServer::stats() const { return listener_->state()->stats; }

}  // namespace seqrec::http_server
