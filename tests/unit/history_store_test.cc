// The history store: one suite run against every backend (memory, LMDB, Redis), then what
// only one backend has (LMDB durability and limits, Redis outages), the binary encoding
// under corruption, and the STORE text parser.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "server/history/encoding.h"
#include "server/history/import.h"
#include "server/history/store.h"
#include "server/history/time_order.h"

namespace seqrec::history {
namespace {

namespace fs = std::filesystem;

constexpr const char* kRedisServer = "/usr/bin/redis-server";
constexpr const char* kRedisCli = "/usr/bin/redis-cli";

Interaction item(std::string id, std::optional<int64_t> timestamp = std::nullopt,
                 std::optional<double> rating = std::nullopt) {
  return {std::move(id), timestamp, rating};
}

std::vector<std::string> ids_of(const std::vector<Interaction>& interactions) {
  std::vector<std::string> ids;
  for (const Interaction& it : interactions) ids.push_back(it.item_id);
  return ids;
}

void expect_same(const std::vector<Interaction>& expected, const std::vector<Interaction>& got) {
  ASSERT_EQ(expected.size(), got.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].item_id, got[i].item_id) << "at " << i;
    EXPECT_EQ(expected[i].timestamp, got[i].timestamp) << "at " << i;
    EXPECT_EQ(expected[i].rating, got[i].rating) << "at " << i;
  }
}

uint64_t count_of(const std::vector<std::pair<std::string, uint64_t>>& counts, const std::string& id) {
  for (const auto& [item_id, n] : counts)
    if (item_id == id) return n;
  return 0;
}

fs::path fresh_dir(const std::string& name) {
  static std::atomic<int> counter{0};
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("seqrec_history_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" + name);
  fs::remove_all(dir);
  return dir;
}

// Binds `port` on loopback (0: the kernel chooses) and returns the port bound, or 0.
int bind_loopback_port(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t size = sizeof address;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    if (fd >= 0) close(fd);
    return 0;
  }
  close(fd);
  return ntohs(address.sin_port);
}

// A loopback port nothing listens on now, at random below Linux's ephemeral range (32768-60999):
// a port from bind(0) lies inside it, where every outgoing connection of the parallel tests takes
// its local port too, and one could take it before the server binds it.
int free_loopback_port() {
  static std::mt19937 random(std::random_device{}());
  for (int attempt = 0; attempt < 200; ++attempt)
    if (const int port = bind_loopback_port(std::uniform_int_distribution<int>(20000, 32767)(random))) return port;
  return bind_loopback_port(0);
}

// The output of redis-cli against `port` (empty when it cannot run).
std::string cli_output(int port, const std::string& args) {
  const std::string command = std::string(kRedisCli) + " -p " + std::to_string(port) + " " + args + " 2>&1";
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
    pclose(pipe);
  }
  return out;
}

// True when the redis-server answering on `port` is process `pid`, not another test's server
// that took the port first (the other one answers PING just as well).
bool served_by(int port, pid_t pid) {
  const std::string info = cli_output(port, "INFO server");
  const std::string key = "process_id:" + std::to_string(pid);
  const size_t at = info.find(key);
  return at != std::string::npos && (at + key.size() == info.size() || !std::isdigit(info[at + key.size()]));
}

// Forks redis-server with `options` (stdout and stderr to /dev/null); its pid, or -1.
pid_t spawn_redis(const std::vector<std::string>& options) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    std::vector<char*> argv{const_cast<char*>(kRedisServer)};
    for (const std::string& option : options) argv.push_back(const_cast<char*>(option.c_str()));
    argv.push_back(nullptr);
    execv(kRedisServer, argv.data());
    _exit(127);
  }
  return pid;
}

// Starts a redis-server on a free loopback port (options_for(port) gives its options) and
// waits until that very process answers PING. A free port can be taken by another process
// before redis-server binds it (ctest runs tests in parallel, and every client connection
// takes an ephemeral port too); a server that exits at once is started again on another port.
// `fixed_port` (not 0): that port, one attempt (a restart). Sets `port` and `pid`; "" or what
// went wrong.
std::string start_redis(const std::function<std::vector<std::string>(int port)>& options_for, int& port,
                        pid_t& pid, int fixed_port = 0) {
  const int attempts = fixed_port ? 1 : 5;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    port = fixed_port ? fixed_port : free_loopback_port();
    if (port == 0) return "no free loopback port";
    pid = spawn_redis(options_for(port));
    if (pid < 0) return "fork failed";
    for (int wait = 0; wait < 400; ++wait) {  // 10 s and more: redis-cli takes its own time
      if (cli_output(port, "PING").find("PONG") != std::string::npos && served_by(port, pid)) return "";
      if (waitpid(pid, nullptr, WNOHANG) == pid) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    if (kill(pid, 0) == 0) {  // alive but silent
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return "redis-server did not answer PING on port " + std::to_string(port) + " within 10 s";
    }
  }
  pid = 0;
  return "redis-server exited at start " + std::to_string(attempts) + " time(s) (last port " + std::to_string(port) +
         ": taken?)";
}

// A private redis-server on a loopback port, no persistence; stopped with the object.
class RedisServer {
 public:
  // Both: start_redis asks with redis-cli (Debian's redis-server depends on redis-tools).
  static bool installed() { return access(kRedisServer, X_OK) == 0 && access(kRedisCli, X_OK) == 0; }

  ~RedisServer() { stop(); }

  // Starts on `port` (0: a free one; see start_redis) and waits until it answers PING.
  void start(int port = 0) {
    const std::string error = start_redis(
        [](int p) {
          return std::vector<std::string>{"--port", std::to_string(p), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--daemonize", "no"};
        },
        port_, pid_, port);
    if (!error.empty()) FAIL() << error;
  }

  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }

  // Runs redis-cli against this server (to plant values the store would never write).
  bool cli(const std::string& args) const {
    if (access(kRedisCli, X_OK) != 0) return false;
    const std::string command = std::string(kRedisCli) + " -p " + std::to_string(port_) + " " + args + " >/dev/null";
    return std::system(command.c_str()) == 0;
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }

 private:
  pid_t pid_ = 0;
  int port_ = 0;
};

// A private Redis Cluster: 3 masters, no replicas, on loopback ports, no persistence. One per
// test process (a cluster takes seconds to form), emptied before each test, stopped at exit.
class RedisCluster {
 public:
  static bool installed() { return RedisServer::installed(); }

  // The shared cluster, started on first use; nullptr (and `error`) when it cannot start.
  static RedisCluster* shared(std::string& error) {
    static RedisCluster cluster;
    static std::string failure = cluster.start();
    error = failure;
    return failure.empty() ? &cluster : nullptr;
  }

  ~RedisCluster() {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  bool flush() const {
    for (int port : ports_)
      if (cli_output(port, "FLUSHALL").find("OK") == std::string::npos) return false;
    return true;
  }

  const std::vector<int>& ports() const { return ports_; }
  // Two of the three nodes as seeds: the third is learnt from CLUSTER SLOTS.
  std::string spec() const {
    return "redis-cluster://127.0.0.1:" + std::to_string(ports_[0]) + ",127.0.0.1:" + std::to_string(ports_[1]);
  }

  // The node that serves `key` (the others answer MOVED), or 0.
  int owner_of(const std::string& key) const {
    for (int port : ports_)
      if (cli_output(port, "EXISTS '" + key + "'").find("MOVED") == std::string::npos) return port;
    return 0;
  }

 private:
  std::string start() {
    dir_ = fresh_dir("cluster");
    fs::create_directories(dir_);
    for (int i = 0; i < 3; ++i) {
      const int bus = free_loopback_port();
      if (bus == 0) return "no free loopback port";
      int port = 0;
      pid_t pid = 0;
      const std::string error = start_redis(
          [&](int p) {
            return std::vector<std::string>{
                "--port", std::to_string(p), "--cluster-port", std::to_string(bus), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file",
                (dir_ / ("nodes-" + std::to_string(p) + ".conf")).string(),
                "--cluster-node-timeout", "2000", "--dir", dir_.string(), "--save", "", "--appendonly", "no",
                "--daemonize", "no"};
          },
          port, pid);
      if (!error.empty()) return "cluster node: " + error;
      pids_.push_back(pid);
      ports_.push_back(port);
    }
    std::string nodes;
    for (int port : ports_) nodes += " 127.0.0.1:" + std::to_string(port);
    const std::string created = cli_output(ports_[0], "--cluster create" + nodes + " --cluster-replicas 0 --cluster-yes");
    if (created.find("[OK] All 16384 slots covered") == std::string::npos) return "redis-cli --cluster create: " + created;
    for (int i = 0; i < 400; ++i) {
      bool ok = true;
      for (int port : ports_) ok = ok && cli_output(port, "CLUSTER INFO").find("cluster_state:ok") != std::string::npos;
      if (ok) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return "the cluster did not reach cluster_state:ok within 20 s";
  }

  fs::path dir_;
  std::vector<pid_t> pids_;
  std::vector<int> ports_;
};

// ---- the suite every backend passes ---------------------------------------------------

class HistoryStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "redis") {
      if (!RedisServer::installed())
        GTEST_SKIP() << "redis-server or redis-cli is not installed (" << kRedisServer
                     << "); Redis backend cases skipped. Install it: scripts/install-deps.sh --test";
      redis_.start();
    } else if (GetParam() == "redis-cluster") {
      if (!RedisCluster::installed())
        GTEST_SKIP() << "redis-server or redis-cli is not installed; Redis Cluster cases skipped";
      std::string error;
      cluster_ = RedisCluster::shared(error);
      ASSERT_NE(cluster_, nullptr) << error;
      ASSERT_TRUE(cluster_->flush());
    } else if (GetParam() == "lmdb") {
      dir_ = fresh_dir("suite");
    }
  }

  void TearDown() override {
    redis_.stop();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  std::string spec() const {
    if (GetParam() == "redis") return redis_.url();
    if (GetParam() == "redis-cluster") return cluster_->spec();
    if (GetParam() == "lmdb") return "lmdb:" + dir_.string();
    return "memory";
  }

  std::unique_ptr<HistoryStore> open(StoreOptions options = {}) { return open_store(spec(), options); }

  RedisServer redis_;
  RedisCluster* cluster_ = nullptr;
  fs::path dir_;
};

TEST_P(HistoryStoreTest, UnknownUserHasEmptyHistory) {
  auto store = open();
  EXPECT_TRUE(store->ready());
  EXPECT_TRUE(store->get("nobody").empty());
  EXPECT_FALSE(store->erase("nobody"));
  EXPECT_TRUE(store->item_counts().empty());
}

TEST_P(HistoryStoreTest, AppendKeepsEveryFieldInTimeOrder) {
  auto store = open();
  const std::vector<Interaction> first = {item("10", 1704060026, 4.5), item("11"), item("12", -5),
                                          item("13", std::nullopt, -0.5)};
  const std::vector<Interaction> second = {item("9", INT64_MIN, 1e300), item("10", INT64_MAX, 0.0)};
  store->append("alice", first);
  store->append("alice", second);
  store->append("bob", std::vector<Interaction>{item("99", 1)});
  // 11 and 13 have no timestamp: "now", after what came before them (10 at 1704060026).
  expect_same({item("9", INT64_MIN, 1e300), item("12", -5), item("10", 1704060026, 4.5), item("11"),
               item("13", std::nullopt, -0.5), item("10", INT64_MAX, 0.0)},
              store->get("alice"));
  expect_same({item("99", 1)}, store->get("bob"));
}

TEST_P(HistoryStoreTest, OutOfOrderAppendsAreMergedByTime) {
  auto store = open();
  store->append("u", std::vector<Interaction>{item("a", 10), item("b", 20), item("c", 30)});
  store->append("u", std::vector<Interaction>{item("late", 15)});  // an older event arriving late
  store->append("u", std::vector<Interaction>{item("d", 40)});     // back in order
  store->append("u", std::vector<Interaction>{item("x", 35), item("y", 5), item("z", 25)});  // unsorted itself
  EXPECT_EQ((std::vector<std::string>{"y", "a", "late", "b", "z", "c", "x", "d"}), ids_of(store->get("u")));
  const auto history = store->get("u");
  for (size_t i = 1; i < history.size(); ++i) EXPECT_LE(*history[i - 1].timestamp, *history[i].timestamp);
}

TEST_P(HistoryStoreTest, EqualTimestampsKeepArrivalOrder) {
  auto store = open();
  store->append("u", std::vector<Interaction>{item("a", 10), item("b", 10), item("c", 20)});
  store->append("u", std::vector<Interaction>{item("d", 10)});  // after a and b, before c
  store->append("u", std::vector<Interaction>{item("e", 20), item("f", 10)});
  store->append("u", std::vector<Interaction>{item("g", 20)});  // the in-order path: after c and e
  EXPECT_EQ((std::vector<std::string>{"a", "b", "d", "f", "c", "e", "g"}), ids_of(store->get("u")));
}

TEST_P(HistoryStoreTest, MissingTimestampsCountAsNow) {
  auto store = open();
  store->append("u", std::vector<Interaction>{item("untimed1")});
  store->append("u", std::vector<Interaction>{item("t50", 50), item("untimed2"), item("t40", 40)});
  // untimed2 came after t50: it stays after it; t40 is older than both.
  EXPECT_EQ((std::vector<std::string>{"untimed1", "t40", "t50", "untimed2"}), ids_of(store->get("u")));
  store->append("u", std::vector<Interaction>{item("untimed3")});  // after everything stored
  store->append("u", std::vector<Interaction>{item("t50b", 50)});  // equal time: after untimed2 and 3
  store->append("u", std::vector<Interaction>{item("t45", 45)});   // before t50 (and what inherits 50)
  EXPECT_EQ((std::vector<std::string>{"untimed1", "t40", "t45", "t50", "untimed2", "untimed3", "t50b"}),
            ids_of(store->get("u")));
  // A history without any timestamp keeps arrival order.
  store->append("v", std::vector<Interaction>{item("1"), item("2")});
  store->append("v", std::vector<Interaction>{item("3")});
  EXPECT_EQ((std::vector<std::string>{"1", "2", "3"}), ids_of(store->get("v")));
}

TEST_P(HistoryStoreTest, CapTrimsTheOldestByTime) {
  StoreOptions options;
  options.max_per_user = 4;
  auto store = open(options);
  store->append("u", std::vector<Interaction>{item("a", 10), item("b", 20), item("c", 30), item("d", 40)});
  store->append("u", std::vector<Interaction>{item("late", 25)});  // full: a (the oldest) goes
  EXPECT_EQ((std::vector<std::string>{"b", "late", "c", "d"}), ids_of(store->get("u")));
  store->append("u", std::vector<Interaction>{item("ancient", 1)});  // older than all: trimmed at once
  EXPECT_EQ((std::vector<std::string>{"b", "late", "c", "d"}), ids_of(store->get("u")));
  store->append("u", std::vector<Interaction>{item("e", 50), item("older", 5), item("f", 35)});
  EXPECT_EQ((std::vector<std::string>{"c", "f", "d", "e"}), ids_of(store->get("u")));
  const auto counts = store->item_counts();
  for (const char* gone : {"a", "b", "late", "ancient", "older"}) EXPECT_EQ(0u, count_of(counts, gone)) << gone;
  for (const char* kept : {"c", "d", "e", "f"}) EXPECT_EQ(1u, count_of(counts, kept)) << kept;
  EXPECT_EQ(4u, counts.size());
}

TEST_P(HistoryStoreTest, AppendManyMergesByTime) {
  StoreOptions options;
  options.max_per_user = 3;
  auto store = open(options);
  store->append("u", std::vector<Interaction>{item("b", 20), item("d", 40)});
  std::vector<std::pair<std::string, std::vector<Interaction>>> batch;
  batch.push_back({"u", {item("a", 10), item("c", 30)}});  // older than what is stored
  batch.push_back({"v", {item("y", 2), item("x", 1)}});
  batch.push_back({"u", {item("e", 50)}});  // the same user again, after its first list
  store->append_many(batch);
  EXPECT_EQ((std::vector<std::string>{"c", "d", "e"}), ids_of(store->get("u")));
  EXPECT_EQ((std::vector<std::string>{"x", "y"}), ids_of(store->get("v")));
  const auto counts = store->item_counts();
  EXPECT_EQ(5u, counts.size());
  EXPECT_EQ(0u, count_of(counts, "a"));
  EXPECT_EQ(0u, count_of(counts, "b"));
}

// The rules of store.h as an insertion, written independently of time_order.cc: each appended
// interaction goes after every stored one whose effective time (its timestamp, else the one
// before it's) is <= its timestamp, or at the end without one; then the oldest are trimmed.
void reference_append(std::vector<Interaction>& history, const std::vector<Interaction>& appended, size_t cap,
                      std::map<std::string, int64_t>& counts) {
  for (const Interaction& it : appended) {
    size_t at = history.size();
    if (it.timestamp) {
      int64_t previous = INT64_MIN;
      at = 0;
      for (size_t i = 0; i < history.size(); ++i) {
        previous = history[i].timestamp.value_or(previous);
        if (previous <= *it.timestamp) at = i + 1;
      }
    }
    history.insert(history.begin() + static_cast<std::ptrdiff_t>(at), it);
    ++counts[it.item_id];
  }
  while (history.size() > cap) {
    --counts[history.front().item_id];
    history.erase(history.begin());
  }
}

TEST_P(HistoryStoreTest, RandomAppendsMatchTheRules) {
  StoreOptions options;
  options.max_per_user = 12;
  auto store = open(options);
  // Extreme and nearby values: a comparison through doubles (beyond 2^53) or a sign slip shows.
  const std::vector<int64_t> times = {INT64_MIN, INT64_MIN + 1, -(int64_t{1} << 53) - 1, -(int64_t{1} << 53), -300,
                                      -1, 0, 1, 7, 300, (int64_t{1} << 53), (int64_t{1} << 53) + 1,
                                      (int64_t{1} << 62) + 1, (int64_t{1} << 62), INT64_MAX - 1, INT64_MAX};
  std::mt19937 random(7);
  std::map<std::string, std::vector<Interaction>> expected;
  std::map<std::string, int64_t> counts;
  for (int step = 0; step < 300; ++step) {
    const std::string user = "u" + std::to_string(random() % 4);
    std::vector<Interaction> appended;
    const size_t n = 1 + random() % 4;
    for (size_t i = 0; i < n; ++i) {
      std::optional<int64_t> time;
      if (random() % 5 != 0) time = times[random() % times.size()];
      appended.push_back(item("i" + std::to_string(random() % 9), time));
    }
    if (step % 3 == 0) {
      store->append_many(std::vector<std::pair<std::string, std::vector<Interaction>>>{{user, appended}});
    } else {
      store->append(user, appended);
    }
    reference_append(expected[user], appended, 12, counts);
    ASSERT_EQ(ids_of(expected[user]), ids_of(store->get(user))) << "step " << step;
  }
  for (const auto& [user, history] : expected) expect_same(history, store->get(user));
  for (const auto& [id, n] : counts) EXPECT_EQ(static_cast<uint64_t>(n), count_of(store->item_counts(), id)) << id;
  uint64_t total = 0;
  for (const auto& [id, n] : store->item_counts()) total += n;
  EXPECT_EQ(4u * 12u, total);
}

TEST_P(HistoryStoreTest, ConcurrentOutOfOrderAppendsLoseNothing) {
  StoreOptions options;
  options.max_per_user = 100000;
  auto store = open(options);
  constexpr int kThreads = 6, kAppends = 30;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(t);
      try {
        for (int i = 0; i < kAppends; ++i)
          store->append("shared", std::vector<Interaction>{item(std::to_string(t) + ":" + std::to_string(i),
                                                                static_cast<int64_t>(random() % 1000))});
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const auto shared = store->get("shared");
  ASSERT_EQ(static_cast<size_t>(kThreads * kAppends), shared.size());
  for (size_t i = 1; i < shared.size(); ++i) EXPECT_LE(*shared[i - 1].timestamp, *shared[i].timestamp);
  std::set<std::string> ids;
  for (const Interaction& it : shared) ids.insert(it.item_id);
  EXPECT_EQ(shared.size(), ids.size());
  EXPECT_EQ(shared.size(), store->item_counts().size());
}

TEST_P(HistoryStoreTest, EmptyAppendStoresNothing) {
  auto store = open();
  store->append("ghost", {});
  EXPECT_TRUE(store->get("ghost").empty());
  EXPECT_FALSE(store->erase("ghost"));
}

TEST_P(HistoryStoreTest, CapTrimsTheOldest) {
  StoreOptions options;
  options.max_per_user = 5;
  auto store = open(options);
  store->append("u", std::vector<Interaction>{item("1"), item("2"), item("3")});
  store->append("u", std::vector<Interaction>{item("4"), item("5"), item("6"), item("7")});
  EXPECT_EQ((std::vector<std::string>{"3", "4", "5", "6", "7"}), ids_of(store->get("u")));
  std::vector<Interaction> many;
  for (int i = 100; i < 112; ++i) many.push_back(item(std::to_string(i), i));
  store->append("v", many);  // one append longer than the cap
  EXPECT_EQ((std::vector<std::string>{"107", "108", "109", "110", "111"}), ids_of(store->get("v")));
  // The counts are the stored interactions: trimmed ones leave them with the history.
  EXPECT_EQ(0u, count_of(store->item_counts(), "100"));
  EXPECT_EQ(0u, count_of(store->item_counts(), "2"));
  EXPECT_EQ(1u, count_of(store->item_counts(), "3"));
  EXPECT_EQ(1u, count_of(store->item_counts(), "111"));
  EXPECT_EQ(10u, store->item_counts().size());  // 3..7 and 107..111
}

TEST_P(HistoryStoreTest, EraseRemovesTheHistoryAndItsCounts) {
  auto store = open();
  store->append("u", std::vector<Interaction>{item("a"), item("b"), item("secret", 3)});
  store->append("w", std::vector<Interaction>{item("a")});
  EXPECT_TRUE(store->erase("u"));
  EXPECT_TRUE(store->get("u").empty());
  EXPECT_FALSE(store->erase("u"));
  EXPECT_EQ(1u, store->get("w").size());
  // A right-to-erasure request leaves nothing in the cold-start popularity.
  const std::vector<std::pair<std::string, uint64_t>> left = {{"a", 1}};
  EXPECT_EQ(left, store->item_counts());
  store->append("u", std::vector<Interaction>{item("c")});
  EXPECT_EQ((std::vector<std::string>{"c"}), ids_of(store->get("u")));
  EXPECT_TRUE(store->erase("w"));
  EXPECT_TRUE(store->erase("u"));
  EXPECT_TRUE(store->item_counts().empty());
}

TEST_P(HistoryStoreTest, AWalkVisitsEveryUserOnceWithTheirHistory) {
  auto store = open();
  std::map<std::string, std::vector<std::string>> expected;
  for (int u = 0; u < 700; ++u) {  // several batches, and several SCAN steps on Redis
    const std::string id = "user-" + std::to_string(u) + (u % 7 == 0 ? std::string(60, 'x') : "");  // long ids too
    std::vector<Interaction> history{item("i" + std::to_string(u % 13), 100 + u), item("j", 200 + u)};
    store->append(id, history);
    expected[id] = {"i" + std::to_string(u % 13), "j"};
  }
  store->append("gone", std::vector<Interaction>{item("a")});
  ASSERT_TRUE(store->erase("gone"));
  std::map<std::string, std::vector<std::string>> seen;
  store->for_each_user(
      [&](history::StoredUser&& user) {
        EXPECT_FALSE(user.error) << *user.error;
        EXPECT_TRUE(seen.emplace(user.user_id, ids_of(user.interactions)).second) << "visited twice: " << user.user_id;
      },
      64);
  EXPECT_EQ(expected, seen);
}

TEST_P(HistoryStoreTest, ItemCountsCountEveryInteractionMostCountedFirst) {
  auto store = open();
  store->append("u1", std::vector<Interaction>{item("x"), item("y"), item("x", 1, 1.0)});
  store->append("u2", std::vector<Interaction>{item("y"), item("z"), item("x")});
  store->append_many(std::vector<std::pair<std::string, std::vector<Interaction>>>{
      {"u3", {item("z"), item("w")}}, {"u4", {item("w")}}});
  const auto counts = store->item_counts();
  const std::vector<std::pair<std::string, uint64_t>> expected = {{"x", 3}, {"w", 2}, {"y", 2}, {"z", 2}};
  EXPECT_EQ(expected, counts);
}

TEST_P(HistoryStoreTest, AppendManyHasTheSemanticsOfAppend) {
  StoreOptions options;
  options.max_per_user = 4;
  auto store = open(options);
  store->append("old", std::vector<Interaction>{item("o1"), item("o2"), item("o3")});
  std::vector<std::pair<std::string, std::vector<Interaction>>> batch;
  batch.push_back({"old", {item("n1", 5), item("n2", 6)}});
  batch.push_back({"new", {item("a", 1, 3.0)}});
  batch.push_back({"empty", {}});
  batch.push_back({"new", {item("b", 2)}});  // the same user twice: appended in batch order
  for (int u = 0; u < 300; ++u) batch.push_back({"bulk" + std::to_string(u), {item("i" + std::to_string(u % 7))}});
  store->append_many(batch);
  EXPECT_EQ((std::vector<std::string>{"o2", "o3", "n1", "n2"}), ids_of(store->get("old")));
  expect_same({item("a", 1, 3.0), item("b", 2)}, store->get("new"));
  EXPECT_TRUE(store->get("empty").empty());
  EXPECT_EQ((std::vector<std::string>{"i5"}), ids_of(store->get("bulk299")));
  EXPECT_EQ(43u, count_of(store->item_counts(), "i0"));  // u = 0, 7, ..., 294
  EXPECT_EQ(0u, count_of(store->item_counts(), "o1"));   // trimmed by the cap
  EXPECT_EQ(1u, count_of(store->item_counts(), "o2"));
}

TEST_P(HistoryStoreTest, BinaryUnsafeIdsAreKeptApartAndIntact) {
  auto store = open();
  const std::string long_a(5000, 'a');
  std::string long_b = long_a;
  long_b.back() = 'b';  // differs from long_a only in its last byte
  const std::vector<std::string> users = {"a b",
                                          "a",
                                          "\"quoted\" 'single'",
                                          "ünïcødé 日本語 🙂",
                                          std::string("nul\0byte", 8),
                                          std::string("nul\0bytf", 8),
                                          "line\r\nbreak",
                                          "%s%n%b*{}[]",
                                          long_a,
                                          long_b,
                                          std::string(510, 'k'),
                                          std::string(511, 'k'),
                                          std::string(512, 'k'),
                                          ""};
  for (size_t u = 0; u < users.size(); ++u) {
    // Item ids are as hostile as the user ids; the item of user u is users[u] itself.
    store->append(users[u], std::vector<Interaction>{item(users[u], static_cast<int64_t>(u)), item("common")});
  }
  for (size_t u = 0; u < users.size(); ++u) {
    SCOPED_TRACE("user " + std::to_string(u));
    expect_same({item(users[u], static_cast<int64_t>(u)), item("common")}, store->get(users[u]));
  }
  const auto counts = store->item_counts();
  EXPECT_EQ(users.size() + 1, counts.size());
  for (const std::string& u : users) EXPECT_EQ(1u, count_of(counts, u));
  EXPECT_EQ(users.size(), count_of(counts, "common"));
  EXPECT_TRUE(store->erase(long_a));
  EXPECT_TRUE(store->get(long_a).empty());
  EXPECT_EQ(2u, store->get(long_b).size());
}

TEST_P(HistoryStoreTest, ConcurrentAppendsLoseNothing) {
  auto store = open();
  constexpr int kThreads = 8, kAppends = 40;
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        const std::string own = "user" + std::to_string(t);
        for (int i = 0; i < kAppends; ++i) {
          const std::string id = std::to_string(t) + ":" + std::to_string(i);
          store->append(own, std::vector<Interaction>{item(id, i), item(id, i)});
          store->append("shared", std::vector<Interaction>{item(id)});
          store->get("shared");  // readers alongside the writers
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        failed = true;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_FALSE(failed);
  for (int t = 0; t < kThreads; ++t) {
    const auto history = store->get("user" + std::to_string(t));
    ASSERT_EQ(2u * kAppends, history.size());
    for (int i = 0; i < kAppends; ++i) EXPECT_EQ(std::to_string(t) + ":" + std::to_string(i), history[2 * i].item_id);
  }
  const auto shared = store->get("shared");
  EXPECT_EQ(static_cast<size_t>(kThreads * kAppends), shared.size());
  // Each thread's own appends to the shared user keep their order.
  std::vector<int> next(kThreads, 0);
  for (const Interaction& it : shared) {
    const int t = std::stoi(it.item_id.substr(0, it.item_id.find(':')));
    EXPECT_EQ(std::to_string(t) + ":" + std::to_string(next[t]++), it.item_id);
  }
  uint64_t total = 0;
  for (const auto& [id, n] : store->item_counts()) total += n;
  EXPECT_EQ(3u * kThreads * kAppends, total);
}

TEST_P(HistoryStoreTest, ANewStoreObjectSeesWhatWasWritten) {
  if (GetParam() == "memory") GTEST_SKIP() << "the memory store lives and dies with its object";
  {
    auto store = open();
    store->append("u", std::vector<Interaction>{item("1", 10, 2.5), item("2")});
    store->append("gone", std::vector<Interaction>{item("3")});
    store->erase("gone");
  }
  auto reopened = open();
  expect_same({item("1", 10, 2.5), item("2")}, reopened->get("u"));
  EXPECT_TRUE(reopened->get("gone").empty());
  EXPECT_EQ(0u, count_of(reopened->item_counts(), "3"));  // erased with its user
  EXPECT_EQ(1u, count_of(reopened->item_counts(), "2"));
}

INSTANTIATE_TEST_SUITE_P(Backends, HistoryStoreTest, ::testing::Values("memory", "lmdb", "redis", "redis-cluster"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// ---- LMDB -------------------------------------------------------------------------------

TEST(LmdbStore, CreatesTheDirectoryAndDescribesItself) {
  const fs::path dir = fresh_dir("create") / "nested" / "deeper";
  auto store = open_store("lmdb:" + dir.string());
  EXPECT_TRUE(fs::is_directory(dir));
  EXPECT_EQ("lmdb:" + dir.string(), store->describe());
  store.reset();
  fs::remove_all(dir.parent_path().parent_path());
}

TEST(LmdbStore, AnUnwritablePathIsACleanError) {
  const fs::path dir = fresh_dir("unwritable");
  fs::create_directories(dir);
  const fs::path file = dir / "a-file";
  std::ofstream(file) << "not a directory";
  const std::string spec = "lmdb:" + (file / "store").string();
  try {
    open_store(spec);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(spec), std::string::npos) << e.what();
  }
  try {
    open_store("lmdb:" + file.string());  // a file where the directory should be
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file.string() + ": "), std::string::npos) << e.what();
  }
  if (geteuid() != 0) {  // root writes anywhere; permissions only stop others
    const fs::path read_only = dir / "read-only";
    fs::create_directories(read_only);
    fs::permissions(read_only, fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_THROW(open_store("lmdb:" + read_only.string()), Error);
    EXPECT_THROW(open_store("lmdb:" + (read_only / "sub").string()), Error);
    fs::permissions(read_only, fs::perms::owner_all);
  }
  fs::remove_all(dir);
}

TEST(LmdbStore, AFullMapIsACleanErrorAndTheStoreStaysUsable) {
  const fs::path dir = fresh_dir("full");
  StoreOptions options;
  options.lmdb_map_bytes = 256 << 10;  // 64 pages
  auto store = open_store("lmdb:" + dir.string(), options);
  store->append("kept", std::vector<Interaction>{item("1")});
  bool full = false;
  for (int i = 0; i < 1000 && !full; ++i) {
    try {
      store->append("big" + std::to_string(i), std::vector<Interaction>{item(std::string(2000, 'x'))});
    } catch (const StoreUnavailable& e) {
      FAIL() << "a full map is not a passing outage: " << e.what();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
      full = true;
    }
  }
  EXPECT_TRUE(full);
  EXPECT_EQ(1u, store->get("kept").size());
  EXPECT_TRUE(store->erase("big0"));  // deleting frees room again
  store->append("after", std::vector<Interaction>{item("2")});
  EXPECT_EQ(1u, store->get("after").size());
  store.reset();
  fs::remove_all(dir);
}

TEST(LmdbStore, AnAcknowledgedAppendSurvivesKill9) {
  const fs::path dir = fresh_dir("kill9");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto store = open_store("lmdb:" + dir.string());
    store->append("u", std::vector<Interaction>{item("acknowledged", 1)});
    raise(SIGKILL);  // no close, no destructor, no exit handlers
    _exit(1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  auto store = open_store("lmdb:" + dir.string());
  expect_same({item("acknowledged", 1)}, store->get("u"));
  store->append("u", std::vector<Interaction>{item("later")});  // the killed writer left no lock behind
  EXPECT_EQ(2u, store->get("u").size());
  store.reset();
  fs::remove_all(dir);
}

TEST(LmdbStore, OneDirectoryIsOpenOnceAtATime) {
  const fs::path dir = fresh_dir("twice");
  auto store = open_store("lmdb:" + dir.string());
  try {
    open_store("lmdb:" + dir.string() + "/.");  // the same directory by another name
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already open"), std::string::npos) << e.what();
  }
  store->append("u", std::vector<Interaction>{item("1")});  // the first store is unharmed
  store.reset();
  EXPECT_EQ(1u, open_store("lmdb:" + dir.string())->get("u").size());
  fs::remove_all(dir);
}

TEST(LmdbStore, TwoStoresInTurnOnOneDirectory) {
  const fs::path dir = fresh_dir("reopen");
  StoreOptions options;
  options.max_per_user = 3;
  for (int round = 0; round < 3; ++round) {
    auto store = open_store("lmdb:" + dir.string(), options);
    store->append("u", std::vector<Interaction>{item(std::to_string(round)), item(std::to_string(round) + "b")});
  }
  auto store = open_store("lmdb:" + dir.string(), options);
  EXPECT_EQ((std::vector<std::string>{"1b", "2", "2b"}), ids_of(store->get("u")));
  store.reset();
  fs::remove_all(dir);
}

// ---- Redis ------------------------------------------------------------------------------

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisServer::installed())
      GTEST_SKIP() << "redis-server or redis-cli is not installed (" << kRedisServer << "); Redis cases skipped";
    redis_.start();
  }
  RedisServer redis_;
};

TEST_F(RedisStoreTest, RecoversByItselfWhenRedisComesBack) {
  auto store = open_store(redis_.url());
  store->append("u", std::vector<Interaction>{item("before")});
  ASSERT_TRUE(store->ready());

  redis_.stop();
  EXPECT_FALSE(store->ready());
  EXPECT_THROW(store->append("u", std::vector<Interaction>{item("lost")}), StoreUnavailable);
  EXPECT_THROW(store->get("u"), StoreUnavailable);
  EXPECT_THROW(store->erase("u"), StoreUnavailable);
  EXPECT_THROW(store->item_counts(), StoreUnavailable);
  try {
    store->get("u");
  } catch (const StoreUnavailable& e) {
    EXPECT_NE(std::string(e.what()).find(redis_.url()), std::string::npos) << e.what();
  }

  redis_.start(redis_.port());  // same port, empty (no persistence)
  EXPECT_TRUE(store->ready());
  store->append("u", std::vector<Interaction>{item("after")});
  EXPECT_EQ((std::vector<std::string>{"after"}), ids_of(store->get("u")));
}

TEST_F(RedisStoreTest, StaysUsableAfterAnOutageWithoutAReadyProbe) {
  auto store = open_store(redis_.url());
  store->append("u", std::vector<Interaction>{item("1")});  // leaves an idle pooled connection
  redis_.stop();
  redis_.start(redis_.port());
  // The pooled connection is dead; the store notices before using it.
  store->append("u", std::vector<Interaction>{item("2")});
  EXPECT_EQ((std::vector<std::string>{"2"}), ids_of(store->get("u")));
}

TEST_F(RedisStoreTest, NothingListeningIsUnavailableNotFatal) {
  const int port = free_loopback_port();
  auto store = open_store("redis://127.0.0.1:" + std::to_string(port));
  EXPECT_FALSE(store->ready());
  EXPECT_THROW(store->get("u"), StoreUnavailable);
}

TEST_F(RedisStoreTest, KeysAreOnePerUserAndDatabasesAreSeparate) {
  auto db0 = open_store(redis_.url());
  auto db3 = open_store("redis://127.0.0.1:" + std::to_string(redis_.port()) + "/3");
  db0->append("u", std::vector<Interaction>{item("zero")});
  db3->append("u", std::vector<Interaction>{item("three")});
  EXPECT_EQ((std::vector<std::string>{"zero"}), ids_of(db0->get("u")));
  EXPECT_EQ((std::vector<std::string>{"three"}), ids_of(db3->get("u")));
  EXPECT_EQ("redis://127.0.0.1:" + std::to_string(redis_.port()) + "/3", db3->describe());
  if (!redis_.cli("EXISTS seqrec:h:u")) GTEST_SKIP() << "redis-cli not installed";
}

TEST_F(RedisStoreTest, ForeignOrCorruptValuesAreErrorsNotCrashes) {
  if (!redis_.cli("PING")) GTEST_SKIP() << "redis-cli is not installed; cannot plant foreign values";
  auto store = open_store(redis_.url());
  ASSERT_TRUE(redis_.cli("SET seqrec:h:string-user not-a-list"));
  ASSERT_TRUE(redis_.cli("RPUSH seqrec:h:garbage-user garbage"));
  ASSERT_TRUE(redis_.cli("HSET seqrec:item_counts bad-item not-a-number"));
  EXPECT_THROW(store->get("string-user"), Error);
  EXPECT_THROW(store->append("string-user", std::vector<Interaction>{item("1")}), Error);
  try {
    store->get("garbage-user");
    FAIL() << "expected an error";
  } catch (const StoreUnavailable&) {
    FAIL() << "corruption is not an outage";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("garbage-user"), std::string::npos) << e.what();
  }
  EXPECT_THROW(store->item_counts(), Error);
  // The store still works for everyone else.
  store->append("fine", std::vector<Interaction>{item("1")});
  EXPECT_EQ(1u, store->get("fine").size());
  EXPECT_TRUE(store->ready());
}

TEST_F(RedisStoreTest, AppendsSurviveAFlushedScriptCache) {
  if (!redis_.cli("PING")) GTEST_SKIP() << "redis-cli is not installed";
  auto store = open_store(redis_.url());
  store->append("u", std::vector<Interaction>{item("a", 1)});
  ASSERT_TRUE(redis_.cli("SCRIPT FLUSH"));  // as after a restart or an operator's flush
  store->append("u", std::vector<Interaction>{item("b", 2)});
  std::vector<std::pair<std::string, std::vector<Interaction>>> batch = {{"u", {item("c", 3)}}, {"v", {item("d", 4)}}};
  ASSERT_TRUE(redis_.cli("SCRIPT FLUSH"));
  store->append_many(batch);
  EXPECT_EQ((std::vector<std::string>{"a", "b", "c"}), ids_of(store->get("u")));
  EXPECT_EQ(1u, count_of(store->item_counts(), "d"));
}

TEST_F(RedisStoreTest, TimestampsBeyondDoublePrecisionAreComparedExactly) {
  // 2^53 + 1 and 2^53 + 2 are the same double: the script compares the zigzag halves.
  auto store = open_store(redis_.url());
  const int64_t big = int64_t{1} << 53;
  store->append("ns", std::vector<Interaction>{item("second", big + 2)});
  store->append("ns", std::vector<Interaction>{item("first", big + 1)});
  store->append("ns", std::vector<Interaction>{item("third", big + 3)});
  EXPECT_EQ((std::vector<std::string>{"first", "second", "third"}), ids_of(store->get("ns")));
  store->append("neg", std::vector<Interaction>{item("b", -big - 1)});
  store->append("neg", std::vector<Interaction>{item("a", -big - 2)});
  store->append("neg", std::vector<Interaction>{item("c", -1)});
  store->append("neg", std::vector<Interaction>{item("z", INT64_MIN)});
  EXPECT_EQ((std::vector<std::string>{"z", "a", "b", "c"}), ids_of(store->get("neg")));
}

TEST_F(RedisStoreTest, ACorruptElementFailsATimedAppendOnly) {
  if (!redis_.cli("PING")) GTEST_SKIP() << "redis-cli is not installed";
  auto store = open_store(redis_.url());
  ASSERT_TRUE(redis_.cli("RPUSH seqrec:h:bad garbage"));
  try {
    store->append("bad", std::vector<Interaction>{item("1", 5)});  // needs the last timestamp: cannot read it
    FAIL() << "expected an error";
  } catch (const StoreUnavailable&) {
    FAIL() << "corruption is not an outage";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'bad'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(0u, count_of(store->item_counts(), "1"));  // nothing written, nothing counted
  store->append("bad", std::vector<Interaction>{item("2")});  // "now" needs no reading: appended
  EXPECT_EQ(1u, count_of(store->item_counts(), "2"));
  EXPECT_THROW(store->get("bad"), Error);
}

// ---- Redis Cluster ----------------------------------------------------------------------

class RedisClusterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisCluster::installed()) GTEST_SKIP() << "redis-server or redis-cli is not installed; Redis Cluster cases skipped";
    std::string error;
    cluster_ = RedisCluster::shared(error);
    ASSERT_NE(cluster_, nullptr) << error;
    ASSERT_TRUE(cluster_->flush());
  }
  static int lines(const std::string& text) {
    int n = 0;
    for (char c : text) n += c == '\n';
    return n;
  }
  RedisCluster* cluster_ = nullptr;
};

TEST_F(RedisClusterStoreTest, AUserIsOneKeyAndTheCountsAreSpreadOverShards) {
  auto store = open_store(cluster_->spec());
  EXPECT_EQ(cluster_->spec(), store->describe());
  EXPECT_TRUE(store->ready());
  for (int u = 0; u < 20; ++u) {
    std::vector<Interaction> interactions;
    for (int i = 0; i < 10; ++i) interactions.push_back(item(std::to_string(u * 10 + i), i));
    store->append("u" + std::to_string(u), interactions);
  }
  const int owner = cluster_->owner_of("seqrec:h:u7");
  ASSERT_NE(0, owner);
  EXPECT_NE(std::string::npos, cli_output(owner, "LLEN seqrec:h:u7").find("10"));
  // 200 items over 16 shard hashes, whose hash tags put them on every master.
  int shards = 0, masters_with_shards = 0;
  for (int port : cluster_->ports()) {
    const int here = lines(cli_output(port, "--scan --pattern 'seqrec:item_counts:*'"));
    shards += here;
    masters_with_shards += here > 0;
    EXPECT_EQ(0, lines(cli_output(port, "--scan --pattern 'seqrec:item_counts'")));  // no unsharded hash
  }
  EXPECT_EQ(16, shards);
  EXPECT_EQ(3, masters_with_shards);
  const auto counts = store->item_counts();
  EXPECT_EQ(200u, counts.size());
  for (const auto& [id, n] : counts) EXPECT_EQ(1u, n) << id;
  EXPECT_TRUE(store->erase("u7"));
  EXPECT_EQ(190u, store->item_counts().size());
}

TEST_F(RedisClusterStoreTest, FollowsAskAndMovedWhileASlotMigrates) {
  auto store = open_store(cluster_->spec());
  store->append("warm", std::vector<Interaction>{item("w", 1)});  // the slot map is loaded now
  const std::string key = "seqrec:h:mover";
  const int from = cluster_->owner_of(key);
  ASSERT_NE(0, from);
  const int to = cluster_->ports()[from == cluster_->ports()[0] ? 1 : 0];
  auto trimmed = [](std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
  };
  const std::string slot = trimmed(cli_output(from, "CLUSTER KEYSLOT " + key));
  const std::string from_id = trimmed(cli_output(from, "CLUSTER MYID"));
  const std::string to_id = trimmed(cli_output(to, "CLUSTER MYID"));
  ASSERT_EQ(40u, from_id.size()) << from_id;
  ASSERT_NE(std::string::npos, cli_output(to, "CLUSTER SETSLOT " + slot + " IMPORTING " + from_id).find("OK"));
  ASSERT_NE(std::string::npos, cli_output(from, "CLUSTER SETSLOT " + slot + " MIGRATING " + to_id).find("OK"));
  // The key is not on `from`: ASK to `to` (the script, then the merge under ASKING).
  store->append("mover", std::vector<Interaction>{item("1", 10)});
  store->append("mover", std::vector<Interaction>{item("0", 5)});
  EXPECT_EQ((std::vector<std::string>{"0", "1"}), ids_of(store->get("mover")));
  EXPECT_NE(std::string::npos, cli_output(to, "INFO commandstats").find("cmdstat_asking")) << "no ASK followed";
  // The migration done: MOVED, and the map refreshed.
  for (int port : {to, from})
    ASSERT_NE(std::string::npos, cli_output(port, "CLUSTER SETSLOT " + slot + " NODE " + to_id).find("OK"));
  for (int port : cluster_->ports())
    if (port != to && port != from) cli_output(port, "CLUSTER SETSLOT " + slot + " NODE " + to_id);
  EXPECT_EQ("2", trimmed(cli_output(to, "LLEN " + key)));  // the history went to the importing node
  store->append("mover", std::vector<Interaction>{item("2", 20)});
  EXPECT_EQ((std::vector<std::string>{"0", "1", "2"}), ids_of(store->get("mover")));
  EXPECT_EQ(to, cluster_->owner_of(key));
  EXPECT_EQ(1u, count_of(store->item_counts(), "2"));
  EXPECT_TRUE(store->erase("mover"));
  EXPECT_EQ(0u, count_of(store->item_counts(), "0"));
  // A store opened now learns the new map from the start.
  auto fresh = open_store(cluster_->spec());
  fresh->append("mover", std::vector<Interaction>{item("3", 30)});
  EXPECT_EQ((std::vector<std::string>{"3"}), ids_of(store->get("mover")));
}

TEST_F(RedisClusterStoreTest, NothingListeningIsUnavailableNotFatal) {
  const int port = free_loopback_port();
  auto store = open_store("redis-cluster://127.0.0.1:" + std::to_string(port));
  EXPECT_FALSE(store->ready());
  EXPECT_THROW(store->get("u"), StoreUnavailable);
  EXPECT_THROW(store->append("u", std::vector<Interaction>{item("1")}), StoreUnavailable);
  EXPECT_THROW(store->item_counts(), StoreUnavailable);
  try {
    store->get("u");
  } catch (const StoreUnavailable& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e.what();
  }
}

TEST_F(RedisClusterStoreTest, ASeedThatIsDownIsSkipped) {
  const int dead = free_loopback_port();
  auto store = open_store("redis-cluster://127.0.0.1:" + std::to_string(dead) + ",127.0.0.1:" +
                          std::to_string(cluster_->ports()[2]));
  store->append("u", std::vector<Interaction>{item("1", 1)});
  EXPECT_EQ(1u, store->get("u").size());
  EXPECT_TRUE(store->ready());
}

// ---- import: what `seqrec import` wrote, read back -------------------------------------------

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = fresh_dir("import"); fs::create_directories(dir_); }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }

  fs::path dir_;
};

TEST_F(ImportTest, CsvUsersComeBackOldestFirstWithEveryField) {
  const std::string path = write("ratings.csv",
                                 "UserId,MovieId,Rating,Timestamp\n"
                                 "u1,10,4.5,300\n"
                                 "u2,\"a, \"\"quoted\"\" id\",1.0,5\n"
                                 "u1,11,2.0,100\n"
                                 "u1,12,,200\n"
                                 "u1,13,3.0,\n"  // no timestamp: stays after the line before it (12 at 200)
                                 "u1,14,5.0,100\n");
  auto store = open_store("lmdb:" + (dir_ / "store").string());
  const ImportResult result = InteractionFile(path).load_into(*store);
  EXPECT_EQ(6u, result.interactions);
  EXPECT_EQ(2u, result.users);
  expect_same({item("11", 100, 2.0), item("14", 100, 5.0), item("12", 200), item("13", std::nullopt, 3.0),
               item("10", 300, 4.5)},
              store->get("u1"));
  expect_same({item("a, \"quoted\" id", 5, 1.0)}, store->get("u2"));
  EXPECT_EQ(1u, count_of(store->item_counts(), "a, \"quoted\" id"));
}

TEST_F(ImportTest, UserItemLinesKeepFileOrder) {
  const std::string path = write("train.txt", "1 5\n2 7\n1 3\n\n1 9\n");
  auto store = open_store("memory");
  const ImportResult result = InteractionFile(path).load_into(*store);
  EXPECT_EQ(4u, result.interactions);
  expect_same({item("5"), item("3"), item("9")}, store->get("1"));
  expect_same({item("7")}, store->get("2"));
}

TEST_F(ImportTest, ChunksAppendInFileOrderAndTheCapHolds) {
  std::string text = "user\titem\ttimestamp\n";
  for (int i = 0; i < 10; ++i) text += "u\t" + std::to_string(i) + "\t" + std::to_string(i) + "\n";
  const std::string path = write("chunks.tsv", text);
  StoreOptions store_options;
  store_options.max_per_user = 4;
  auto store = open_store("lmdb:" + (dir_ / "store").string(), store_options);
  ImportOptions options;
  options.interactions_per_chunk = 3;
  uint64_t progress_calls = 0;
  options.progress = [&](uint64_t, uint64_t) { ++progress_calls; };
  EXPECT_EQ(10u, InteractionFile(path).load_into(*store, options).interactions);
  EXPECT_EQ((std::vector<std::string>{"6", "7", "8", "9"}), ids_of(store->get("u")));
  EXPECT_EQ(4u, store->item_counts().size());  // the counts are of the stored interactions
  EXPECT_GT(progress_calls, 0u);
}

TEST_F(ImportTest, ColumnsFlagPicksTheColumns) {
  const std::string path = write("custom.csv", "a,b,c\nx,y,7\n");
  const ImportColumns columns = parse_import_columns("user=C, item=a");
  auto store = open_store("memory");
  InteractionFile(path, columns).load_into(*store);
  EXPECT_EQ((std::vector<std::string>{"x"}), ids_of(store->get("7")));
  const ImportColumns none = parse_import_columns("  ");  // no --columns: the defaults
  EXPECT_FALSE(none.user || none.item || none.rating || none.timestamp);
  EXPECT_THROW(parse_import_columns("user=a,user=b"), Error);
  EXPECT_THROW(parse_import_columns("user="), Error);
  EXPECT_THROW(parse_import_columns("colour=a"), Error);
  try {
    InteractionFile(path, parse_import_columns("user=zzz,item=a"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'zzz'"), std::string::npos) << e.what();
  }
}

TEST_F(ImportTest, SkippedBadLinesAreCountedAndNamed) {
  const std::string path = write("bad.csv", "user,item,rating\n1,2,3\n1,2,three\n4,5\n6,7,1\n");
  auto store = open_store("memory");
  try {
    InteractionFile(path).load_into(*store);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(path + ":3: rating 'three' is not a finite number", std::string(e.what()));
  }
  auto fresh = open_store("memory");
  ImportOptions options;
  options.skip_bad_lines = true;
  const ImportResult result = InteractionFile(path).load_into(*fresh, options);
  EXPECT_EQ(2u, result.interactions);
  EXPECT_EQ(2u, result.bad_lines);
  ASSERT_EQ(2u, result.first_bad_lines.size());
  EXPECT_EQ(path + ":4: 2 fields, expected 3 (as in the header)", result.first_bad_lines[1]);
}

TEST_F(ImportTest, HostileBytesAreBadLinesNotCrashes) {
  std::mt19937 random(5);
  for (int n = 0; n < 200; ++n) {
    std::string text = n % 2 ? "user,item,rating,timestamp\n" : "";
    const size_t size = random() % 400;
    for (size_t i = 0; i < size; ++i) text.push_back("ab1,\"\n\r\t \x00\xff"[random() % 12]);
    const std::string path = write("hostile" + std::to_string(n), text);
    auto store = open_store("memory");
    ImportOptions options;
    options.skip_bad_lines = n % 3 != 0;
    try {
      InteractionFile(path).load_into(*store, options);
    } catch (const Error&) {
    }
  }
}

TEST_F(ImportTest, RecordsLongerThanTheFirstBufferFromAFileAndAPipe) {
  // A file's first buffer is its size plus one byte, a pipe's 64 KiB; a quoted item id of
  // 200 KB makes both grow, and the lines around it must come back whole.
  const std::string long_id(200'000, 'x');
  const std::string text = "user,item\nu,a\nu,\"" + long_id + "\"\nu,b\n";
  const std::string path = write("long.csv", text);
  auto from_file = open_store("memory");
  EXPECT_EQ(3u, InteractionFile(path).load_into(*from_file).interactions);
  EXPECT_EQ((std::vector<std::string>{"a", long_id, "b"}), ids_of(from_file->get("u")));

  int fds[2];
  ASSERT_EQ(0, pipe(fds));
  std::thread writer([&] {
    for (size_t at = 0; at < text.size();) {  // small writes: the reader refills many times
      const ssize_t n = ::write(fds[1], text.data() + at, std::min<size_t>(4096, text.size() - at));
      if (n <= 0) break;
      at += static_cast<size_t>(n);
    }
    ::close(fds[1]);
  });
  auto from_pipe = open_store("memory");
  EXPECT_EQ(3u, InteractionFile("/proc/self/fd/" + std::to_string(fds[0])).load_into(*from_pipe).interactions);
  writer.join();
  ::close(fds[0]);
  EXPECT_EQ((std::vector<std::string>{"a", long_id, "b"}), ids_of(from_pipe->get("u")));
}

TEST_F(ImportTest, TheMovieLensRatings) {
  const std::string path = std::string(SEQREC_TEST_DATA_DIR) + "/../../examples/movielens/ratings.csv";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is not there";
  auto store = open_store("lmdb:" + (dir_ / "store").string());
  const ImportResult result = InteractionFile(path).load_into(*store);
  EXPECT_EQ(100836u, result.interactions);
  EXPECT_EQ(610u, result.users);
  const auto user1 = store->get("1");
  ASSERT_EQ(232u, user1.size());
  expect_same({item("804", 964980499, 4.0)}, {user1.front()});
  expect_same({item("2492", 965719662, 4.0)}, {user1.back()});
  for (size_t i = 1; i < user1.size(); ++i) EXPECT_LE(*user1[i - 1].timestamp, *user1[i].timestamp);
  const auto counts = store->item_counts();
  ASSERT_GE(counts.size(), 3u);
  EXPECT_EQ((std::pair<std::string, uint64_t>{"356", 329}), counts[0]);
  EXPECT_EQ((std::pair<std::string, uint64_t>{"318", 317}), counts[1]);
  uint64_t total = 0;
  for (const auto& [id, n] : counts) total += n;
  EXPECT_EQ(100836u, total);
}

// ---- time order ---------------------------------------------------------------------------

TEST(TimeOrder, AHistoryInArrivalOrderIsSortedByTheFirstMerge) {
  // As an older seqrec stored it: arrival order, a missing timestamp inheriting the one before.
  std::vector<Interaction> history = {item("c", 30), item("after-c"), item("a", 10), item("b", 20)};
  EXPECT_EQ(20, latest_time(history));
  merge_in_time_order(history, std::vector<Interaction>{item("x", 15), item("now")});
  EXPECT_EQ((std::vector<std::string>{"a", "x", "b", "c", "after-c", "now"}), ids_of(history));
  std::vector<Interaction> trimmed;
  trim_oldest(history, 4, trimmed);
  EXPECT_EQ((std::vector<std::string>{"a", "x"}), ids_of(trimmed));
  EXPECT_EQ((std::vector<std::string>{"b", "c", "after-c", "now"}), ids_of(history));
}

TEST(TimeOrder, InOrderMeansNoTimestampBelowTheLatest) {
  EXPECT_TRUE(appends_in_order(kEarliestTime, {}));
  EXPECT_TRUE(appends_in_order(5, std::vector<Interaction>{item("a"), item("b", 5), item("c"), item("d", 9)}));
  EXPECT_FALSE(appends_in_order(5, std::vector<Interaction>{item("a", 4)}));
  EXPECT_FALSE(appends_in_order(kEarliestTime, std::vector<Interaction>{item("a", 9), item("b"), item("c", 8)}));
  EXPECT_EQ(kEarliestTime, latest_time(std::vector<Interaction>{item("a"), item("b")}));
}

// ---- encoding -----------------------------------------------------------------------------

TEST(HistoryEncoding, RoundTripsEveryFieldCombination) {
  const std::vector<Interaction> history = {item(""), item("a", 0), item("b", std::nullopt, 0.0),
                                            item("c", INT64_MIN, -1.25), item("d", INT64_MAX, 5.0),
                                            item(std::string(300, 'z'), -1, 1e-300)};
  const std::string value = encode_history(history);
  std::vector<Interaction> decoded;
  decode_history(value, decoded);
  expect_same(history, decoded);
  EXPECT_EQ(history.size(), record_offsets(value).size());
  decoded.clear();
  decode_history(encode_history({}), decoded);
  EXPECT_TRUE(decoded.empty());
}

TEST(HistoryEncoding, EveryTruncationIsAnErrorOrAPrefixNeverACrash) {
  const std::string value = encode_history(std::vector<Interaction>{item("item1", 123456789, 4.5), item("x", -7)});
  for (size_t n = 0; n < value.size(); ++n) {
    std::vector<Interaction> decoded;
    try {
      decode_history(value.substr(0, n), decoded);
      EXPECT_LE(decoded.size(), 1u) << "at " << n;  // only a cut at a record boundary decodes
    } catch (const Error&) {
    }
  }
}

TEST(HistoryEncoding, HostileValuesAreErrors) {
  const auto fails = [](const std::string& value) {
    std::vector<Interaction> out;
    EXPECT_THROW(decode_history(value, out), Error) << "value of " << value.size() << " bytes";
  };
  fails("");
  fails(std::string("\x02", 1));                                      // unknown version
  fails(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11));  // id length 2^63+...
  fails(std::string("\x01\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 12));  // varint > 10 bytes
  fails(std::string("\x01\x05" "ab", 4));                              // id longer than the value
  fails(std::string("\x01\x01" "a\x04", 4));                           // unknown flag
  fails(std::string("\x01\x01" "a\x02\x00\x00", 6));                   // truncated rating
  fails(std::string("\x01\x01" "a\x01", 4));                           // missing timestamp
  std::mt19937 random(42);
  for (int i = 0; i < 20000; ++i) {
    std::string value(1 + random() % 40, '\0');
    for (char& c : value) c = static_cast<char>(random());
    value[0] = static_cast<char>(kEncodingVersion);
    std::vector<Interaction> out;
    try {
      decode_history(value, out);
      record_offsets(value);
    } catch (const Error&) {
    }
  }
}

TEST(HistoryEncoding, Sha256MatchesTheStandardVectors) {
  const auto hex = [](const std::array<uint8_t, 32>& digest) {
    std::string s;
    for (uint8_t b : digest) {
      s += "0123456789abcdef"[b >> 4];
      s += "0123456789abcdef"[b & 15];
    }
    return s;
  };
  EXPECT_EQ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex(sha256("")));
  EXPECT_EQ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex(sha256("abc")));
  EXPECT_EQ("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")));
  EXPECT_EQ("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", hex(sha256(std::string(1000000, 'a'))));
}

// ---- the STORE text -------------------------------------------------------------------------

TEST(OpenStore, ParsesEveryKindOfStoreText) {
  EXPECT_EQ("memory", open_store("memory")->describe());
  EXPECT_EQ("redis://127.0.0.1:6379/0", open_store("redis://127.0.0.1:6379")->describe());
  EXPECT_EQ("redis://localhost:6379/0", open_store("redis://localhost")->describe());
  EXPECT_EQ("redis://cache.internal:7000/2", open_store("redis://cache.internal:7000/2")->describe());
  EXPECT_EQ("redis://[::1]:6380/0", open_store("redis://[::1]:6380/")->describe());
  EXPECT_EQ("redis-cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,cache:6379",
            open_store("redis-cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,cache")->describe());
  EXPECT_EQ("redis-cluster://127.0.0.1:7000", open_store("redis-cluster://127.0.0.1:7000,127.0.0.1:7000")->describe());
}

TEST(OpenStore, ABadTextIsAnErrorNamingIt) {
  for (const std::string bad : {"", "lmdb:", "lmdb", "redis://", "redis://:6379", "redis://host:0", "redis://host:65536",
                                "redis://host:port", "redis://host:6379/x", "redis://host:6379/-1",
                                "redis://user:pw@host:6379", "redis://[::1", "postgres://db", "MEMORY", "redis-cluster://",
                                "redis-cluster://a:1,", "redis-cluster://,a:1", "redis-cluster://a:1/0",
                                "redis-cluster://a:x", "redis-cluster://u:p@a:1"}) {
    try {
      open_store(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + bad + "'"), std::string::npos) << e.what();
    }
  }
  StoreOptions options;
  options.max_per_user = 0;
  EXPECT_THROW(open_store("memory", options), Error);
}

}  // namespace
}  // namespace seqrec::history
