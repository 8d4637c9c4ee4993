// The embedded, durable store: one LMDB environment (a directory) with three named databases,
//   users          key(user id)  → encoded history (encoding.h), in time order (time_order.h)
//   item_counts    key(item id)  → uint64 little-endian count of the stored interactions with the
//                                  item [+ the full id, for hashed keys]; absent when 0
//   long_user_ids  key(user id)  → the user id, for ids too long to be their own key (hashed),
//                                  so that a walk over the users can name them
// key(id) is '=' + the id, or '#' + its SHA-256 when the id is longer than LMDB's key limit.
// An append in time order (the common case) adds its records to the stored bytes after one
// validating pass over them; one that is not decodes the history, merges and re-encodes it.
// Every write is a transaction committed with LMDB's default durable sync, so an append that
// returned survives kill -9 (and power loss). Concurrent appends are group-committed: one
// thread writes everything queued in one transaction and one sync, the others wait for it.
#include <lmdb.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "server/history/backends.h"
#include "server/history/encoding.h"
#include "server/history/time_order.h"

namespace seqrec::history {
namespace {

// Largest encoded batch written by one append_many transaction: bounds LMDB's dirty pages.
constexpr size_t kMaxBytesPerTransaction = size_t{64} << 20;
constexpr unsigned kMaxReaders = 1024;
constexpr unsigned kNamedDatabases = 3;

// A stored value that does not decode: the caller's request fails, the batch goes on.
class CorruptValue : public Error {
 public:
  using Error::Error;
};

// LMDB forbids opening one environment twice in a process (closing either breaks the other's
// locks), so each directory may back one open store at a time.
// Item id → change of its count, applied in the same transaction as the histories.
using CountDeltas = std::map<std::string, int64_t>;

class OpenDirectoryClaim {
 public:
  OpenDirectoryClaim() = default;
  OpenDirectoryClaim(const std::string& path, const std::string& description) {
    std::error_code ec;
    const std::filesystem::path canonical = std::filesystem::canonical(path, ec);
    key_ = ec ? path : canonical.string();
    std::lock_guard lock(mutex());
    if (!open().insert(key_).second) {
      key_.clear();
      throw Error(description + ": already open in this process (share the one store object)");
    }
  }
  OpenDirectoryClaim(OpenDirectoryClaim&& other) noexcept : key_(std::exchange(other.key_, {})) {}
  OpenDirectoryClaim& operator=(OpenDirectoryClaim&& other) noexcept {
    release();
    key_ = std::exchange(other.key_, {});
    return *this;
  }
  ~OpenDirectoryClaim() { release(); }

 private:
  void release() {
    if (key_.empty()) return;
    std::lock_guard lock(mutex());
    open().erase(key_);
    key_.clear();
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::set<std::string>& open() {
    static std::set<std::string> paths;
    return paths;
  }
  std::string key_;
};

class LmdbStore final : public HistoryStore {
 public:
  LmdbStore(const std::string& path, const StoreOptions& options)
      : path_(path), max_per_user_(std::max<int64_t>(options.max_per_user, 1)) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) throw Error(describe() + ": cannot create the directory: " + ec.message());
    if (!std::filesystem::is_directory(path, ec)) throw Error(describe() + ": not a directory");
    claim_ = OpenDirectoryClaim(path, describe());
    check(mdb_env_create(&env_), "mdb_env_create");
    try {
      check(mdb_env_set_maxdbs(env_, kNamedDatabases), "mdb_env_set_maxdbs");
      check(mdb_env_set_mapsize(env_, options.lmdb_map_bytes), "mdb_env_set_mapsize");
      check(mdb_env_set_maxreaders(env_, kMaxReaders), "mdb_env_set_maxreaders");
      // MDB_NOTLS: read transactions are not tied to threads (the server's threads share
      // the store). No MDB_NOSYNC / MDB_NOMETASYNC: a commit is on disk when it returns.
      const int rc = mdb_env_open(env_, path.c_str(), MDB_NOTLS, 0644);
      if (rc != 0) throw Error(describe() + ": cannot open: " + mdb_strerror(rc));
      int stale_readers = 0;
      mdb_reader_check(env_, &stale_readers);  // slots left by a killed process
      max_key_size_ = static_cast<size_t>(mdb_env_get_maxkeysize(env_));
      MDB_txn* txn = nullptr;
      check(mdb_txn_begin(env_, nullptr, 0, &txn), "begin");
      int rc_open = mdb_dbi_open(txn, "users", MDB_CREATE, &users_);
      if (rc_open == 0) rc_open = mdb_dbi_open(txn, "item_counts", MDB_CREATE, &counts_);
      if (rc_open == 0) rc_open = mdb_dbi_open(txn, "long_user_ids", MDB_CREATE, &long_ids_);
      if (rc_open != 0) {
        mdb_txn_abort(txn);
        check(rc_open, "opening the named databases");
      }
      check(mdb_txn_commit(txn), "commit");
    } catch (...) {
      mdb_env_close(env_);
      throw;
    }
  }

  ~LmdbStore() override { mdb_env_close(env_); }

  std::vector<Interaction> get(std::string_view user_id) override {
    ReadTxn txn(*this);
    const std::string key = key_for(user_id);
    MDB_val k{key.size(), const_cast<char*>(key.data())}, v;
    const int rc = mdb_get(txn.txn, users_, &k, &v);
    if (rc == MDB_NOTFOUND) return {};
    check(rc, "get");
    std::vector<Interaction> out;
    try {
      decode_history({static_cast<const char*>(v.mv_data), v.mv_size}, out);
    } catch (const Error& e) {
      throw Error(describe() + ": user " + printable_id(user_id) + ": " + e.what());
    }
    return out;
  }

  void append(std::string_view user_id, std::span<const Interaction> interactions) override {
    if (interactions.empty()) return;
    PendingAppend mine{user_id, interactions, false, nullptr};
    std::unique_lock lock(queue_mutex_);
    queue_.push_back(&mine);
    while (!mine.done) {
      if (writer_active_) {
        queue_changed_.wait(lock);
        continue;
      }
      // Become the writer for everything queued so far (our own append included).
      writer_active_ = true;
      std::vector<PendingAppend*> batch;
      batch.swap(queue_);
      lock.unlock();
      write_batch(batch);
      lock.lock();
      for (PendingAppend* p : batch) p->done = true;
      writer_active_ = false;
      queue_changed_.notify_all();
    }
    if (mine.error) std::rethrow_exception(mine.error);
  }

  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    size_t begin = 0;
    while (begin < users.size()) {
      // One transaction (one sync) per ~kMaxBytesPerTransaction of new data.
      size_t end = begin, bytes = 0;
      while (end < users.size() && (end == begin || bytes < kMaxBytesPerTransaction)) {
        for (const Interaction& it : users[end].second) bytes += it.item_id.size() + 16;
        ++end;
      }
      WriteTxn txn(*this);
      CountDeltas counts;
      // A corrupt stored value fails the whole transaction: an import never half-applies.
      for (size_t i = begin; i < end; ++i) append_in_txn(txn.txn, users[i].first, users[i].second, counts);
      add_counts(txn.txn, counts);
      txn.commit();
      begin = end;
    }
  }

  // The history and its contribution to the item counts go in one transaction.
  bool erase(std::string_view user_id) override {
    WriteTxn txn(*this);
    const std::string key = key_for(user_id);
    MDB_val k{key.size(), const_cast<char*>(key.data())}, v;
    int rc = mdb_get(txn.txn, users_, &k, &v);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, "get");
    CountDeltas counts;
    std::vector<Interaction> stored;
    try {
      decode_history({static_cast<const char*>(v.mv_data), v.mv_size}, stored);
    } catch (const Error&) {
      stored.clear();  // unreadable: its items cannot be known; the history still goes
    }
    for (const Interaction& it : stored) --counts[it.item_id];
    check(mdb_del(txn.txn, users_, &k, nullptr), "delete");
    if (key[0] == '#') {
      rc = mdb_del(txn.txn, long_ids_, &k, nullptr);
      if (rc != MDB_NOTFOUND) check(rc, "delete");
    }
    add_counts(txn.txn, counts);
    txn.commit();
    return true;
  }

  std::vector<std::pair<std::string, uint64_t>> item_counts() override {
    std::vector<std::pair<std::string, uint64_t>> out;
    ReadTxn txn(*this);
    MDB_cursor* cursor = nullptr;
    check(mdb_cursor_open(txn.txn, counts_, &cursor), "cursor");
    MDB_val k, v;
    int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST);
    for (; rc == 0; rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
      const std::string_view key{static_cast<const char*>(k.mv_data), k.mv_size};
      const std::string_view value{static_cast<const char*>(v.mv_data), v.mv_size};
      try {
        out.emplace_back(std::string(count_id(key, value)), decode_count(value));
      } catch (...) {
        mdb_cursor_close(cursor);
        throw;
      }
    }
    mdb_cursor_close(cursor);
    if (rc != MDB_NOTFOUND) check(rc, "cursor");
    sort_item_counts(out);
    return out;
  }

  std::unique_ptr<UserScan> scan_users() override { return std::make_unique<Scan>(*this); }

  bool ready() override { return true; }
  std::string describe() const override { return "lmdb:" + path_; }

 private:
  struct Cursor {
    Cursor(LmdbStore& store, MDB_txn* txn, MDB_dbi dbi) { store.check(mdb_cursor_open(txn, dbi, &cursor), "cursor"); }
    ~Cursor() { mdb_cursor_close(cursor); }
    MDB_cursor* cursor = nullptr;
  };

  // A walk in key order, one short read transaction per batch (a long one would keep every
  // page it saw from being reused while writers go on), resuming after the last key seen.
  class Scan final : public UserScan {
   public:
    explicit Scan(LmdbStore& store) : store_(store) {
      ReadTxn txn(store);
      MDB_stat stat{};
      store.check(mdb_stat(txn.txn, store.users_, &stat), "stat");
      estimated_ = stat.ms_entries;
    }

    bool next(std::vector<StoredUser>& batch, size_t max_users) override {
      batch.clear();
      if (done_) return false;
      max_users = std::max<size_t>(max_users, 1);
      ReadTxn txn(store_);
      Cursor cursor(store_, txn.txn, store_.users_);
      MDB_val k{}, v{};
      int rc;
      if (after_) {
        k = {after_->size(), after_->data()};
        rc = mdb_cursor_get(cursor.cursor, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && std::string_view(static_cast<const char*>(k.mv_data), k.mv_size) == *after_)
          rc = mdb_cursor_get(cursor.cursor, &k, &v, MDB_NEXT);
      } else {
        rc = mdb_cursor_get(cursor.cursor, &k, &v, MDB_FIRST);
      }
      for (; rc == 0; rc = mdb_cursor_get(cursor.cursor, &k, &v, MDB_NEXT)) {
        const std::string_view key{static_cast<const char*>(k.mv_data), k.mv_size};
        batch.push_back(store_.read_user(txn.txn, key, {static_cast<const char*>(v.mv_data), v.mv_size}));
        after_ = std::string(key);
        if (batch.size() == max_users) return true;
      }
      if (rc != MDB_NOTFOUND) store_.check(rc, "cursor");
      done_ = true;
      return !batch.empty();
    }

    std::optional<uint64_t> estimated_users() const override { return estimated_; }

   private:
    LmdbStore& store_;
    std::optional<std::string> after_;
    bool done_ = false;
    uint64_t estimated_ = 0;
  };

  // One entry of the users database as a walk reports it; bad bytes are the user's error.
  StoredUser read_user(MDB_txn* txn, std::string_view key, std::string_view value) const {
    StoredUser user;
    if (!key.empty() && key[0] == '=') {
      user.user_id = key.substr(1);
    } else if (key.size() == 33 && key[0] == '#') {
      MDB_val k{key.size(), const_cast<char*>(key.data())}, id;
      const int rc = mdb_get(txn, long_ids_, &k, &id);
      if (rc == 0) {
        user.user_id.assign(static_cast<const char*>(id.mv_data), id.mv_size);
      } else {
        if (rc != MDB_NOTFOUND) check(rc, "get");
        // Written by a seqrec before long ids were kept: only the id's hash is known.
        static constexpr char kHex[] = "0123456789abcdef";
        std::string hex;
        for (char c : key.substr(1)) {
          hex += kHex[static_cast<uint8_t>(c) >> 4];
          hex += kHex[static_cast<uint8_t>(c) & 15];
        }
        user.user_id = "sha256:" + hex;
        user.error = describe() + ": a user id longer than " + std::to_string(max_key_size_ - 1) +
                     " bytes stored by an older seqrec under its SHA-256 " + hex + " only: the id is unknown";
        return user;
      }
    } else {
      user.user_id = key;
      user.error = describe() + ": users entry with a malformed key " + printable_id(key);
      return user;
    }
    try {
      decode_history(value, user.interactions);
    } catch (const Error& e) {
      user.interactions.clear();
      user.error = describe() + ": user " + printable_id(user.user_id) + ": " + e.what();
    }
    return user;
  }

  struct PendingAppend {
    std::string_view user_id;
    std::span<const Interaction> interactions;
    bool done = false;
    std::exception_ptr error;
  };

  struct ReadTxn {
    explicit ReadTxn(LmdbStore& store) { store.check(mdb_txn_begin(store.env_, nullptr, MDB_RDONLY, &txn), "begin"); }
    ~ReadTxn() { mdb_txn_abort(txn); }
    MDB_txn* txn = nullptr;
  };

  struct WriteTxn {
    explicit WriteTxn(LmdbStore& store) : store(store) { store.check(mdb_txn_begin(store.env_, nullptr, 0, &txn), "begin"); }
    ~WriteTxn() {
      if (txn) mdb_txn_abort(txn);
    }
    void commit() {
      const int rc = mdb_txn_commit(txn);  // frees the transaction even when it fails
      txn = nullptr;
      store.check(rc, "commit");
    }
    LmdbStore& store;
    MDB_txn* txn = nullptr;
  };

  // Errors that may pass (a full reader table, a full disk, I/O) are StoreUnavailable;
  // the rest need an operator.
  void check(int rc, const char* what) const {
    if (rc == 0) return;
    if (rc == MDB_MAP_FULL)
      throw Error(describe() + ": the database is full (its map size is " + std::to_string(map_bytes_gib()) +
                  " GiB); reopen it with a larger map size");
    const std::string message = describe() + ": " + what + ": " + mdb_strerror(rc);
    if (rc == MDB_READERS_FULL || rc == ENOSPC || rc == EIO || rc == ENOMEM || rc == EAGAIN)
      throw StoreUnavailable(message);
    throw Error(message);
  }

  uint64_t map_bytes_gib() const {
    MDB_envinfo info{};
    mdb_env_info(env_, &info);
    return info.me_mapsize >> 30;
  }

  // LMDB keys are at most max_key_size_ bytes; a longer id is stored under its SHA-256.
  // The tag byte keeps the two kinds of key from ever colliding.
  std::string key_for(std::string_view id) const {
    std::string key;
    if (id.size() + 1 <= max_key_size_) {
      key.reserve(id.size() + 1);
      key.push_back('=');
      key.append(id);
    } else {
      const auto digest = sha256(id);
      key.push_back('#');
      key.append(reinterpret_cast<const char*>(digest.data()), digest.size());
    }
    return key;
  }

  std::string_view count_id(std::string_view key, std::string_view value) const {
    if (!key.empty() && key[0] == '=') return key.substr(1);
    if (!key.empty() && key[0] == '#' && value.size() > 8) return value.substr(8);
    throw Error(describe() + ": corrupt item count entry (key of " + std::to_string(key.size()) + " bytes)");
  }

  uint64_t decode_count(std::string_view value) const {
    if (value.size() < 8) throw Error(describe() + ": corrupt item count value (" + std::to_string(value.size()) + " bytes)");
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(value[i])) << (8 * i);
    return n;
  }

  // Merges into one user's stored history inside `txn` (time_order.h), trimming to the cap,
  // and tallies the items in `counts`. Throws CorruptValue (nothing written) when the stored
  // value is bad.
  void append_in_txn(MDB_txn* txn, std::string_view user_id, std::span<const Interaction> interactions,
                     CountDeltas& counts) {
    if (interactions.empty()) return;
    const std::string key = key_for(user_id);
    MDB_val k{key.size(), const_cast<char*>(key.data())}, v;
    const int rc = mdb_get(txn, users_, &k, &v);
    const size_t cap = static_cast<size_t>(max_per_user_);
    std::string value;
    RecordIndex index;
    bool in_order = true;
    std::vector<Interaction> history;
    std::string_view stored;
    if (rc == MDB_NOTFOUND) {
      in_order = appends_in_order(kEarliestTime, interactions);
    } else {
      check(rc, "get");
      stored = {static_cast<const char*>(v.mv_data), v.mv_size};
      try {
        index = index_records(stored);
        in_order = appends_in_order(index.latest_timestamp.value_or(kEarliestTime), interactions);
        if (!in_order) decode_history(stored, history);
      } catch (const Error& e) {
        throw CorruptValue(describe() + ": user " + printable_id(user_id) + ": " + e.what());
      }
    }
    if (!in_order) {
      // Older than what is stored (or unsorted itself): merge and re-encode.
      std::vector<Interaction> trimmed;
      merge_in_time_order(history, interactions);
      trim_oldest(history, cap, trimmed);
      for (const Interaction& it : trimmed) --counts[it.item_id];
      for (const Interaction& it : interactions) ++counts[it.item_id];
      value = encode_history(history);
      MDB_val nv{value.size(), value.data()};
      check(mdb_put(txn, users_, &k, &nv, 0), "put");
      remember_long_id(txn, key, user_id);
      return;
    }
    if (rc == MDB_NOTFOUND) {
      value.push_back(static_cast<char>(kEncodingVersion));
    } else {
      value.reserve(stored.size() + interactions.size() * 24);
      value.assign(stored);
    }
    // In time order: the new records go after the stored bytes.
    std::vector<size_t>& offsets = index.offsets;
    for (const Interaction& it : interactions) {
      offsets.push_back(value.size());
      encode_records({&it, 1}, value);
    }
    if (offsets.size() > cap) {
      // The trimmed interactions leave the counts with the history.
      const size_t cut = offsets[offsets.size() - cap];
      std::vector<Interaction> removed;
      decode_history(std::string_view(value).substr(0, cut), removed);
      for (const Interaction& it : removed) --counts[it.item_id];
      value.erase(1, cut - 1);
    }
    MDB_val nv{value.size(), value.data()};
    check(mdb_put(txn, users_, &k, &nv, 0), "put");
    remember_long_id(txn, key, user_id);
    for (const Interaction& it : interactions) ++counts[it.item_id];
  }

  // A hashed key keeps its id on the side, for walks over the users (after the user's own
  // put: LMDB values read in a write transaction are valid only until its next update).
  void remember_long_id(MDB_txn* txn, const std::string& key, std::string_view user_id) {
    if (key[0] != '#') return;
    MDB_val k{key.size(), const_cast<char*>(key.data())};
    MDB_val id{user_id.size(), const_cast<char*>(user_id.data())};
    const int rc = mdb_put(txn, long_ids_, &k, &id, MDB_NOOVERWRITE);
    if (rc != MDB_KEYEXIST) check(rc, "put");
  }

  // Applies count changes; a count that reaches 0 is deleted (items with no stored
  // interaction are not listed).
  void add_counts(MDB_txn* txn, const CountDeltas& counts) {
    for (const auto& [item_id, delta] : counts) {
      if (delta == 0) continue;
      const std::string key = key_for(item_id);
      MDB_val k{key.size(), const_cast<char*>(key.data())}, v;
      const int rc = mdb_get(txn, counts_, &k, &v);
      int64_t total = delta;
      if (rc == 0)
        total += static_cast<int64_t>(decode_count({static_cast<const char*>(v.mv_data), v.mv_size}));
      else if (rc != MDB_NOTFOUND)
        check(rc, "get");
      if (total <= 0) {
        if (rc == 0) check(mdb_del(txn, counts_, &k, nullptr), "delete");
        continue;
      }
      std::string value(8, '\0');
      for (int i = 0; i < 8; ++i) value[i] = static_cast<char>((static_cast<uint64_t>(total) >> (8 * i)) & 0xff);
      if (key[0] == '#') value.append(item_id);  // the hashed key alone cannot give the id back
      MDB_val nv{value.size(), value.data()};
      check(mdb_put(txn, counts_, &k, &nv, 0), "put");
    }
  }

  // One transaction for the whole batch; a user whose stored value is corrupt fails alone.
  void write_batch(const std::vector<PendingAppend*>& batch) {
    try {
      WriteTxn txn(*this);
      CountDeltas counts;
      for (PendingAppend* p : batch) {
        try {
          append_in_txn(txn.txn, p->user_id, p->interactions, counts);
        } catch (const CorruptValue&) {
          p->error = std::current_exception();
        }
      }
      add_counts(txn.txn, counts);
      txn.commit();
    } catch (...) {
      const std::exception_ptr error = std::current_exception();
      for (PendingAppend* p : batch)
        if (!p->error) p->error = error;
    }
  }

  const std::string path_;
  const int64_t max_per_user_;
  OpenDirectoryClaim claim_;
  MDB_env* env_ = nullptr;
  MDB_dbi users_ = 0, counts_ = 0, long_ids_ = 0;
  size_t max_key_size_ = 511;

  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::vector<PendingAppend*> queue_;
  bool writer_active_ = false;
};

}  // namespace

std::unique_ptr<HistoryStore> make_lmdb_store(const std::string& path, const StoreOptions& options) {
  return std::make_unique<LmdbStore>(path, options);
}

}  // namespace seqrec::history
