#include "server/history/redis_common.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <functional>
#include <random>
#include <thread>

#include "engine/error.h"
#include "server/history/backends.h"
#include "server/history/encoding.h"
#include "server/history/time_order.h"

namespace seqrec::history::redis {
namespace {

// Rewrites of one list that may be beaten by other writers before one gets through.
constexpr int kMergeAttempts = 200;  // with the backoff below: about a second of trying

// Appends in time order, or says it cannot. Lua 5.1 numbers are doubles, so a timestamp is
// compared as its zigzag varint split in two exact 32-bit halves.
//   KEYS[1]   the user's list
//   ARGV[1]   the cap
//   ARGV[2]   '' when no appended interaction has a timestamp, else the first one's zigzag
//             value, high 32 bits (ARGV[3]: low 32 bits)
//   ARGV[4..] the appended elements (encoding.h, one interaction each), in time order
// Returns {1, trimmed elements}; {0} when the list's last timestamp is later than ARGV[2..3]
// (nothing written); {-1, index from the end} when a stored element does not decode (nothing
// written).
constexpr const char* kAppendScriptSource = R"lua(
local key = KEYS[1]
local function varint(s, pos)
  local hi, lo, shift = 0, 0, 0
  while true do
    local b = string.byte(s, pos)
    if b == nil or shift > 63 then return nil end
    pos = pos + 1
    local v = b % 128
    if shift + 7 <= 32 then
      lo = lo + v * 2 ^ shift
    elseif shift >= 32 then
      hi = hi + v * 2 ^ (shift - 32)
    else
      local low_bits = 32 - shift
      local part = v % 2 ^ low_bits
      lo = lo + part * 2 ^ shift
      hi = hi + (v - part) / 2 ^ low_bits
    end
    if b < 128 then return pos, hi, lo end
    shift = shift + 7
  end
end
local function timestamp(e)
  if string.byte(e, 1) ~= 1 then return nil end
  local pos, hi, lo = varint(e, 2)
  if pos == nil then return nil end
  pos = pos + hi * 4294967296 + lo
  local flags = string.byte(e, pos)
  if flags == nil or flags > 3 then return nil end
  if flags % 2 == 0 then return false end
  local after, thi, tlo = varint(e, pos + 1)
  if after == nil then return nil end
  return true, thi, tlo
end
local function earlier(ahi, alo, bhi, blo)
  local aneg, bneg = alo % 2 == 1, blo % 2 == 1
  if aneg ~= bneg then return aneg end
  if ahi == bhi and alo == blo then return false end
  local greater = ahi > bhi or (ahi == bhi and alo > blo)
  if aneg then return greater end
  return not greater
end
if ARGV[2] ~= '' then
  -- Back from the end (negative indices) to the last element with a timestamp.
  local fhi, flo = tonumber(ARGV[2]), tonumber(ARGV[3])
  local last, step = -1, 1
  while true do
    local chunk = redis.call('LRANGE', key, last - step + 1, last)
    local found = false
    for j = #chunk, 1, -1 do
      local has, hi, lo = timestamp(chunk[j])
      if has == nil then return {-1, last - #chunk + j} end
      if has then
        if earlier(fhi, flo, hi, lo) then return {0} end
        found = true
        break
      end
    end
    if found or #chunk < step then break end
    last = last - step
    step = 64
  end
end
local n = 0
for i = 4, #ARGV, 512 do
  n = redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 511, #ARGV)))
end
local cap = tonumber(ARGV[1])
local trimmed = {}
if n > cap then
  -- LPOP with a count (Redis >= 6.2) trims and returns in one call; older: LRANGE + LTRIM.
  trimmed = redis.pcall('LPOP', key, n - cap)
  if type(trimmed) ~= 'table' or trimmed.err then
    trimmed = redis.call('LRANGE', key, 0, n - cap - 1)
    redis.call('LTRIM', key, n - cap, -1)
  end
end
return {1, trimmed}
)lua";

[[noreturn]] void unexpected(Connection& c, const std::string& user_label, const std::string& what) {
  throw Error(c.describe() + ": " + user_label + ": unexpected reply to " + what);
}

}  // namespace

void Command::append_to(redisContext* c) const {
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

size_t Command::bytes() const {
  size_t n = 0;
  for (const std::string& s : storage_) n += s.size() + 16;
  return n;
}

Reply Connection::receive() {
  Reply reply = receive_raw();
  if (reply->type == REDIS_REPLY_ERROR) fail(*reply);
  return reply;
}

bool is_error(const redisReply& reply, std::string_view prefix) {
  return reply.type == REDIS_REPLY_ERROR && std::string_view(reply.str, reply.len).starts_with(prefix);
}

uint64_t zigzag(int64_t timestamp) {
  const auto v = static_cast<uint64_t>(timestamp);
  return (v << 1) ^ static_cast<uint64_t>(timestamp >> 63);
}

void AppendScript::ensure_loaded(Connection& c) {
  {
    std::lock_guard lock(mutex_);
    if (!sha_.empty()) return;
  }
  load(c);
}

void AppendScript::load(Connection& c) {
  c.send(Command("SCRIPT").arg("LOAD").arg(kAppendScriptSource));
  Reply reply = c.receive();
  if (reply->type != REDIS_REPLY_STRING) throw Error(c.describe() + ": unexpected reply to SCRIPT LOAD");
  std::lock_guard lock(mutex_);
  sha_.assign(reply->str, reply->len);
}

Command AppendScript::command(bool by_source, std::string_view key, int64_t cap,
                              std::span<const Interaction> appended) const {
  Command command;
  if (by_source) {
    command.arg("EVAL").arg(kAppendScriptSource);
  } else {
    std::lock_guard lock(mutex_);
    command.arg("EVALSHA").arg(sha_);
  }
  command.arg("1").arg(key).arg(cap);
  const Interaction* first_timed = nullptr;
  for (const Interaction& it : appended)
    if (it.timestamp) {
      first_timed = &it;
      break;
    }
  if (first_timed) {
    const uint64_t z = zigzag(*first_timed->timestamp);
    command.arg(std::to_string(z >> 32)).arg(std::to_string(z & 0xffffffffu));
  } else {
    command.arg("").arg("");
  }
  for (const Interaction& it : appended) command.arg(encode_history({&it, 1}));
  return command;
}

bool script_can_append(std::span<const Interaction> appended) { return appends_in_order(kEarliestTime, appended); }

ScriptOutcome receive_append(Connection& c, std::span<const Interaction> appended, CountDeltas& deltas,
                             const std::string& user_label) {
  Reply reply = c.receive_raw();
  if (is_error(*reply, "NOSCRIPT")) return ScriptOutcome::no_script;
  if (reply->type == REDIS_REPLY_ERROR) c.fail(*reply);
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 || reply->element[0]->type != REDIS_REPLY_INTEGER)
    unexpected(c, user_label, "the append script");
  const long long status = reply->element[0]->integer;
  if (status == 0) return ScriptOutcome::out_of_order;
  if (status == -1) {
    const long long index = reply->elements > 1 && reply->element[1]->type == REDIS_REPLY_INTEGER
                                ? reply->element[1]->integer
                                : -1;
    throw Error(c.describe() + ": " + user_label + ": stored element " + std::to_string(index) +
                " (counted from the end) is not an encoded interaction (corrupt or foreign value)");
  }
  if (status != 1 || reply->elements != 2 || reply->element[1]->type != REDIS_REPLY_ARRAY)
    unexpected(c, user_label, "the append script");
  for (const Interaction& it : appended) ++deltas[it.item_id];
  subtract_elements(*reply->element[1], deltas);
  return ScriptOutcome::appended;
}

std::vector<Interaction> decode_elements(const redisReply& list, const std::string& user_label) {
  std::vector<Interaction> out;
  out.reserve(list.elements);
  for (size_t i = 0; i < list.elements; ++i) {
    const redisReply* e = list.element[i];
    if (e->type != REDIS_REPLY_STRING) throw Error(user_label + ": history element " + std::to_string(i) + " is not a string");
    try {
      decode_history({e->str, e->len}, out);
    } catch (const Error& error) {
      throw Error(user_label + ": element " + std::to_string(i) + ": " + error.what());
    }
  }
  return out;
}

void merge_append(Connection& c, std::string_view key, std::span<const Interaction> appended, int64_t cap,
                  CountDeltas& deltas, const std::string& user_label) {
  // Writers that keep losing the WATCH race back off a random while, doubling up to 5 ms: with
  // a fixed, immediate retry, six threads merging into one list starved each other (one gave up
  // after 20 rounds).
  thread_local std::minstd_rand jitter(static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id())));
  std::chrono::microseconds backoff(50);
  for (int attempt = 0; attempt < kMergeAttempts; ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(jitter() % static_cast<unsigned>(backoff.count() + 1)));
      backoff = std::min(backoff * 2, std::chrono::microseconds(5000));
    }
    c.send(Command("WATCH").arg(key));
    c.send(Command("LRANGE").arg(key).arg("0").arg("-1"));
    c.receive();  // +OK
    Reply list = c.receive();
    if (list->type != REDIS_REPLY_ARRAY) unexpected(c, user_label, "LRANGE");
    std::vector<Interaction> history;
    try {
      history = decode_elements(*list, user_label);
    } catch (const Error& e) {
      c.send(Command("UNWATCH"));
      c.receive();
      throw Error(c.describe() + ": " + e.what());
    }
    merge_in_time_order(history, appended);
    std::vector<Interaction> trimmed;
    trim_oldest(history, static_cast<size_t>(cap), trimmed);
    Command rpush("RPUSH");
    rpush.arg(key);
    for (const Interaction& it : history) rpush.arg(encode_history({&it, 1}));
    c.send(Command("MULTI"));
    c.send(Command("DEL").arg(key));
    c.send(rpush);
    c.send(Command("EXEC"));
    c.receive();  // +OK to MULTI
    c.receive();  // +QUEUED to DEL
    c.receive();  // +QUEUED to RPUSH
    Reply exec = c.receive();
    if (exec->type == REDIS_REPLY_NIL) continue;  // the list changed after WATCH: merge again
    if (exec->type != REDIS_REPLY_ARRAY || exec->elements != 2) unexpected(c, user_label, "EXEC");
    for (size_t i = 0; i < exec->elements; ++i)
      if (exec->element[i]->type == REDIS_REPLY_ERROR) c.fail(*exec->element[i]);
    for (const Interaction& it : appended) ++deltas[it.item_id];
    for (const Interaction& it : trimmed) --deltas[it.item_id];
    return;
  }
  throw StoreUnavailable(c.describe() + ": " + user_label + ": the history changed under " +
                         std::to_string(kMergeAttempts) + " merges in a row; retry");
}

void append_user(Connection& c, AppendScript& script, std::string_view key, std::span<const Interaction> appended,
                 int64_t cap, CountDeltas& deltas, const std::string& user_label) {
  if (appended.empty()) return;
  if (script_can_append(appended)) {
    script.ensure_loaded(c);
    c.send(script.command(false, key, cap, appended));
    ScriptOutcome outcome = receive_append(c, appended, deltas, user_label);
    if (outcome == ScriptOutcome::no_script) {
      c.send(script.command(true, key, cap, appended));
      outcome = receive_append(c, appended, deltas, user_label);
    }
    if (outcome == ScriptOutcome::appended) return;
    if (outcome == ScriptOutcome::no_script) throw Error(c.describe() + ": EVAL of the append script says NOSCRIPT");
  }
  merge_append(c, key, appended, cap, deltas, user_label);
}

bool erase_user(Connection& c, std::string_view key, CountDeltas& deltas, const std::string& user_label) {
  c.send(Command("MULTI"));
  c.send(Command("LRANGE").arg(key).arg("0").arg("-1"));
  c.send(Command("DEL").arg(key));
  c.send(Command("EXEC"));
  c.receive();  // +OK to MULTI
  c.receive();  // +QUEUED to LRANGE
  c.receive();  // +QUEUED to DEL
  Reply exec = c.receive();
  if (exec->type != REDIS_REPLY_ARRAY || exec->elements != 2) unexpected(c, user_label, "LRANGE + DEL");
  if (exec->element[0]->type == REDIS_REPLY_ERROR) c.fail(*exec->element[0]);
  if (exec->element[0]->type != REDIS_REPLY_ARRAY || exec->element[1]->type != REDIS_REPLY_INTEGER)
    unexpected(c, user_label, "LRANGE + DEL");
  subtract_elements(*exec->element[0], deltas);
  return exec->element[1]->integer > 0;
}

void subtract_elements(const redisReply& elements, CountDeltas& deltas) {
  std::vector<Interaction> removed;
  for (size_t i = 0; i < elements.elements; ++i) {
    const redisReply* e = elements.element[i];
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

std::string read_count_page(const redisReply& reply, const std::string& key,
                            std::unordered_map<std::string, uint64_t>& counts, const std::string& where) {
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 2 || reply.element[0]->type != REDIS_REPLY_STRING ||
      reply.element[1]->type != REDIS_REPLY_ARRAY || reply.element[1]->elements % 2 != 0)
    throw Error(where + ": unexpected HSCAN reply for " + key);
  const redisReply* fields = reply.element[1];
  for (size_t i = 0; i + 1 < fields->elements; i += 2) {
    const redisReply* id = fields->element[i];
    const redisReply* n = fields->element[i + 1];
    if (id->type != REDIS_REPLY_STRING || n->type != REDIS_REPLY_STRING)
      throw Error(where + ": unexpected HSCAN reply for " + key);
    int64_t value = 0;
    const auto [end, ec] = std::from_chars(n->str, n->str + n->len, value);
    if (ec != std::errc() || end != n->str + n->len)
      throw Error(where + ": " + key + " field " + printable_id({id->str, id->len}) + ": count " +
                  printable_id({n->str, n->len}) + " is not an integer");
    // 0 (or less, had a count been edited by hand): no stored interaction left. HSCAN may
    // return a field twice: the map keeps one (an item's count lives in one hash only).
    if (value > 0) counts[std::string(id->str, id->len)] = static_cast<uint64_t>(value);
    else counts.erase(std::string(id->str, id->len));
  }
  return std::string(reply.element[0]->str, reply.element[0]->len);
}

}  // namespace seqrec::history::redis
