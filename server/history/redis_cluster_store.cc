// The shared store on a Redis Cluster: `redis-cluster://HOST:PORT[,HOST:PORT...]` (seed nodes;
// the rest of the cluster is learnt from them). seqrec follows the cluster protocol itself, with
// one plain hiredis connection pool per node (hiredis 0.14 has no cluster support):
//   - the slot map (slot → master, and whether it has a replica) comes from CLUSTER SLOTS,
//     asked of a known master or a seed; it is refreshed on MOVED, on a connection failure,
//     on CLUSTERDOWN and READONLY (at most every 100 ms: no storm while a node is down);
//   - MOVED: the command goes again to the node named (the map refreshed meanwhile); ASK: to
//     the node named, each command preceded by ASKING (a MULTI: ASKING before the MULTI only);
//     TRYAGAIN (a key being migrated): retried a few times after a short sleep;
//   - a node that cannot be reached, and CLUSTERDOWN, are StoreUnavailable (503
//     history_unavailable) until the cluster has failed over; the next refresh finds the
//     promoted replica and the server goes on without a restart.
// Keys, as for one Redis (redis_store.cc), except the counts:
//   seqrec:h:<user id>              the user's whole history, one list: one key, so one slot
//                                   (a per-user key added later must share the hash tag)
//   seqrec:item_counts:{NN}         item id → count, in kCountShards hashes: the hash tags
//                                   {00}..{15} put them in different slots (so on different
//                                   masters): no single hot key; an item lives in shard
//                                   fnv1a64(item id) % kCountShards; item_counts() HSCANs
//                                   every shard and merges them. (The shard count is part of
//                                   the layout: changing it needs the counts rebuilt.)
// Appends, merges, the cap, erase and the counts work as in redis_store.cc (redis_common.h).
//
// WHAT A FAILOVER MAY LOSE. Redis Cluster replicates asynchronously: a master acknowledges a
// write before its replica has it, and a master killed then loses the write when its replica
// is promoted. So after every write that answers 200 (append, append_many, erase) seqrec sends
// `WAIT 1 100` to each master it wrote to (pipelined: no extra round trip for the history
// write's own reply) when the slot map lists a live replica for it, and answers only after
// WAIT returns. The cost: one replication round trip per write (on a LAN well under a
// millisecond; at most the 100 ms timeout). Therefore:
//   - an acknowledged append is on a replica, and survives the failover of its master (with
//     one replica per master: the one promoted), unless WAIT timed out: no replica
//     acknowledged within 100 ms (a replica lagging or cut off); then the write is only on
//     the master, seqrec still answers 200 (the write did happen: failing it would make the
//     client retry a write that is there), and logs "not yet on a replica" (once per node
//     until a WAIT succeeds again). Only such writes may be lost by a failover.
//   - a master without a live replica (none configured, or it already failed): no WAIT (it
//     could never succeed); a write is on that master only, and lost if the master's data is.
//   - the counts are written after the history (other keys, usually other masters). They are
//     the cold-start popularity, not the history: a count change whose shard's master cannot
//     be reached (down, failing over) is kept in this process's memory and applied by a later
//     write (or item_counts()), so the append still answers 200 while a count shard fails
//     over. Across a failover the counts may be off by the few changes in flight when the
//     master died (counted twice or not at all), and by what a server stopped before it could
//     apply its held-back changes; a history is never affected by this.
//   - an append answered 503 may or may not be stored (the master may have died after
//     writing): a retry may store it twice, as with one Redis.
// WAIT bounds, but does not remove, the loss window (it is not a consensus write): with more
// than one replica per master, the replica promoted is usually but not surely one that has
// the write.
//
// A walk over the users (scan_users) SCANs every master in turn; a master that fails over
// mid-walk is walked again from the start on its replica (the users seen are skipped). Slots
// moved by a resharding during a walk may have their users missed.
#include <sys/socket.h>
#include <sys/time.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
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
using Clock = std::chrono::steady_clock;

constexpr timeval kConnectTimeout{1, 0};
constexpr timeval kCommandTimeout{1, 0};
constexpr size_t kMaxIdleConnections = 16;  // per node
constexpr int kSlots = 16384;
constexpr int kCountShards = 16;
// Redirects and TRYAGAIN retries one command may go through before it is a 503.
constexpr int kMaxAttempts = 8;
constexpr auto kTryAgainSleep = std::chrono::milliseconds(25);
constexpr auto kMinRefreshInterval = std::chrono::milliseconds(100);
constexpr const char* kWaitTimeoutMs = "100";
constexpr size_t kUsersPerPipeline = 1000;
constexpr size_t kBytesPerPipeline = size_t{8} << 20;
constexpr const char* kScanCount = "1000";
const std::string kUserKeyPrefix = "seqrec:h:";
const std::string kItemCountsPrefix = "seqrec:item_counts:";

// CRC16-CCITT (XMODEM), the key → slot hash of the cluster spec.
uint16_t crc16(std::string_view data) {
  uint16_t crc = 0;
  for (const char ch : data) {
    crc ^= static_cast<uint16_t>(static_cast<unsigned char>(ch)) << 8;
    for (int i = 0; i < 8; ++i) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
  }
  return crc;
}

// The slot of a key: only the part inside the first {...} is hashed when it is not empty.
int key_slot(std::string_view key) {
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close != open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return crc16(key) & (kSlots - 1);
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (const char ch : s) {
    h ^= static_cast<unsigned char>(ch);
    h *= 1099511628211ull;
  }
  return h;
}

std::string shard_key(int shard) {
  std::string key = kItemCountsPrefix + "{";
  if (shard < 10) key += '0';
  key += std::to_string(shard);
  key += '}';
  return key;
}

std::string user_key(std::string_view user_id) {
  std::string key = kUserKeyPrefix;
  key.append(user_id);
  return key;
}

struct Node {
  std::string host;
  int port = 0;
  bool operator==(const Node&) const = default;
  std::string name() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
};

// Slot → master, as CLUSTER SLOTS told it.
struct SlotMap {
  std::vector<Node> masters;
  std::vector<bool> has_replica;        // per master: a live replica listed (WAIT can succeed)
  std::array<int16_t, kSlots> owner{};  // index in masters; -1: no node serves the slot
  uint64_t version = 0;
};

// What an error reply means in a cluster (Connection::fail and the pipelines that read
// replies one by one).
struct Redirect {
  bool ask = false;
  Node to;
};
struct TryAgain {};
struct StaleMap {};  // READONLY: the map points at a demoted master

enum class ErrorKind { moved, ask, try_again, stale, unavailable, cluster_down, other };

ErrorKind classify(const redisReply& error, Node* to) {
  const std::string_view text(error.str, error.len);
  auto target = [&](std::string_view rest) {
    // "MOVED 3999 127.0.0.1:6381"
    const size_t space = rest.find(' ', rest.find(' ') + 1);
    const std::string_view address = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
    const size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) return false;
    std::string_view host = address.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int port = 0;
    const std::string_view port_text = address.substr(colon + 1);
    const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || port <= 0 || port > 65535) return false;
    if (to) *to = {std::string(host), port};
    return true;
  };
  if (text.starts_with("MOVED ")) return target(text) ? ErrorKind::moved : ErrorKind::other;
  if (text.starts_with("ASK ")) return target(text) ? ErrorKind::ask : ErrorKind::other;
  if (text.starts_with("TRYAGAIN")) return ErrorKind::try_again;
  if (text.starts_with("READONLY")) return ErrorKind::stale;
  if (text.starts_with("CLUSTERDOWN")) return ErrorKind::cluster_down;
  // LOADING: a restarted node still reading its data; BUSY: a script running long.
  if (text.starts_with("LOADING") || text.starts_with("BUSY") || text.starts_with("MASTERDOWN"))
    return ErrorKind::unavailable;
  return ErrorKind::other;
}

class RedisClusterStore final : public HistoryStore {
 public:
  RedisClusterStore(std::vector<Node> seeds, const StoreOptions& options)
      : seeds_(std::move(seeds)),
        max_per_user_(std::max<int64_t>(options.max_per_user, 1)),
        log_(options.log) {
    description_ = "redis-cluster://";
    for (size_t i = 0; i < seeds_.size(); ++i) description_ += (i ? "," : "") + seeds_[i].name();
    auto empty = std::make_shared<SlotMap>();
    empty->owner.fill(-1);
    map_ = std::move(empty);
  }

  std::vector<Interaction> get(std::string_view user_id) override {
    const std::string key = user_key(user_id);
    return on_slot(key_slot(key), [&](redis::Connection& c, const Target&) {
      c.send(Command("LRANGE").arg(key).arg("0").arg("-1"));
      Reply reply = c.receive();
      if (reply->type != REDIS_REPLY_ARRAY) throw Error(c.describe() + ": unexpected reply to LRANGE " + key);
      try {
        return redis::decode_elements(*reply, "user " + printable_id(user_id));
      } catch (const Error& e) {
        throw Error(c.describe() + ": " + e.what());
      }
    });
  }

  void append(std::string_view user_id, std::span<const Interaction> interactions) override {
    if (interactions.empty()) return;
    CountDeltas deltas;
    append_one(user_id, interactions, deltas);
    // Counted only once the history took them (a refused append counts nothing).
    add_counts(deltas);
  }

  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    size_t begin = 0;
    while (begin < users.size()) {
      // A group: distinct users (one listed twice starts a new group: its second list goes
      // after its first), sent pipelined per master.
      size_t end = begin, bytes = 0;
      std::unordered_set<std::string_view> in_group;
      while (end < users.size() && end - begin < kUsersPerPipeline && bytes < kBytesPerPipeline) {
        if (!in_group.insert(users[end].first).second) break;
        for (const Interaction& it : users[end].second) bytes += it.item_id.size() + 24;
        ++end;
      }
      CountDeltas deltas;
      try {
        append_group(users.subspan(begin, end - begin), deltas);
      } catch (...) {
        // What went in is counted even when the rest failed.
        try {
          add_counts(deltas);
        } catch (...) {
        }
        throw;
      }
      add_counts(deltas);
      begin = end;
    }
  }

  // As on one Redis: the list read and deleted in one MULTI, then its items subtracted.
  bool erase(std::string_view user_id) override {
    const std::string key = user_key(user_id);
    CountDeltas deltas;
    const bool existed = on_slot(key_slot(key), [&](redis::Connection& c, const Target& target) {
      CountDeltas mine;
      const bool found = redis::erase_user(c, key, mine, "user " + printable_id(user_id));
      deltas = std::move(mine);
      wait_for_replica(c, target);
      return found;
    });
    add_counts(deltas);
    return existed;
  }

  std::vector<std::pair<std::string, uint64_t>> item_counts() override {
    // Every shard HSCANned in steps (no HGETALL blocking a node); an item is in one shard.
    if (counts_pending()) {
      CountDeltas none;
      try {
        add_counts(none);  // what an outage held back, first
      } catch (const Error&) {
      }
    }
    std::unordered_map<std::string, uint64_t> counts;
    for (int shard = 0; shard < kCountShards; ++shard) {
      const std::string key = shard_key(shard);
      std::unordered_map<std::string, uint64_t> shard_counts;
      on_slot(key_slot(key), [&](redis::Connection& c, const Target&) {
        shard_counts.clear();  // a redirect reads the shard again from the start
        std::string cursor = "0";
        do {
          c.send(Command("HSCAN").arg(key).arg(cursor).arg("COUNT").arg("1000"));
          Reply reply = c.receive();
          cursor = redis::read_count_page(*reply, key, shard_counts, c.describe());
        } while (cursor != "0");
        return 0;
      });
      for (auto& [id, n] : shard_counts) counts[id] = n;
    }
    std::vector<std::pair<std::string, uint64_t>> out(counts.begin(), counts.end());
    sort_item_counts(out);
    return out;
  }

  std::unique_ptr<UserScan> scan_users() override { return std::make_unique<Scan>(*this); }

  // Ready: a fresh slot map covering every slot, and every master answers PING.
  bool ready() override {
    try {
      refresh_map(0, true);
      const std::shared_ptr<const SlotMap> map = current_map();
      if (map->masters.empty()) return false;
      for (int16_t owner : map->owner)
        if (owner < 0) return false;
      for (const Node& node : map->masters) {
        Lease c = acquire(node);
        c.send(Command("PING"));
        Reply reply = c.receive_raw();
        if (reply->type != REDIS_REPLY_STATUS || std::string_view(reply->str, reply->len) != "PONG") return false;
        c.release();
      }
      return true;
    } catch (...) {
      return false;
    }
  }

  std::string describe() const override { return description_; }

 private:
  struct Target {
    Node node;
    bool has_replica = false;
  };

  // A connection to one node, borrowed from its pool; back only through release(), after a
  // complete exchange; on any exception it is closed (its replies may be out of step).
  class Lease final : public redis::Connection {
   public:
    Lease(RedisClusterStore& store, Node node, Context c) : store_(store), node_(std::move(node)), c_(std::move(c)) {}
    Lease(Lease&&) = default;

    void send(const Command& command) override { command.append_to(c_.get()); }

    Reply receive_raw() override {
      void* raw = nullptr;
      if (redisGetReply(c_.get(), &raw) != REDIS_OK || raw == nullptr) {
        const std::string reason = c_->errstr[0] ? c_->errstr : "connection lost";
        c_.reset();
        store_.connection_failed(node_, reason);
        throw StoreUnavailable(describe() + ": " + reason);
      }
      return Reply(static_cast<redisReply*>(raw));
    }

    [[noreturn]] void fail(const redisReply& error) override { store_.raise(error, describe()); }

    std::string describe() const override { return store_.description_ + " node " + node_.name(); }

    void release() {
      store_.mark_up(node_);
      store_.give_back(node_, std::move(c_));
    }

    const Node& node() const { return node_; }

   private:
    RedisClusterStore& store_;
    Node node_;
    Context c_;
  };

  // After an ASK: every command preceded by ASKING (its +OK skipped), except inside a MULTI,
  // where the ASKING before MULTI holds until EXEC (Redis keeps the flag in a transaction).
  class Asking final : public redis::Connection {
   public:
    explicit Asking(Lease& c) : c_(c) {}
    void send(const Command& command) override {
      const bool asking = !in_multi_;
      if (asking) c_.send(Command("ASKING"));
      if (command.name() == "MULTI") in_multi_ = true;
      if (command.name() == "EXEC" || command.name() == "DISCARD") in_multi_ = false;
      c_.send(command);
      preceded_.push_back(asking);
    }
    Reply receive_raw() override {
      const bool asking = !preceded_.empty() && preceded_.front();
      if (!preceded_.empty()) preceded_.pop_front();
      if (asking) {
        Reply ok = c_.receive_raw();
        if (ok->type == REDIS_REPLY_ERROR) {
          c_.receive_raw();  // the command's own reply, to stay in step
          c_.fail(*ok);
        }
      }
      return c_.receive_raw();
    }
    [[noreturn]] void fail(const redisReply& error) override { c_.fail(error); }
    std::string describe() const override { return c_.describe(); }

   private:
    Lease& c_;
    bool in_multi_ = false;
    std::deque<bool> preceded_;
  };

  // SCAN over the user keys of every master in turn, each step's lists read with a pipeline
  // of LRANGEs on that master (a key that moved meanwhile is read on its own). A key seen
  // before is skipped, by a 64-bit hash of it.
  class Scan final : public UserScan {
   public:
    explicit Scan(RedisClusterStore& store) : store_(store) {}

    bool next(std::vector<StoredUser>& batch, size_t max_users) override {
      batch.clear();
      max_users = std::max<size_t>(max_users, 1);
      if (!started_) start();
      while (batch.size() < max_users) {
        if (pending_.empty()) {
          if (shard_ >= slots_.size()) break;
          scan_step();
          continue;
        }
        const size_t n = std::min(pending_.size(), max_users - batch.size());
        read_pending(n, batch);
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
      }
      return !batch.empty();
    }

   private:
    // One slot per master, as the map has them now: a master is walked as "the owner of its
    // slot", so a failover (a new owner) restarts that master's walk.
    void start() {
      store_.ensure_map();
      const std::shared_ptr<const SlotMap> map = store_.current_map();
      std::vector<bool> taken(map->masters.size(), false);
      for (int slot = 0; slot < kSlots; ++slot) {
        const int16_t owner = map->owner[slot];
        if (owner >= 0 && !taken[owner]) {
          taken[owner] = true;
          slots_.push_back(slot);
        }
      }
      if (slots_.empty()) throw StoreUnavailable(store_.description_ + ": no master serves any slot");
      started_ = true;
    }

    void scan_step() {
      const Target target = store_.target_of(slots_[shard_]);
      if (walked_node_ && !(*walked_node_ == target.node)) cursor_ = "0";  // failed over: walk it again
      walked_node_ = target.node;
      Lease c = store_.acquire(target.node);
      c.send(Command("SCAN").arg(cursor_).arg("MATCH").arg(kUserKeyPrefix + "*").arg("COUNT").arg(kScanCount));
      Reply reply = c.receive();
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
          reply->element[1]->type != REDIS_REPLY_ARRAY)
        throw Error(c.describe() + ": unexpected SCAN reply");
      for (size_t i = 0; i < reply->element[1]->elements; ++i) {
        const redisReply* key = reply->element[1]->element[i];
        if (key->type != REDIS_REPLY_STRING) continue;
        std::string text(key->str, key->len);
        if (seen_.insert(std::hash<std::string>{}(text)).second) pending_.push_back(std::move(text));
      }
      cursor_.assign(reply->element[0]->str, reply->element[0]->len);
      c.release();
      if (cursor_ == "0") {
        ++shard_;
        walked_node_.reset();
      }
    }

    void read_pending(size_t n, std::vector<StoredUser>& batch) {
      const Target target = store_.target_of(key_slot(pending_[0]));
      Lease c = store_.acquire(target.node);
      for (size_t i = 0; i < n; ++i) c.send(Command("LRANGE").arg(pending_[i]).arg("0").arg("-1"));
      std::vector<size_t> elsewhere;  // moved, or on another master: read on their own
      std::vector<StoredUser> users(n);
      std::vector<bool> keep(n, true);
      for (size_t i = 0; i < n; ++i) {
        Reply reply = c.receive_raw();
        StoredUser& user = users[i];
        user.user_id = pending_[i].substr(kUserKeyPrefix.size());
        const std::string label = "user " + printable_id(user.user_id);
        if (reply->type == REDIS_REPLY_ERROR) {
          const ErrorKind kind = classify(*reply, nullptr);
          if (kind == ErrorKind::other) {
            user.error = c.describe() + ": " + label + ": " + std::string(reply->str, reply->len);
          } else {
            elsewhere.push_back(i);
          }
        } else if (reply->type != REDIS_REPLY_ARRAY) {
          user.error = c.describe() + ": " + label + ": unexpected reply to LRANGE";
        } else if (reply->elements == 0) {
          keep[i] = false;  // erased since SCAN listed it
        } else {
          try {
            user.interactions = redis::decode_elements(*reply, label);
          } catch (const Error& e) {
            user.interactions.clear();
            user.error = c.describe() + ": " + e.what();
          }
        }
      }
      c.release();
      for (size_t i : elsewhere) {
        try {
          users[i].interactions = store_.get(users[i].user_id);
          keep[i] = !users[i].interactions.empty();
        } catch (const StoreUnavailable&) {
          throw;
        } catch (const Error& e) {
          users[i].error = e.what();
        }
      }
      for (size_t i = 0; i < n; ++i)
        if (keep[i]) batch.push_back(std::move(users[i]));
    }

    RedisClusterStore& store_;
    bool started_ = false;
    std::vector<int> slots_;  // one per master
    size_t shard_ = 0;        // the master being walked
    std::optional<Node> walked_node_;
    std::string cursor_ = "0";
    std::vector<std::string> pending_;
    std::unordered_set<size_t> seen_;
  };

  // ---- routing -----------------------------------------------------------------------

  std::shared_ptr<const SlotMap> current_map() const {
    std::lock_guard lock(map_mutex_);
    return map_;
  }

  void ensure_map() {
    if (current_map()->masters.empty()) refresh_map(0, false);
  }

  Target target_of(int slot) {
    ensure_map();
    const std::shared_ptr<const SlotMap> map = current_map();
    const int16_t owner = map->owner[slot];
    if (owner < 0) {
      refresh_map(map->version, false);
      throw StoreUnavailable(description_ + ": no node serves slot " + std::to_string(slot) +
                             " (the cluster is down or being set up)");
    }
    return {map->masters[owner], map->has_replica[owner]};
  }

  bool replica_of(const Node& node) const {
    const std::shared_ptr<const SlotMap> map = current_map();
    for (size_t i = 0; i < map->masters.size(); ++i)
      if (map->masters[i] == node) return map->has_replica[i];
    return false;
  }

  // Runs `op` on the master of `slot`, following MOVED and ASK, retrying TRYAGAIN. `op` must
  // be safe to run again after a redirect (the command redirected was not executed, and
  // everything before it in `op` only read).
  template <class Op>
  std::invoke_result_t<Op&, redis::Connection&, const Target&> on_slot(int slot, Op&& op) {
    std::optional<Redirect> redirect;
    std::string last;
    for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
      Target target;
      if (redirect) {
        target.node = redirect->to;
        target.has_replica = replica_of(target.node);
      } else {
        target = target_of(slot);
      }
      const uint64_t version = current_map()->version;
      std::optional<Lease> lease;
      try {
        lease.emplace(acquire(target.node));
      } catch (const StoreUnavailable&) {
        // Nothing was sent: when a refresh finds another master for the slot, try that.
        refresh_map(version, false);
        if (redirect || target_of(slot).node == target.node) throw;
        redirect.reset();
        continue;
      }
      try {
        if (redirect && redirect->ask) {
          Asking asking(*lease);
          auto result = op(asking, target);
          lease->release();
          return result;
        }
        auto result = op(*lease, target);
        lease->release();
        return result;
      } catch (const Redirect& r) {
        last = std::string(r.ask ? "ASK" : "MOVED") + " to " + r.to.name();
        if (!r.ask) refresh_map(version, false);
        redirect = r;
      } catch (const TryAgain&) {
        last = "TRYAGAIN";
        redirect.reset();
        std::this_thread::sleep_for(kTryAgainSleep);
      } catch (const StaleMap&) {
        last = "READONLY";
        redirect.reset();
        refresh_map(version, false);
      }
    }
    throw StoreUnavailable(description_ + ": slot " + std::to_string(slot) + " still redirected after " +
                           std::to_string(kMaxAttempts) + " attempts (last: " + last + "); retry");
  }

  [[noreturn]] void raise(const redisReply& error, const std::string& where) {
    Node to;
    const std::string text(error.str, error.len);
    switch (classify(error, &to)) {
      case ErrorKind::moved: throw Redirect{false, to};
      case ErrorKind::ask: throw Redirect{true, to};
      case ErrorKind::try_again: throw TryAgain{};
      case ErrorKind::stale: throw StaleMap{};
      case ErrorKind::cluster_down:
        refresh_map(0, false);
        throw StoreUnavailable(where + ": " + text);
      case ErrorKind::unavailable: throw StoreUnavailable(where + ": " + text);
      case ErrorKind::other: break;
    }
    throw Error(where + ": redis error: " + text);
  }

  // Asks CLUSTER SLOTS of the known masters, then the seeds; the first answer is the map.
  // `seen_version`: the map the caller found wanting (0: any); a newer map, or one loaded
  // less than kMinRefreshInterval ago (unless `force`), is kept.
  void refresh_map(uint64_t seen_version, bool force) {
    std::lock_guard refresh_lock(refresh_mutex_);
    in_refresh_ = true;
    struct Reset {
      ~Reset() { in_refresh_ = false; }
    } reset;
    const std::shared_ptr<const SlotMap> old = current_map();
    if (seen_version != 0 && old->version != seen_version) return;
    if (!force && !old->masters.empty() && Clock::now() - last_refresh_ < kMinRefreshInterval) return;
    last_refresh_ = Clock::now();
    std::vector<Node> candidates;
    auto add = [&](const Node& n) {
      if (std::find(candidates.begin(), candidates.end(), n) == candidates.end()) candidates.push_back(n);
    };
    for (const Node& n : old->masters)
      if (!is_down(n)) add(n);
    for (const Node& n : seeds_) add(n);
    for (const Node& n : old->masters) add(n);
    std::string errors;
    for (const Node& node : candidates) {
      try {
        Lease c = acquire(node);
        c.send(Command("CLUSTER").arg("SLOTS"));
        Reply reply = c.receive_raw();
        if (reply->type == REDIS_REPLY_ERROR) {
          errors += "; " + node.name() + ": " + std::string(reply->str, reply->len);
          c.release();
          continue;
        }
        auto map = parse_slots(*reply, node, c.describe());
        c.release();
        map->version = old->version + 1;
        log_map_change(*old, *map);
        std::lock_guard lock(map_mutex_);
        map_ = std::move(map);
        return;
      } catch (const StoreUnavailable& e) {
        errors += "; " + node.name() + ": " + e.what();
      } catch (const Error& e) {
        errors += "; " + node.name() + ": " + e.what();
      }
    }
    if (old->masters.empty()) throw StoreUnavailable(description_ + ": no node answered CLUSTER SLOTS" + errors);
  }

  std::shared_ptr<SlotMap> parse_slots(const redisReply& reply, const Node& asked, const std::string& where) {
    auto bad = [&] { return Error(where + ": unexpected CLUSTER SLOTS reply"); };
    if (reply.type != REDIS_REPLY_ARRAY) throw bad();
    auto map = std::make_shared<SlotMap>();
    map->owner.fill(-1);
    for (size_t i = 0; i < reply.elements; ++i) {
      const redisReply* range = reply.element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 || range->element[0]->type != REDIS_REPLY_INTEGER ||
          range->element[1]->type != REDIS_REPLY_INTEGER)
        throw bad();
      const long long first = range->element[0]->integer, last = range->element[1]->integer;
      if (first < 0 || last >= kSlots || first > last) throw bad();
      auto endpoint = [&](const redisReply* e) {
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[1]->type != REDIS_REPLY_INTEGER) throw bad();
        Node n;
        if (e->element[0]->type == REDIS_REPLY_STRING) n.host.assign(e->element[0]->str, e->element[0]->len);
        // "" or "?": the node does not know its address; it is the one asked.
        if (n.host.empty() || n.host == "?") n.host = asked.host;
        n.port = static_cast<int>(e->element[1]->integer);
        return n;
      };
      const Node master = endpoint(range->element[2]);
      auto at = std::find(map->masters.begin(), map->masters.end(), master);
      if (at == map->masters.end()) {
        map->masters.push_back(master);
        map->has_replica.push_back(false);
        at = map->masters.end() - 1;
      }
      const auto index = static_cast<int16_t>(at - map->masters.begin());
      if (range->elements > 3) map->has_replica[index] = true;
      for (long long s = first; s <= last; ++s) map->owner[s] = index;
    }
    return map;
  }

  void log_map_change(const SlotMap& old, const SlotMap& now) {
    if (!log_ || old.masters.empty() || old.masters == now.masters) return;
    std::string text = description_ + ": slot map changed; masters now";
    for (const Node& n : now.masters) text += " " + n.name();
    log_(text);
  }

  // ---- writes --------------------------------------------------------------------------

  // One user's append on its master, then WAIT for a replica (pipelined after the script).
  void append_one(std::string_view user_id, std::span<const Interaction> interactions, CountDeltas& deltas) {
    const std::string key = user_key(user_id);
    const std::string label = "user " + printable_id(user_id);
    CountDeltas mine;
    on_slot(key_slot(key), [&](redis::Connection& c, const Target& target) {
      mine.clear();
      if (redis::script_can_append(interactions)) {
        ensure_script(c, target.node);
        redis::ScriptOutcome outcome = redis::ScriptOutcome::no_script;
        for (const bool by_source : {false, true}) {
          c.send(script_.command(by_source, key, max_per_user_, interactions));
          if (target.has_replica) c.send(wait_command());
          outcome = redis::receive_append(c, interactions, mine, label);
          if (target.has_replica) check_wait(c, c.receive(), target);
          if (outcome != redis::ScriptOutcome::no_script) break;
        }
        if (outcome == redis::ScriptOutcome::appended) return 0;
        if (outcome == redis::ScriptOutcome::no_script) throw Error(c.describe() + ": EVAL of the append script says NOSCRIPT");
      }
      // Out of order: the WATCH/MULTI merge, as on one Redis.
      redis::merge_append(c, key, interactions, max_per_user_, mine, label);
      wait_for_replica(c, target);
      return 0;
    });
    for (const auto& [id, n] : mine) deltas[id] += n;
  }

  // SCRIPT LOAD once per node (a node that lost it, restarted: NOSCRIPT, then EVAL).
  void ensure_script(redis::Connection& c, const Node& node) {
    {
      std::lock_guard lock(nodes_mutex_);
      if (script_nodes_.contains(node.name())) return;
    }
    script_.load(c);
    std::lock_guard lock(nodes_mutex_);
    script_nodes_.insert(node.name());
  }

  // A group of distinct users: per master, the in-order ones pipelined as the script (and one
  // WAIT); the others, and those redirected or out of order, one by one.
  void append_group(std::span<const std::pair<std::string, std::vector<Interaction>>> users, CountDeltas& deltas) {
    ensure_map();
    std::map<std::string, std::pair<Target, std::vector<size_t>>> by_node;
    std::vector<size_t> alone;
    for (size_t i = 0; i < users.size(); ++i) {
      if (users[i].second.empty()) continue;
      if (!redis::script_can_append(users[i].second)) {
        alone.push_back(i);
        continue;
      }
      const Target target = target_of(key_slot(user_key(users[i].first)));
      auto& entry = by_node[target.node.name()];
      entry.first = target;
      entry.second.push_back(i);
    }
    for (auto& [name, entry] : by_node) {
      const Target& target = entry.first;
      Lease c = acquire_or_refresh(target.node);
      ensure_script(c, target.node);
      for (size_t i : entry.second) c.send(script_.command(false, user_key(users[i].first), max_per_user_, users[i].second));
      if (target.has_replica) c.send(wait_command());
      for (size_t i : entry.second) {
        try {
          // One reply read per user whatever it says, so the pipeline stays in step.
          const std::string label = "user " + printable_id(users[i].first);
          if (redis::receive_append(c, users[i].second, deltas, label) != redis::ScriptOutcome::appended)
            alone.push_back(i);
        } catch (const Redirect&) {
          alone.push_back(i);
        } catch (const TryAgain&) {
          alone.push_back(i);
        } catch (const StaleMap&) {
          alone.push_back(i);
        }
      }
      if (target.has_replica) check_wait(c, c.receive(), target);
      c.release();
    }
    for (size_t i : alone) append_one(users[i].first, users[i].second, deltas);
  }

  static Command wait_command() { return Command("WAIT").arg("1").arg(kWaitTimeoutMs); }

  void wait_for_replica(redis::Connection& c, const Target& target) {
    if (!target.has_replica) return;
    c.send(wait_command());
    check_wait(c, c.receive(), target);
  }

  void check_wait(redis::Connection& c, const Reply& reply, const Target& target) {
    if (reply->type != REDIS_REPLY_INTEGER) throw Error(c.describe() + ": unexpected reply to WAIT");
    std::lock_guard lock(nodes_mutex_);
    bool& lagging = unreplicated_[target.node.name()];
    if (reply->integer >= 1) {
      if (lagging && log_) log_(c.describe() + ": writes reach a replica again");
      lagging = false;
    } else if (!lagging) {
      lagging = true;
      if (log_)
        log_(c.describe() + ": a write is not yet on a replica (WAIT 1 " + kWaitTimeoutMs +
             " timed out): a failover now may lose it");
    }
  }

  // Adds the count changes: HINCRBY on each item's shard, pipelined per master (all masters
  // sent to before any is read), with a WAIT where a replica is listed. The counts are the
  // popularity, not the history: a change that cannot be applied now (its shard's master
  // unreachable, the cluster down, still redirected after kMaxAttempts) is kept in memory and
  // applied by a later call, so an append whose history is stored answers 200 while one count
  // shard is failing over. A change whose reply was lost with its connection is kept too (it
  // may then be counted twice). Throws only seqrec::Error (a shard that is not a hash, ...).
  void add_counts(CountDeltas& deltas) {
    {
      std::lock_guard lock(pending_mutex_);
      for (const auto& [id, n] : pending_counts_) deltas[id] += n;
      pending_counts_.clear();
    }
    std::erase_if(deltas, [](const auto& entry) { return entry.second == 0; });
    std::vector<std::pair<std::string, int64_t>> todo(deltas.begin(), deltas.end()), deferred;
    std::optional<Error> error;
    for (int attempt = 0; attempt < kMaxAttempts && !todo.empty(); ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(kTryAgainSleep);
      std::map<std::string, std::pair<Target, std::vector<size_t>>> by_node;
      try {
        for (size_t i = 0; i < todo.size(); ++i) {
          const Target target = target_of(key_slot(shard_key(shard_of(todo[i].first))));
          auto& entry = by_node[target.node.name()];
          entry.first = target;
          entry.second.push_back(i);
        }
      } catch (const StoreUnavailable&) {
        break;  // no map, or a slot without a master: all kept for later
      }
      std::vector<std::optional<Lease>> leases;
      for (auto& [name, entry] : by_node) {
        leases.emplace_back();
        try {
          leases.back().emplace(acquire_or_refresh(entry.first.node));
        } catch (const StoreUnavailable&) {
          for (size_t i : entry.second) deferred.push_back(todo[i]);
          continue;
        }
        for (size_t i : entry.second) {
          const auto& [item_id, n] = todo[i];
          leases.back()->send(Command("HINCRBY").arg(shard_key(shard_of(item_id))).arg(item_id).arg(n));
        }
        if (entry.first.has_replica) leases.back()->send(wait_command());
      }
      std::vector<std::pair<std::string, int64_t>> again;
      bool refresh = false;
      size_t l = 0;
      for (auto& [name, entry] : by_node) {
        std::optional<Lease>& c = leases[l++];
        if (!c) continue;
        size_t read = 0;
        try {
          for (size_t i : entry.second) {
            Reply reply = c->receive_raw();
            ++read;
            if (reply->type != REDIS_REPLY_ERROR) continue;
            switch (classify(*reply, nullptr)) {
              case ErrorKind::moved:
              case ErrorKind::ask:
              case ErrorKind::stale:
                refresh = true;
                [[fallthrough]];
              case ErrorKind::try_again: again.push_back(todo[i]); break;
              case ErrorKind::cluster_down:
                refresh = true;
                [[fallthrough]];
              case ErrorKind::unavailable: deferred.push_back(todo[i]); break;
              case ErrorKind::other:
                if (!error)
                  error.emplace(c->describe() + ": HINCRBY " + shard_key(shard_of(todo[i].first)) + " " +
                                printable_id(todo[i].first) + ": " + std::string(reply->str, reply->len));
                break;
            }
          }
          if (entry.first.has_replica) {
            Reply waited = c->receive_raw();
            if (waited->type == REDIS_REPLY_INTEGER) check_wait(*c, waited, entry.first);
          }
          c->release();
        } catch (const StoreUnavailable&) {
          for (size_t k = read; k < entry.second.size(); ++k) deferred.push_back(todo[entry.second[k]]);
        }
      }
      if (refresh) refresh_map(0, false);
      todo = std::move(again);
    }
    deferred.insert(deferred.end(), todo.begin(), todo.end());
    if (!deferred.empty()) {
      std::lock_guard lock(pending_mutex_);
      for (const auto& [id, n] : deferred) pending_counts_[id] += n;
    }
    if (error) throw *error;
  }

  bool counts_pending() {
    std::lock_guard lock(pending_mutex_);
    return !pending_counts_.empty();
  }

  static int shard_of(std::string_view item_id) { return static_cast<int>(fnv1a64(item_id) % kCountShards); }

  // ---- connections -----------------------------------------------------------------------

  // A lease on `node`; when it cannot be reached, the map is refreshed (so the next call may
  // find its replica promoted) and the error stands.
  Lease acquire_or_refresh(const Node& node) {
    const uint64_t version = current_map()->version;
    try {
      return acquire(node);
    } catch (const StoreUnavailable&) {
      refresh_map(version, false);
      throw;
    }
  }

  Lease acquire(const Node& node) {
    {
      std::lock_guard lock(nodes_mutex_);
      auto& idle = idle_[node.name()];
      while (!idle.empty()) {
        Context c = std::move(idle.back());
        idle.pop_back();
        if (still_open(c.get())) return Lease(*this, node, std::move(c));
      }
    }
    return Lease(*this, node, connect(node));
  }

  void give_back(const Node& node, Context c) {
    std::lock_guard lock(nodes_mutex_);
    auto& idle = idle_[node.name()];
    if (idle.size() < kMaxIdleConnections) idle.push_back(std::move(c));
  }

  void connection_failed(const Node& node, const std::string& reason) {
    std::vector<Context> stale;  // every idle connection to the node is likely as stale
    {
      std::lock_guard lock(nodes_mutex_);
      stale.swap(idle_[node.name()]);
    }
    mark_down(node, reason);
    // The node may be gone for good (failed over): learn the new map. (Not while refreshing:
    // refresh_map asks the nodes itself.)
    if (!refreshing_here()) {
      try {
        refresh_map(0, false);
      } catch (...) {
      }
    }
  }

  static bool refreshing_here() { return in_refresh_; }

  static bool still_open(redisContext* c) {
    char byte;
    const ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  bool is_down(const Node& node) {
    std::lock_guard lock(nodes_mutex_);
    auto it = reachable_.find(node.name());
    return it != reachable_.end() && it->second == 0;
  }

  // The log says when a node goes away and when it is back, once each (not per request).
  void mark_down(const Node& node, const std::string& reason) {
    bool log = false;
    {
      std::lock_guard lock(nodes_mutex_);
      int& state = reachable_.try_emplace(node.name(), -1).first->second;
      log = state != 0;
      state = 0;
    }
    if (log && log_)
      log_(description_ + " node " + node.name() + " unreachable (" + reason +
           "); answering 503 for its slots until it is back or failed over");
  }
  void mark_up(const Node& node) {
    bool log = false;
    {
      std::lock_guard lock(nodes_mutex_);
      int& state = reachable_.try_emplace(node.name(), -1).first->second;
      log = state == 0;
      state = 1;
    }
    if (log && log_) log_(description_ + " node " + node.name() + " reachable again");
  }

  Context connect(const Node& node) {
    Context c(redisConnectWithTimeout(node.host.c_str(), node.port, kConnectTimeout));
    const std::string where = description_ + " node " + node.name();
    if (!c) throw StoreUnavailable(where + ": cannot connect: out of memory");
    if (c->err) {
      const std::string reason = c->errstr;
      mark_down(node, reason);
      throw StoreUnavailable(where + ": cannot connect: " + reason);
    }
    if (redisSetTimeout(c.get(), kCommandTimeout) != REDIS_OK)
      throw StoreUnavailable(where + ": cannot set the command timeout: " + c->errstr);
    redisEnableKeepAlive(c.get());
    return c;
  }

  const std::vector<Node> seeds_;
  const int64_t max_per_user_;
  std::string description_;
  const std::function<void(const std::string&)> log_;
  mutable std::mutex map_mutex_;
  std::shared_ptr<const SlotMap> map_;
  std::mutex refresh_mutex_;
  Clock::time_point last_refresh_{};
  std::mutex nodes_mutex_;
  std::unordered_map<std::string, std::vector<Context>> idle_;
  std::unordered_map<std::string, int> reachable_;  // -1 not yet known, 0 down, 1 up
  std::unordered_map<std::string, bool> unreplicated_;
  std::unordered_set<std::string> script_nodes_;  // nodes the append script was loaded on
  std::mutex pending_mutex_;
  CountDeltas pending_counts_;  // count changes not applied yet (add_counts)
  redis::AppendScript script_;
  static thread_local bool in_refresh_;
};

thread_local bool RedisClusterStore::in_refresh_ = false;

}  // namespace

std::unique_ptr<HistoryStore> make_redis_cluster_store(const std::vector<std::pair<std::string, int>>& seeds,
                                                       const StoreOptions& options) {
  std::vector<Node> nodes;
  for (const auto& [host, port] : seeds) nodes.push_back({host, port});
  return std::make_unique<RedisClusterStore>(std::move(nodes), options);
}

}  // namespace seqrec::history
