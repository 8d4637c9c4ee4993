// STORE text → backend: "lmdb:PATH", "redis://HOST:PORT[/DB]", "redis-cluster://HOST:PORT[,HOST:PORT...]",
// "memory".
#include <charconv>

#include "server/history/backends.h"

namespace seqrec::history {
namespace {

constexpr const char* kExpected =
    "expected lmdb:PATH, redis://HOST:PORT[/DB], redis-cluster://HOST:PORT[,HOST:PORT...] or memory";

[[noreturn]] void bad(const std::string& spec, const std::string& why) {
  throw Error("history store '" + spec + "': " + why + " (" + kExpected + ")");
}

// A whole decimal integer in [low, high], or nullopt.
std::optional<int> parse_int(std::string_view text, int low, int high) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < low || value > high)
    return std::nullopt;
  return value;
}

// "HOST[:PORT]" or "[IPv6][:PORT]" (port 6379 when left out).
std::pair<std::string, int> parse_host_port(const std::string& spec, std::string_view authority) {
  std::string host;
  std::string_view port_text;
  if (!authority.empty() && authority[0] == '[') {  // [IPv6]:PORT
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) bad(spec, "unclosed '[' in the host");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':') bad(spec, "expected ':PORT' after the host");
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const size_t colon = authority.rfind(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (host.empty()) bad(spec, "no host");
  int port = 6379;
  if (!port_text.empty() || authority.find(':') != std::string_view::npos) {
    const auto parsed = parse_int(port_text, 1, 65535);
    if (!parsed) bad(spec, "port '" + std::string(port_text) + "' is not a number in 1..65535");
    port = *parsed;
  }
  return {std::move(host), port};
}

std::unique_ptr<HistoryStore> open_redis(const std::string& spec, std::string_view rest, const StoreOptions& options) {
  if (rest.find('@') != std::string_view::npos) bad(spec, "credentials in the URL are not supported");
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view db_text = authority.size() < rest.size() ? rest.substr(authority.size() + 1) : "";
  auto [host, port] = parse_host_port(spec, authority);
  int db = 0;
  if (!db_text.empty()) {
    const auto parsed = parse_int(db_text, 0, 1 << 20);
    if (!parsed) bad(spec, "database '" + std::string(db_text) + "' is not a non-negative number");
    db = *parsed;
  }
  return make_redis_store(host, port, db, options);
}

// Seed nodes, comma-separated; a cluster has one database (no /DB).
std::unique_ptr<HistoryStore> open_redis_cluster(const std::string& spec, std::string_view rest,
                                                 const StoreOptions& options) {
  if (rest.find('@') != std::string_view::npos) bad(spec, "credentials in the URL are not supported");
  if (rest.find('/') != std::string_view::npos) bad(spec, "a Redis Cluster has one database: no /DB");
  std::vector<std::pair<std::string, int>> seeds;
  while (true) {
    const size_t comma = rest.find(',');
    const std::string_view node = rest.substr(0, comma);
    if (node.empty()) bad(spec, "an empty node in the list");
    auto seed = parse_host_port(spec, node);
    if (std::find(seeds.begin(), seeds.end(), seed) == seeds.end()) seeds.push_back(std::move(seed));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return make_redis_cluster_store(seeds, options);
}

}  // namespace

std::unique_ptr<UserScan> HistoryStore::scan_users() {
  throw Error(describe() + ": this store cannot list its users");
}

void HistoryStore::for_each_user(const std::function<void(StoredUser&&)>& visit, size_t batch_size) {
  const std::unique_ptr<UserScan> scan = scan_users();
  std::vector<StoredUser> batch;
  while (scan->next(batch, batch_size))
    for (StoredUser& user : batch) visit(std::move(user));
}

std::unique_ptr<HistoryStore> open_store(const std::string& spec, const StoreOptions& options) {
  if (options.max_per_user < 1)
    throw Error("history store '" + spec + "': max interactions per user " + std::to_string(options.max_per_user) +
                " (expected >= 1)");
  if (spec == "memory") return make_memory_store(options);
  if (spec.starts_with("lmdb:")) {
    const std::string path = spec.substr(5);
    if (path.empty()) bad(spec, "no directory after 'lmdb:'");
    return make_lmdb_store(path, options);
  }
  if (spec.starts_with("redis://")) return open_redis(spec, std::string_view(spec).substr(8), options);
  if (spec.starts_with("redis-cluster://"))
    return open_redis_cluster(spec, std::string_view(spec).substr(16), options);
  bad(spec, "unknown kind");
}

}  // namespace seqrec::history
