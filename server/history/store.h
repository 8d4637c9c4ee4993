// The history store: every user's interactions in time order, capped. One small interface,
// four backends (product.md "History store"):
//   lmdb:PATH                          embedded, durable: an append returns only after its commit is on disk
//   redis://HOST:PORT[/DB]             shared by replicas; one key per user
//   redis-cluster://HOST:PORT[,...]    shared by replicas, spread over a Redis Cluster
//   memory                             tests only
//
// Time order (the same in every backend; server/history/time_order.h has the rules):
//  - a history is kept sorted by timestamp, oldest first; equal timestamps keep arrival order;
//  - an interaction without a timestamp counts as "now": it is placed after everything already
//    stored (and after the ones before it in the same append), and keeps that place: it sorts
//    as if it had the timestamp of the interaction before it, which is the engine's rule for a
//    missing timestamp (engine/request.h), so a stored history is already in the engine's order;
//  - appended interactions are merged in by timestamp; the cap trims the oldest by time, which
//    may be an appended interaction older than everything a full history holds;
//  - an append whose timestamps are all >= the last stored one (the common case) is written
//    without reading the history back (LMDB: bytes appended to the value; Redis: RPUSH);
//  - a history written by an older seqrec in arrival order is put in time order by the first
//    append that is not in order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/request.h"

namespace seqrec::history {

// The store cannot be reached right now (Redis down, ...): routes that need it answer 503.
class StoreUnavailable : public Error {
 public:
  using Error::Error;
};

struct StoreOptions {
  int64_t max_per_user = 10000;  // beyond this the oldest interactions are trimmed
  // LMDB: the memory map's size, the most the database can ever hold (a sparse file, so a
  // large value costs nothing up front). A write beyond it fails with an Error saying so.
  uint64_t lmdb_map_bytes = uint64_t{64} << 30;
  // One line for the server's log when the backend goes away or comes back (Redis).
  std::function<void(const std::string&)> log;
};

// One user as a walk over the store finds it (HistoryStore::scan_users).
struct StoredUser {
  std::string user_id;
  std::vector<Interaction> interactions;  // oldest first
  // Set when the stored history cannot be read (corrupt bytes, a foreign value): what is
  // wrong, naming the user; `interactions` is then empty. The walk goes on past it.
  std::optional<std::string> error;
};

// A walk over every user of a store, a batch at a time. Users stored for the whole walk are
// visited exactly once; users added or erased meanwhile may or may not be. One walk is used by
// one thread at a time (walks of their own may run alongside each other and everything else).
class UserScan {
 public:
  virtual ~UserScan() = default;
  // Replaces `batch` with the next users (at most max_users, at least one unless the walk is
  // over); false, with `batch` empty, once every user has been visited. Throws StoreUnavailable
  // (the walk may be resumed by calling next again) or seqrec::Error.
  virtual bool next(std::vector<StoredUser>& batch, size_t max_users) = 0;
  // How many users the store holds, when the backend knows it cheaply (for a progress bar).
  virtual std::optional<uint64_t> estimated_users() const { return std::nullopt; }
};

// Every method may be called from many threads at once. Besides StoreUnavailable (backend
// unreachable: retry later, 503), methods throw seqrec::Error for a fault that retrying will
// not fix (a corrupt stored value, a full LMDB map, a Redis key of the wrong type): a 500.
class HistoryStore {
 public:
  virtual ~HistoryStore() = default;

  // The user's interactions in time order, oldest first (see "Time order" above); empty when
  // the user is unknown. Throws StoreUnavailable.
  virtual std::vector<Interaction> get(std::string_view user_id) = 0;

  // Merges the interactions into the user's history in time order (taken in the given order:
  // it decides between equal timestamps), trims to max_per_user (the oldest by time dropped)
  // and keeps the item counts equal to the stored interactions (appended ones up, trimmed ones
  // down). Returns only once durable (LMDB: committed and synced; Redis Cluster: see
  // redis_cluster_store.cc for what a failover may lose). Throws StoreUnavailable.
  virtual void append(std::string_view user_id, std::span<const Interaction> interactions) = 0;

  // Bulk load: many users at once, as fast as the backend allows (import); same semantics
  // as append for each user (a user listed twice: the second list is merged after the first).
  virtual void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) = 0;

  // Erases the user's history and its contribution to the item counts (a right-to-erasure
  // request leaves no trace in cold-start answers); returns whether the user existed.
  // Throws StoreUnavailable.
  virtual bool erase(std::string_view user_id) = 0;

  // Stored interactions per item id (imported + ingested, minus trimmed and erased), items
  // with none left omitted, most counted first (ties by id): the popularity used for cold start. Throws StoreUnavailable.
  virtual std::vector<std::pair<std::string, uint64_t>> item_counts() = 0;

  // A walk over every user and their history (batch export). Throws StoreUnavailable; the
  // default is an Error for a store that cannot list its users.
  virtual std::unique_ptr<UserScan> scan_users();

  // Calls `visit` with every user, a batch of `batch_size` read at a time (scan_users).
  void for_each_user(const std::function<void(StoredUser&&)>& visit, size_t batch_size = 256);

  // Whether the backend is reachable now (GET /readyz). Never throws.
  virtual bool ready() = 0;

  // "lmdb:/var/lib/seqrec", "redis://127.0.0.1:6379/0", "redis-cluster://10.0.0.1:7000,...",
  // "memory" — for logs and /model.
  virtual std::string describe() const = 0;
};

// Opens a store from its STORE text. Throws seqrec::Error naming the text on a bad one.
std::unique_ptr<HistoryStore> open_store(const std::string& spec, const StoreOptions& options = {});

}  // namespace seqrec::history
