// The history store: every user's interactions, oldest first, capped. One small interface,
// three backends (product.md "History store"):
//   lmdb:PATH                 embedded, durable: an append returns only after its commit is on disk
//   redis://HOST:PORT[/DB]    shared by replicas; one key per user (Redis Cluster friendly)
//   memory                    tests only
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
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

// Every method may be called from many threads at once. Besides StoreUnavailable (backend
// unreachable: retry later, 503), methods throw seqrec::Error for a fault that retrying will
// not fix (a corrupt stored value, a full LMDB map, a Redis key of the wrong type): a 500.
class HistoryStore {
 public:
  virtual ~HistoryStore() = default;

  // The user's interactions, oldest first (in the order they were appended); empty when
  // the user is unknown. Throws StoreUnavailable.
  virtual std::vector<Interaction> get(std::string_view user_id) = 0;

  // Appends in the given order, trims to max_per_user (oldest dropped) and keeps the item
  // counts equal to the stored interactions (appended ones up, trimmed ones down). Returns only once durable (LMDB: committed
  // and synced). Throws StoreUnavailable.
  virtual void append(std::string_view user_id, std::span<const Interaction> interactions) = 0;

  // Bulk load: many users at once, as fast as the backend allows (import); same semantics
  // as append for each user.
  virtual void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) = 0;

  // Erases the user's history and its contribution to the item counts (a right-to-erasure
  // request leaves no trace in cold-start answers); returns whether the user existed.
  // Throws StoreUnavailable.
  virtual bool erase(std::string_view user_id) = 0;

  // Stored interactions per item id (imported + ingested, minus trimmed and erased), items
  // with none left omitted, most counted first (ties by id): the popularity used for cold start. Throws StoreUnavailable.
  virtual std::vector<std::pair<std::string, uint64_t>> item_counts() = 0;

  // Whether the backend is reachable now (GET /readyz). Never throws.
  virtual bool ready() = 0;

  // "lmdb:/var/lib/seqrec", "redis://127.0.0.1:6379/0", "memory" — for logs and /model.
  virtual std::string describe() const = 0;
};

// Opens a store from its STORE text. Throws seqrec::Error naming the text on a bad one.
std::unique_ptr<HistoryStore> open_store(const std::string& spec, const StoreOptions& options = {});

}  // namespace seqrec::history
