// The shared store: many `seqrec serve` replicas behind one Redis.
//   seqrec:h:<user id>    a list, one element per interaction (encoding.h), oldest first;
//                         appended with RPUSH + LTRIM in one MULTI/EXEC (one key, so a
//                         Redis Cluster slot holds a user's whole history)
//   seqrec:item_counts    a hash item id → count of the stored interactions with that item:
//                         HINCRBY, pipelined, after the EXEC that told which interactions
//                         went in and which the cap trimmed (a separate key, so never inside
//                         the MULTI: Cluster-safe); erasing a user subtracts their items
// Connections come from a small pool; each has 1 s connect and command timeouts. A connection
// error is StoreUnavailable and that connection (and every idle one, likely as stale) is
// dropped, so the next call connects afresh: the server recovers by itself when Redis is back.
#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <mutex>
#include <unordered_map>

#include "server/history/backends.h"
#include "server/history/encoding.h"

namespace seqrec::history {
namespace {

constexpr timeval kConnectTimeout{1, 0};
constexpr timeval kCommandTimeout{1, 0};
constexpr size_t kMaxIdleConnections = 16;
// append_many sends users in pipelined groups of at most this many users / bytes.
constexpr size_t kUsersPerPipeline = 1000;
constexpr size_t kBytesPerPipeline = size_t{8} << 20;
const std::string kUserKeyPrefix = "seqrec:h:";
const std::string kItemCountsKey = "seqrec:item_counts";

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;

// One command as binary-safe arguments (the argv form of hiredis: explicit lengths, like %b).
class Command {
 public:
  Command& arg(const char* a) { return arg(std::string_view(a)); }
  Command& arg(std::string_view a) {
    storage_.emplace_back(a);
    return *this;
  }
  Command& arg(std::string&& a) {
    storage_.push_back(std::move(a));
    return *this;
  }
  void append_to(redisContext* c) const {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    argv.reserve(storage_.size());
    lengths.reserve(storage_.size());
    for (const std::string& s : storage_) {
      argv.push_back(s.data());
      lengths.push_back(s.size());
    }
    redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data());
  }
  size_t bytes() const {
    size_t n = 0;
    for (const std::string& s : storage_) n += s.size() + 16;
    return n;
  }

 private:
  std::vector<std::string> storage_;
};

class RedisStore final : public HistoryStore {
 public:
  RedisStore(std::string host, int port, int db, const StoreOptions& options)
      : host_(std::move(host)),
        port_(port),
        db_(db),
        max_per_user_(std::max<int64_t>(options.max_per_user, 1)),
        description_("redis://" + (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" +
                     std::to_string(port_) + "/" + std::to_string(db_)),
        log_(options.log) {}

  std::vector<Interaction> get(std::string_view user_id) override {
    Lease c = acquire();
    c.send(Command().arg("LRANGE").arg(user_key(user_id)).arg("0").arg("-1"));
    Reply reply = c.receive();
    expect(reply, REDIS_REPLY_ARRAY, "LRANGE");
    std::vector<Interaction> out;
    out.reserve(reply->elements);
    for (size_t i = 0; i < reply->elements; ++i) {
      const redisReply* e = reply->element[i];
      if (e->type != REDIS_REPLY_STRING)
        throw Error(description_ + ": user " + printable_id(user_id) + ": a history element is not a string");
      try {
        decode_history({e->str, e->len}, out);
      } catch (const Error& error) {
        throw Error(description_ + ": user " + printable_id(user_id) + ": element " + std::to_string(i) + ": " +
                    error.what());
      }
    }
    c.release();
    return out;
  }

  void append(std::string_view user_id, std::span<const Interaction> interactions) override {
    if (interactions.empty()) return;
    Lease c = acquire();
    CountDeltas deltas;
    send_append(c, user_id, interactions);
    receive_append(c, user_id, interactions, deltas);
    // Counted only once the history took them (a refused append counts nothing).
    send_counts(c, deltas);
    receive_counts(c, deltas.size());
    c.release();
  }

  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    size_t begin = 0;
    while (begin < users.size()) {
      Lease c = acquire();
      CountDeltas deltas;
      size_t end = begin, bytes = 0;
      while (end < users.size() && end - begin < kUsersPerPipeline && bytes < kBytesPerPipeline) {
        if (!users[end].second.empty()) bytes += send_append(c, users[end].first, users[end].second);
        ++end;
      }
      for (size_t i = begin; i < end; ++i)
        if (!users[i].second.empty()) receive_append(c, users[i].first, users[i].second, deltas);
      send_counts(c, deltas);
      receive_counts(c, deltas.size());
      c.release();
      begin = end;
    }
  }

  // The history and its contribution to the item counts go together (a right-to-erasure
  // request leaves nothing behind): the list is read and deleted in one MULTI, then its
  // items are subtracted from the counts.
  bool erase(std::string_view user_id) override {
    const std::string key = user_key(user_id);
    Lease c = acquire();
    c.send(Command().arg("MULTI"));
    c.send(Command().arg("LRANGE").arg(key).arg("0").arg("-1"));
    c.send(Command().arg("DEL").arg(key));
    c.send(Command().arg("EXEC"));
    c.receive();  // +OK to MULTI
    c.receive();  // +QUEUED to LRANGE
    c.receive();  // +QUEUED to DEL
    Reply exec = c.receive();
    expect(exec, REDIS_REPLY_ARRAY, "EXEC");
    if (exec->elements != 2 || exec->element[0]->type != REDIS_REPLY_ARRAY ||
        exec->element[1]->type != REDIS_REPLY_INTEGER)
      throw Error(description_ + ": user " + printable_id(user_id) + ": unexpected reply to LRANGE + DEL");
    CountDeltas deltas;
    subtract_elements(user_id, exec->element[0], deltas);
    const bool existed = exec->element[1]->integer > 0;
    send_counts(c, deltas);
    receive_counts(c, deltas.size());
    c.release();
    return existed;
  }

  std::vector<std::pair<std::string, uint64_t>> item_counts() override {
    // HSCAN rather than HGETALL: a large hash is read in steps without blocking Redis.
    // SCAN may return a field twice; the map keeps one.
    std::unordered_map<std::string, uint64_t> counts;
    Lease c = acquire();
    std::string cursor = "0";
    do {
      c.send(Command().arg("HSCAN").arg(kItemCountsKey).arg(cursor).arg("COUNT").arg("1000"));
      Reply reply = c.receive();
      expect(reply, REDIS_REPLY_ARRAY, "HSCAN");
      if (reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
          reply->element[1]->type != REDIS_REPLY_ARRAY || reply->element[1]->elements % 2 != 0)
        throw Error(description_ + ": unexpected HSCAN reply");
      cursor.assign(reply->element[0]->str, reply->element[0]->len);
      const redisReply* fields = reply->element[1];
      for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply* id = fields->element[i];
        const redisReply* n = fields->element[i + 1];
        if (id->type != REDIS_REPLY_STRING || n->type != REDIS_REPLY_STRING)
          throw Error(description_ + ": unexpected HSCAN reply");
        int64_t value = 0;
        const auto [end, ec] = std::from_chars(n->str, n->str + n->len, value);
        if (ec != std::errc() || end != n->str + n->len)
          throw Error(description_ + ": " + kItemCountsKey + " field " + printable_id({id->str, id->len}) +
                      ": count " + printable_id({n->str, n->len}) + " is not an integer");
        // 0 (or less, had a count been edited by hand): no stored interaction left.
        if (value > 0) counts[std::string(id->str, id->len)] = static_cast<uint64_t>(value);
        else counts.erase(std::string(id->str, id->len));
      }
    } while (cursor != "0");
    c.release();
    std::vector<std::pair<std::string, uint64_t>> out(counts.begin(), counts.end());
    sort_item_counts(out);
    return out;
  }

  bool ready() override {
    try {
      Lease c = acquire();
      c.send(Command().arg("PING"));
      Reply reply = c.receive();
      if (reply->type != REDIS_REPLY_STATUS || std::string_view(reply->str, reply->len) != "PONG") return false;
      c.release();
      return true;
    } catch (...) {
      return false;
    }
  }

  std::string describe() const override { return description_; }

 private:
  // A connection borrowed from the pool. It goes back only through release(), after a
  // complete exchange; on any exception it is closed (its replies may be out of step).
  class Lease {
   public:
    Lease(RedisStore& store, Context c) : store_(store), c_(std::move(c)) {}
    Lease(Lease&&) = default;
    ~Lease() = default;

    void send(const Command& command) { command.append_to(c_.get()); }

    Reply receive() {
      void* raw = nullptr;
      if (redisGetReply(c_.get(), &raw) != REDIS_OK || raw == nullptr) {
        const std::string reason = c_->errstr[0] ? c_->errstr : "connection lost";
        c_.reset();
        store_.drop_idle();
        store_.mark_down(reason);
        throw StoreUnavailable(store_.description_ + ": " + reason);
      }
      Reply reply(static_cast<redisReply*>(raw));
      if (reply->type == REDIS_REPLY_ERROR)
        throw Error(store_.description_ + ": redis error: " + std::string(reply->str, reply->len));
      return reply;
    }

    void release() { store_.give_back(std::move(c_)); }

   private:
    RedisStore& store_;
    Context c_;
  };

  std::string user_key(std::string_view user_id) const {
    std::string key = kUserKeyPrefix;
    key.append(user_id);
    return key;
  }

  void expect(const Reply& reply, int type, const char* command) const {
    if (reply->type != type)
      throw Error(description_ + ": unexpected reply type " + std::to_string(reply->type) + " to " + command);
  }

  // Item id → change of its count.
  using CountDeltas = std::unordered_map<std::string, int64_t>;

  // Queues MULTI, RPUSH, LRANGE (what the cap will trim), LTRIM, EXEC for one user; returns
  // the bytes queued.
  size_t send_append(Lease& c, std::string_view user_id, std::span<const Interaction> interactions) {
    const std::string key = user_key(user_id);
    Command rpush;
    rpush.arg("RPUSH").arg(key);
    for (const Interaction& it : interactions) rpush.arg(encode_history({&it, 1}));
    c.send(Command().arg("MULTI"));
    c.send(rpush);
    c.send(Command().arg("LRANGE").arg(key).arg("0").arg(std::to_string(-max_per_user_ - 1)));
    c.send(Command().arg("LTRIM").arg(key).arg(std::to_string(-max_per_user_)).arg("-1"));
    c.send(Command().arg("EXEC"));
    return rpush.bytes();
  }

  // Reads the EXEC of send_append; the appended items count up and the trimmed ones down.
  void receive_append(Lease& c, std::string_view user_id, std::span<const Interaction> interactions,
                      CountDeltas& deltas) {
    c.receive();  // +OK to MULTI
    c.receive();  // +QUEUED to RPUSH
    c.receive();  // +QUEUED to LRANGE
    c.receive();  // +QUEUED to LTRIM
    Reply exec = c.receive();
    expect(exec, REDIS_REPLY_ARRAY, "EXEC");
    for (size_t i = 0; i < exec->elements; ++i)
      if (exec->element[i]->type == REDIS_REPLY_ERROR)
        throw Error(description_ + ": user " + printable_id(user_id) + ": redis error: " +
                    std::string(exec->element[i]->str, exec->element[i]->len));
    if (exec->elements != 3 || exec->element[1]->type != REDIS_REPLY_ARRAY)
      throw Error(description_ + ": user " + printable_id(user_id) + ": unexpected reply to RPUSH + LRANGE + LTRIM");
    for (const Interaction& it : interactions) ++deltas[it.item_id];
    subtract_elements(user_id, exec->element[1], deltas);
  }

  // Subtracts the items of stored list elements (an LRANGE reply) from the counts.
  void subtract_elements(std::string_view user_id, const redisReply* elements, CountDeltas& deltas) const {
    std::vector<Interaction> removed;
    for (size_t i = 0; i < elements->elements; ++i) {
      const redisReply* e = elements->element[i];
      removed.clear();
      try {
        if (e->type != REDIS_REPLY_STRING) throw Error("not a string");
        decode_history({e->str, e->len}, removed);
      } catch (const Error&) {
        // The history is already gone or trimmed; an unreadable element's item cannot be
        // known, so its count stays (the only loss is that item's popularity, by one).
        continue;
      }
      for (const Interaction& it : removed) --deltas[it.item_id];
    }
  }

  void send_counts(Lease& c, CountDeltas& deltas) {
    std::erase_if(deltas, [](const auto& entry) { return entry.second == 0; });
    for (const auto& [item_id, n] : deltas)
      c.send(Command().arg("HINCRBY").arg(kItemCountsKey).arg(item_id).arg(std::to_string(n)));
  }

  void receive_counts(Lease& c, size_t n) {
    for (size_t i = 0; i < n; ++i) c.receive();
  }

  Lease acquire() {
    {
      std::lock_guard lock(pool_mutex_);
      while (!idle_.empty()) {
        Context c = std::move(idle_.back());
        idle_.pop_back();
        if (still_open(c.get())) return Lease(*this, std::move(c));
      }
    }
    return Lease(*this, connect());
  }

  void give_back(Context c) {
    std::lock_guard lock(pool_mutex_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(c));
  }

  void drop_idle() {
    std::vector<Context> stale;
    {
      std::lock_guard lock(pool_mutex_);
      stale.swap(idle_);
    }
  }

  // An idle connection whose peer has closed (Redis restarted) reads EOF at once; catching
  // that here saves a failed request after every Redis restart.
  static bool still_open(redisContext* c) {
    char byte;
    const ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // The log says when Redis goes away and when it is back, once each (not per request).
  void mark_down(const std::string& reason) {
    if (reachable_.exchange(0) != 0 && log_) log_(description_ + " unreachable (" + reason + "); answering 503 until it is back");
  }
  void mark_up() {
    if (reachable_.exchange(1) == 0 && log_) log_(description_ + " reachable again");
  }

  Context connect() {
    Context c(redisConnectWithTimeout(host_.c_str(), port_, kConnectTimeout));
    if (!c) throw StoreUnavailable(description_ + ": cannot connect: out of memory");
    if (c->err) {
      mark_down(c->errstr);
      throw StoreUnavailable(description_ + ": cannot connect: " + c->errstr);
    }
    if (redisSetTimeout(c.get(), kCommandTimeout) != REDIS_OK)
      throw StoreUnavailable(description_ + ": cannot set the command timeout: " + c->errstr);
    redisEnableKeepAlive(c.get());
    if (db_ != 0) {
      Reply reply(static_cast<redisReply*>(redisCommand(c.get(), "SELECT %d", db_)));
      if (!reply) throw StoreUnavailable(description_ + ": " + (c->errstr[0] ? c->errstr : "connection lost"));
      if (reply->type == REDIS_REPLY_ERROR)
        throw Error(description_ + ": SELECT " + std::to_string(db_) + ": " + std::string(reply->str, reply->len));
    }
    mark_up();
    return c;
  }

  const std::string host_;
  const int port_;
  const int db_;
  const int64_t max_per_user_;
  const std::string description_;
  std::mutex pool_mutex_;
  std::vector<Context> idle_;
  const std::function<void(const std::string&)> log_;
  std::atomic<int> reachable_{-1};  // -1 not yet known, 0 down, 1 up
};

}  // namespace

std::unique_ptr<HistoryStore> make_redis_store(const std::string& host, int port, int db, const StoreOptions& options) {
  return std::make_unique<RedisStore>(host, port, db, options);
}

}  // namespace seqrec::history
