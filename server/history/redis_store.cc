// The shared store: many `seqrec serve` replicas behind one Redis.
//   seqrec:h:<user id>    a list, one element per interaction (encoding.h), in time order
//                         (time_order.h); an append in time order is one EVALSHA of the
//                         append script (check + RPUSH + LTRIM, atomic), one out of order a
//                         WATCH/MULTI rewrite of the list merged (redis_common.h). One key
//                         per user: a Redis Cluster slot holds a user's whole history
//   seqrec:item_counts    a hash item id → count of the stored interactions with that item:
//                         HINCRBY, pipelined, after the append that told which interactions
//                         went in and which the cap trimmed (a separate key, so never inside
//                         the script or the MULTI); erasing a user subtracts their items
// Connections come from a small pool; each has 1 s connect and command timeouts. A connection
// error is StoreUnavailable and that connection (and every idle one, likely as stale) is
// dropped, so the next call connects afresh: the server recovers by itself when Redis is back.
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "server/history/backends.h"
#include "server/history/encoding.h"
#include "server/history/redis_common.h"

namespace seqrec::history {
namespace {

using redis::Command;
using redis::Context;
using redis::CountDeltas;
using redis::Reply;

constexpr timeval kConnectTimeout{1, 0};
constexpr timeval kCommandTimeout{1, 0};
constexpr size_t kMaxIdleConnections = 16;
// append_many sends users in pipelined groups of at most this many users / bytes.
constexpr size_t kUsersPerPipeline = 1000;
constexpr size_t kBytesPerPipeline = size_t{8} << 20;
// A walk over the users asks SCAN for about this many keys a step.
constexpr const char* kScanCount = "1000";
const std::string kUserKeyPrefix = "seqrec:h:";
const std::string kItemCountsKey = "seqrec:item_counts";

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
    c.send(Command("LRANGE").arg(user_key(user_id)).arg("0").arg("-1"));
    Reply reply = c.receive();
    expect(reply, REDIS_REPLY_ARRAY, "LRANGE");
    std::vector<Interaction> out;
    try {
      out = redis::decode_elements(*reply, "user " + printable_id(user_id));
    } catch (const Error& e) {
      throw Error(description_ + ": " + e.what());
    }
    c.release();
    return out;
  }

  void append(std::string_view user_id, std::span<const Interaction> interactions) override {
    if (interactions.empty()) return;
    Lease c = acquire();
    CountDeltas deltas;
    redis::append_user(c, script_, user_key(user_id), interactions, max_per_user_, deltas,
                       "user " + printable_id(user_id));
    // Counted only once the history took them (a refused append counts nothing).
    send_counts(c, deltas);
    receive_counts(c, deltas.size());
    c.release();
  }

  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    size_t begin = 0;
    while (begin < users.size()) {
      Lease c = acquire();
      script_.ensure_loaded(c);
      CountDeltas deltas;
      // In-order appends go pipelined as the script; the others (and those the script finds
      // out of order) are merged one by one after the pipeline.
      // A user listed twice starts a new group: its second list goes after its first.
      size_t end = begin, bytes = 0;
      std::vector<size_t> sent, merge;
      std::unordered_set<std::string_view> in_group;
      while (end < users.size() && end - begin < kUsersPerPipeline && bytes < kBytesPerPipeline) {
        if (!in_group.insert(users[end].first).second) break;
        const auto& [user_id, interactions] = users[end];
        if (!interactions.empty()) {
          if (redis::script_can_append(interactions)) {
            const Command command = script_.command(false, user_key(user_id), max_per_user_, interactions);
            c.send(command);
            bytes += command.bytes();
            sent.push_back(end);
          } else {
            merge.push_back(end);
          }
        }
        ++end;
      }
      std::vector<size_t> by_source;
      for (size_t i : sent) {
        const std::string label = "user " + printable_id(users[i].first);
        switch (redis::receive_append(c, users[i].second, deltas, label)) {
          case redis::ScriptOutcome::appended: break;
          case redis::ScriptOutcome::out_of_order: merge.push_back(i); break;
          case redis::ScriptOutcome::no_script: by_source.push_back(i); break;
        }
      }
      for (size_t i : by_source) merge.push_back(i);
      for (size_t i : merge)
        redis::append_user(c, script_, user_key(users[i].first), users[i].second, max_per_user_, deltas,
                           "user " + printable_id(users[i].first));
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
    Lease c = acquire();
    CountDeltas deltas;
    const bool existed = redis::erase_user(c, user_key(user_id), deltas, "user " + printable_id(user_id));
    send_counts(c, deltas);
    receive_counts(c, deltas.size());
    c.release();
    return existed;
  }

  std::vector<std::pair<std::string, uint64_t>> item_counts() override {
    // HSCAN rather than HGETALL: a large hash is read in steps without blocking Redis.
    std::unordered_map<std::string, uint64_t> counts;
    Lease c = acquire();
    std::string cursor = "0";
    do {
      c.send(Command("HSCAN").arg(kItemCountsKey).arg(cursor).arg("COUNT").arg("1000"));
      Reply reply = c.receive();
      cursor = redis::read_count_page(*reply, kItemCountsKey, counts, description_);
    } while (cursor != "0");
    c.release();
    std::vector<std::pair<std::string, uint64_t>> out(counts.begin(), counts.end());
    sort_item_counts(out);
    return out;
  }

  std::unique_ptr<UserScan> scan_users() override { return std::make_unique<Scan>(*this); }

  bool ready() override {
    try {
      Lease c = acquire();
      c.send(Command("PING"));
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
  class Lease final : public redis::Connection {
   public:
    Lease(RedisStore& store, Context c) : store_(store), c_(std::move(c)) {}
    Lease(Lease&&) = default;

    void send(const Command& command) override { command.append_to(c_.get()); }

    Reply receive_raw() override {
      void* raw = nullptr;
      if (redisGetReply(c_.get(), &raw) != REDIS_OK || raw == nullptr) {
        const std::string reason = c_->errstr[0] ? c_->errstr : "connection lost";
        c_.reset();
        store_.drop_idle();
        store_.mark_down(reason);
        throw StoreUnavailable(store_.description_ + ": " + reason);
      }
      return Reply(static_cast<redisReply*>(raw));
    }

    [[noreturn]] void fail(const redisReply& error) override {
      // LOADING: a restarted Redis still reading its data; BUSY: a script running long.
      const std::string text(error.str, error.len);
      if (text.starts_with("LOADING") || text.starts_with("BUSY") || text.starts_with("MASTERDOWN"))
        throw StoreUnavailable(store_.description_ + ": " + text);
      throw Error(store_.description_ + ": redis error: " + text);
    }

    std::string describe() const override { return store_.description_; }

    // A complete exchange: Redis answers (the one sign it is back: a frozen Redis still
    // accepts connections, so a connect alone proves nothing).
    void release() {
      store_.mark_up();
      store_.give_back(std::move(c_));
    }

   private:
    RedisStore& store_;
    Context c_;
  };

  // SCAN over the user keys, each step's lists read with one pipeline of LRANGEs. SCAN may
  // return a key twice (while Redis resizes its table): a key seen before is skipped, by a
  // 64-bit hash of it.
  class Scan final : public UserScan {
   public:
    explicit Scan(RedisStore& store) : store_(store) {}

    bool next(std::vector<StoredUser>& batch, size_t max_users) override {
      batch.clear();
      max_users = std::max<size_t>(max_users, 1);
      while (batch.size() < max_users) {
        if (pending_.empty()) {
          if (done_) break;
          scan_step();
          continue;
        }
        const size_t n = std::min(pending_.size(), max_users - batch.size());
        Lease c = store_.acquire();
        for (size_t i = 0; i < n; ++i) c.send(Command("LRANGE").arg(pending_[i]).arg("0").arg("-1"));
        for (size_t i = 0; i < n; ++i) {
          Reply reply = c.receive_raw();
          StoredUser user;
          user.user_id = pending_[i].substr(kUserKeyPrefix.size());
          const std::string label = "user " + printable_id(user.user_id);
          if (reply->type == REDIS_REPLY_ERROR) {
            user.error = store_.description_ + ": " + label + ": " + std::string(reply->str, reply->len);
          } else if (reply->type != REDIS_REPLY_ARRAY) {
            user.error = store_.description_ + ": " + label + ": unexpected reply to LRANGE";
          } else if (reply->elements == 0) {
            continue;  // erased since SCAN listed it
          } else {
            try {
              user.interactions = redis::decode_elements(*reply, label);
            } catch (const Error& e) {
              user.interactions.clear();
              user.error = store_.description_ + ": " + e.what();
            }
          }
          batch.push_back(std::move(user));
        }
        c.release();
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
      }
      return !batch.empty();
    }

   private:
    void scan_step() {
      Lease c = store_.acquire();
      c.send(Command("SCAN").arg(cursor_).arg("MATCH").arg(kUserKeyPrefix + "*").arg("COUNT").arg(kScanCount));
      Reply reply = c.receive();
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
          reply->element[1]->type != REDIS_REPLY_ARRAY)
        throw Error(store_.description_ + ": unexpected SCAN reply");
      for (size_t i = 0; i < reply->element[1]->elements; ++i) {
        const redisReply* key = reply->element[1]->element[i];
        if (key->type != REDIS_REPLY_STRING) continue;
        std::string text(key->str, key->len);
        if (seen_.insert(std::hash<std::string>{}(text)).second) pending_.push_back(std::move(text));
      }
      cursor_.assign(reply->element[0]->str, reply->element[0]->len);
      done_ = cursor_ == "0";
      c.release();
    }

    RedisStore& store_;
    std::string cursor_ = "0";
    bool done_ = false;
    std::vector<std::string> pending_;
    std::unordered_set<size_t> seen_;
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

  void send_counts(Lease& c, CountDeltas& deltas) {
    std::erase_if(deltas, [](const auto& entry) { return entry.second == 0; });
    for (const auto& [item_id, n] : deltas) c.send(Command("HINCRBY").arg(kItemCountsKey).arg(item_id).arg(n));
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

  // The log says when Redis goes away and when it is back, once each (not per request): down
  // when a connect or an exchange fails, up when an exchange completes (Lease::release).
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
  redis::AppendScript script_;
};

}  // namespace

std::unique_ptr<HistoryStore> make_redis_store(const std::string& host, int port, int db, const StoreOptions& options) {
  return std::make_unique<RedisStore>(host, port, db, options);
}

}  // namespace seqrec::history
