// What the Redis backends (redis_store.cc, redis_cluster_store.cc) share: binary-safe
// commands, replies, and the two ways an append reaches a user's list (one key, so a Redis
// Cluster slot holds a user's whole history):
//
//  - in time order (every appended timestamp >= the last stored one; the common case): one
//    EVALSHA of kAppendScript, which checks the order against the list's last timestamp,
//    RPUSHes and trims to the cap atomically, returning what the cap trimmed. One round trip,
//    as RPUSH + LTRIM in a MULTI were.
//  - otherwise: WATCH the list, read it, merge in time order here (time_order.h), and rewrite
//    it in a MULTI (DEL + RPUSH); when another writer touched the list meanwhile, EXEC does
//    nothing and the merge starts over.
//
// Internal to server/history.
#pragma once

#include <hiredis/hiredis.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/request.h"

namespace seqrec::history::redis {

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
  Command() = default;
  explicit Command(std::string_view name) { arg(name); }
  Command& arg(const char* a) { return arg(std::string_view(a)); }
  Command& arg(std::string_view a) {
    storage_.emplace_back(a);
    return *this;
  }
  Command& arg(std::string&& a) {
    storage_.push_back(std::move(a));
    return *this;
  }
  Command& arg(int64_t n) { return arg(std::to_string(n)); }
  void append_to(redisContext* c) const;
  size_t bytes() const;
  const std::string& name() const { return storage_.front(); }

 private:
  std::vector<std::string> storage_;
};

// Item id → change of its stored count.
using CountDeltas = std::unordered_map<std::string, int64_t>;

// A connection as the shared code sees it; each backend decides what an error reply means.
class Connection {
 public:
  virtual ~Connection() = default;
  virtual void send(const Command& command) = 0;
  // The next reply, error replies included. Throws StoreUnavailable when the connection fails.
  virtual Reply receive_raw() = 0;
  // Throws for an error reply: seqrec::Error on one Redis; in a cluster also a redirect or an
  // outage (MOVED, ASK, CLUSTERDOWN, TRYAGAIN).
  [[noreturn]] virtual void fail(const redisReply& error) = 0;
  // The next reply; an error reply goes to fail().
  Reply receive();
  // For messages: "redis://host:port/0".
  virtual std::string describe() const = 0;
};

bool is_error(const redisReply& reply, std::string_view prefix);

// The SHA-1 of kAppendScript as Redis names it, learnt with SCRIPT LOAD on first use.
class AppendScript {
 public:
  // Loads the script on `c` when its SHA-1 is not known yet.
  void ensure_loaded(Connection& c);
  // Loads the script on `c` whatever is known (a cluster loads it on each node).
  void load(Connection& c);
  // EVALSHA (or EVAL with the source when `by_source`) for an in-order append.
  Command command(bool by_source, std::string_view key, int64_t cap, std::span<const Interaction> appended) const;

 private:
  mutable std::mutex mutex_;
  std::string sha_;
};

// What became of an append sent as the script.
enum class ScriptOutcome {
  appended,      // done; the trimmed elements were subtracted from `deltas`, the appended added
  out_of_order,  // nothing written: merge_append it
  no_script,     // the server did not know the script (restarted, flushed): send it by source
};

// Whether an append can go as the script (its own timestamps are in order).
bool script_can_append(std::span<const Interaction> appended);

// Reads the script's reply (the error replies of `c`'s policy are raised); `user_label` names
// the user in messages.
ScriptOutcome receive_append(Connection& c, std::span<const Interaction> appended, CountDeltas& deltas,
                             const std::string& user_label);

// The merge path: WATCH, LRANGE, merge, MULTI DEL RPUSH EXEC, retried while others write the
// same list. Counts appended up and trimmed down into `deltas`.
void merge_append(Connection& c, std::string_view key, std::span<const Interaction> appended, int64_t cap,
                  CountDeltas& deltas, const std::string& user_label);

// One append on one connection: the script when it can, else (or when the script says the
// list holds later times) the merge.
void append_user(Connection& c, AppendScript& script, std::string_view key, std::span<const Interaction> appended,
                 int64_t cap, CountDeltas& deltas, const std::string& user_label);

// Erases one list in a MULTI (LRANGE + DEL); its items go down in `deltas`. Whether it existed.
bool erase_user(Connection& c, std::string_view key, CountDeltas& deltas, const std::string& user_label);

// A user's list (LRANGE reply) decoded; a bad element is a seqrec::Error naming the user.
std::vector<Interaction> decode_elements(const redisReply& list, const std::string& user_label);

// Subtracts the items of stored list elements (an LRANGE reply) from `deltas`; an element
// that does not decode is skipped (its item cannot be known).
void subtract_elements(const redisReply& elements, CountDeltas& deltas);

// Parses a HSCAN reply's page of item → count into `counts` (a count <= 0 removes the item);
// returns the next cursor. `key` names the hash in messages.
std::string read_count_page(const redisReply& reply, const std::string& key,
                            std::unordered_map<std::string, uint64_t>& counts, const std::string& where);

// The zigzag LEB128 value of a timestamp, as encoding.h stores it.
uint64_t zigzag(int64_t timestamp);

}  // namespace seqrec::history::redis
