// seqrec_timing: the engine in-process, timed the way bench/compare.py times its peers.
//
//   seqrec_timing --model M.seqrec --requests NAME=FILE [--requests NAME=FILE ...]
//   seqrec_timing --sgemm-only      (no model: answers only `sgemm` and `quit`)
//
// Each request file holds one request per line: the history's item ids, oldest first,
// separated by spaces (ids as in the model's catalog; `seqrec convert` without --item-ids
// gives row r the id "r"). An item may be written ID@TIMESTAMP (an integer, in the model's
// time unit), and the line may end with now=T (Request::now); an item without a timestamp gets
// its position in the line (0, 1, ...), which keeps the order for models that read none.
// Every request asks for k = 10 with recommend_seen = true, so the top-10 is the model's own
// ranking and can be compared with a peer's logits.
//
// Commands, one per line on stdin; each answer is one JSON line on stdout:
//   run SET B T [S [M]]  time the whole set once — cycled over until at least 8·B·T requests
//                 are answered, so that small sets still give every thread several batches
//                 (N' = max(N, 8·B·T)), and with M > 0 N' again until M seconds have passed:
//                 T threads, each with its own Workspace, take chunks of B requests from a
//                 shared counter and answer each chunk with ONE Recommender::recommend call
//                 (a chunk never wraps past the set's end); with S > 0, no chunk starts after
//                 S seconds. The clock starts when all T threads are awake (see Timer::pass).
//                 One untimed warm-up pass over min(N, 4·B·T) requests comes first. Answers
//                 {"seconds": wall time of the pass, "n": requests answered,
//                 "batch_ms": [latency of each recommend call]}.
//   top SET B     one pass with batch B on one thread; answers {"top": [[row, ...], ...],
//                 "scores": [[score, ...], ...]}: each request's top-10 rows and raw scores.
//   sgemm         single-core OpenBLAS sgemm, n = 1024 (the machine's limit of the
//                 performance spec); answers {"gflops": median of 7 calls}, or -1 when the
//                 product is wrong (64 entries checked against double precision), and
//                 "core": the kernel OpenBLAS picked. It picks once, at load, from the CPU or
//                 OPENBLAS_CORETYPE: compare.py runs one --sgemm-only process per kernel it tries.
//   quit
//
// Threading: kernels::set_gemm_threads(1) — parallelism comes from the T workers, each with
// its own Workspace, as in `seqrec serve` (whose worker pool makes the same call). Request
// parsing (ids -> Request) happens once at load and is not timed; everything recommend()
// does (sequence building from string ids, forward pass, scoring GEMM, top-k, response
// strings) is.
#include <cblas.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "engine/recommender.h"
#include "engine/tensor.h"
#include "kernels/gemm.h"
#include "weights/model_loader.h"

namespace {

using Clock = std::chrono::steady_clock;
using seqrec::Request;

std::vector<Request> read_requests(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw seqrec::Error("cannot read request file '" + path + "'");
  std::vector<Request> out;
  std::string line;
  size_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    auto integer = [&](std::string_view text) {
      int64_t value = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (error != std::errc() || end != text.data() + text.size() || text.empty())
        throw seqrec::Error(path + ":" + std::to_string(line_number) + ": '" + std::string(text) +
                            "' is not an integer");
      return value;
    };
    Request r;
    r.k = 10;
    r.recommend_seen = true;
    std::istringstream words(line);
    std::string word;
    int64_t position = 0;
    while (words >> word) {
      const std::string_view w = word;
      if (w.starts_with("now=")) {
        r.now = integer(w.substr(4));
        continue;
      }
      const size_t at = w.find('@');
      if (at == std::string_view::npos)
        r.interactions.push_back({word, position, std::nullopt});
      else
        r.interactions.push_back({word.substr(0, at), integer(w.substr(at + 1)), std::nullopt});
      ++position;
    }
    out.push_back(std::move(r));
  }
  return out;
}

struct Pass {
  double seconds = 0;
  size_t answered = 0;
  std::vector<double> batch_ms;
};

class Timer {
 public:
  explicit Timer(std::shared_ptr<const seqrec::Recommender> rec) : rec_(std::move(rec)) {}
  ~Timer() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quitting_ = true;
    }
    wake_.notify_all();
    for (auto& th : helpers_) th.join();
  }

  // Answers requests [0, n) of `set` with batch b on t threads. `top`, when given, gets each
  // request's top-10 rows.
  // budget_s > 0: no chunk is started after that many seconds (Pass::answered tells how many
  // requests were answered). min_s > 0: the n requests are answered again (whole rounds of n)
  // until min_s seconds have passed, so that a fast pass is not shorter than the scheduler's
  // noise (see compare.py --min-pass).
  // The calling thread is worker 0; workers 1..t-1 are threads kept across passes (as the
  // server's worker pool keeps its threads), so a short pass does not time thread start-up.
  Pass pass(const std::vector<Request>& set, size_t n, size_t b, size_t t,
            std::vector<std::vector<seqrec::ScoredItem>>* top, double budget_s = 0, double min_s = 0) {
    while (workspaces_.size() < t) workspaces_.emplace_back(std::make_unique<seqrec::Workspace>());
    while (helpers_.size() + 1 < t) helpers_.emplace_back([this, w = helpers_.size() + 1, g = generation_] { helper_loop(w, g); });
    std::atomic<size_t> next{0}, answered{0}, arrived{0}, limit{n};
    std::atomic<bool> go{false};
    Clock::time_point start;
    std::vector<std::vector<double>> lat(t);
    // The clock starts once every worker is running: waking a thread that slept between
    // passes (here, a 2-vCPU VM whose other vCPU may be halted) took up to a whole short
    // pass, which then ran on one thread — a server's workers under load are awake.
    auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
    auto work = [&](size_t w) {
      seqrec::Workspace& ws = *workspaces_[w];
      for (;;) {
        if (budget_s > 0 && elapsed() > budget_s) break;
        const size_t begin = next.fetch_add(b);
        size_t until = limit.load();
        while (begin >= until && elapsed() < min_s)  // one more round of n
          if (limit.compare_exchange_weak(until, until + n)) until += n;
        if (begin >= until) break;
        const size_t first = begin % set.size();  // n may exceed the set: cycle over it
        const size_t end = std::min({until, begin + b, begin + (set.size() - first)});
        answered += end - begin;
        const auto t0 = Clock::now();
        std::vector<seqrec::Response> responses =
            rec_->recommend(std::span<const Request>(set.data() + first, end - begin), ws);
        lat[w].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        if (top)
          for (size_t i = begin; i < end; ++i) (*top)[i % set.size()] = std::move(responses[i - begin].recommendations);
      }
    };
    auto helper_work = [&](size_t w) {
      arrived.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      work(w);
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = helper_work;
      job_threads_ = t;
      pending_ = t - 1;
      ++generation_;
    }
    wake_.notify_all();
    while (arrived.load() + 1 < t) std::this_thread::yield();
    start = Clock::now();
    go.store(true, std::memory_order_release);
    work(0);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return pending_ == 0; });
      job_ = nullptr;
    }
    Pass p;
    p.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    p.answered = answered;
    for (auto& l : lat) p.batch_ms.insert(p.batch_ms.end(), l.begin(), l.end());
    return p;
  }

 private:
  // Worker w (>= 1): runs each pass's job when the pass uses more than w threads.
  // `seen`: the generation when it was started (it joins from the next pass on).
  void helper_loop(size_t w, uint64_t seen) {
    for (;;) {
      std::function<void(size_t)> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return quitting_ || generation_ != seen; });
        if (quitting_) return;
        seen = generation_;
        if (w >= job_threads_) continue;
        job = job_;
      }
      job(w);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --pending_;
      }
      done_.notify_all();
    }
  }

  std::shared_ptr<const seqrec::Recommender> rec_;
  std::vector<std::unique_ptr<seqrec::Workspace>> workspaces_;
  std::vector<std::thread> helpers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::function<void(size_t)> job_;
  size_t job_threads_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool quitting_ = false;
};

double sgemm_gflops() {
  const int n = 1024;
  seqrec::FloatBuffer a(n * n), b(n * n), c(n * n);
  for (int i = 0; i < n * n; ++i) {
    a[i] = static_cast<float>((i * 7 % 13) - 6) * 0.01f;
    b[i] = static_cast<float>((i * 5 % 11) - 5) * 0.01f;
  }
  openblas_set_num_threads(1);
  std::vector<double> g;
  for (int rep = 0; rep < 8; ++rep) {
    const auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                n);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (rep > 0) g.push_back(2.0 * n * n * n / s / 1e9);  // the first call is a warm-up
  }
  std::sort(g.begin(), g.end());
  seqrec::kernels::set_gemm_threads(1);
  // The product must be right (OPENBLAS_CORETYPE may pick a kernel that is not): 64 entries
  // against a double-precision dot product.
  for (int s = 0; s < 64; ++s) {
    const int i = (s * 131) % n, j = (s * 197 + 7) % n;
    double want = 0;
    for (int p = 0; p < n; ++p) want += static_cast<double>(a[i * n + p]) * b[p * n + j];
    if (std::abs(c[i * n + j] - want) > 1e-3 * (1.0 + std::abs(want))) return -1.0;
  }
  return g[g.size() / 2];
}

// The `sgemm` command's answer: {"gflops": ..., "core": "..."}.
std::string sgemm_answer() {
  const double gflops = sgemm_gflops();
  return "{\"gflops\": " + std::to_string(gflops) + ", \"core\": \"" + openblas_get_corename() + "\"}";
}

void print_pass(const Pass& p) {
  std::string s = "{\"seconds\": " + std::to_string(p.seconds) + ", \"n\": " + std::to_string(p.answered) +
                  ", \"batch_ms\": [";
  for (size_t i = 0; i < p.batch_ms.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.5f", i ? ", " : "", p.batch_ms[i]);
    s += buf;
  }
  std::cout << s << "]}" << std::endl;
}

int usage() {
  std::cerr << "usage: seqrec_timing --model M.seqrec --requests NAME=FILE [--requests NAME=FILE ...]\n"
               "       seqrec_timing --sgemm-only\n"
               "then commands on stdin: run SET B T [S [M]] | top SET B | sgemm | quit\n";
  return 2;
}

// --sgemm-only: the machine's limit with whatever kernel this process's OpenBLAS picked.
int sgemm_only() {
  std::cout << "{\"ready\": true}" << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "quit") break;
    if (line == "sgemm")
      std::cout << sgemm_answer() << std::endl;
    else
      std::cout << "{\"error\": \"bad command: " << line << " (--sgemm-only)\"}" << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model;
  std::map<std::string, std::vector<Request>> sets;
  if (argc == 2 && std::string(argv[1]) == "--sgemm-only") return sgemm_only();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--model" && i + 1 < argc) {
      model = argv[++i];
    } else if (arg == "--requests" && i + 1 < argc) {
      const std::string spec = argv[++i];
      const auto eq = spec.find('=');
      if (eq == std::string::npos) return usage();
      sets[spec.substr(0, eq)] = read_requests(spec.substr(eq + 1));
    } else {
      return usage();
    }
  }
  if (model.empty() || sets.empty()) return usage();

  seqrec::kernels::set_gemm_threads(1);
  Timer timer(seqrec::load_recommender(model).recommender);
  std::cout << "{\"ready\": true}" << std::endl;

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd, set_name;
    in >> cmd;
    if (cmd == "quit") break;
    if (cmd == "sgemm") {
      std::cout << sgemm_answer() << std::endl;
      continue;
    }
    size_t b = 1, t = 1;
    in >> set_name >> b;
    double budget_s = 0, min_s = 0;
    if (cmd == "run") in >> t >> budget_s >> min_s;
    auto it = sets.find(set_name);
    if (it == sets.end() || b < 1 || t < 1 || (cmd != "run" && cmd != "top")) {
      std::cout << "{\"error\": \"bad command: " << line << "\"}" << std::endl;
      continue;
    }
    const std::vector<Request>& set = it->second;
    if (cmd == "top") {
      std::vector<std::vector<seqrec::ScoredItem>> top(set.size());
      timer.pass(set, set.size(), b, 1, &top);
      std::string rows = "{\"top\": [", scores = "\"scores\": [";
      for (size_t i = 0; i < top.size(); ++i) {
        rows += i ? ", [" : "[";
        scores += i ? ", [" : "[";
        for (size_t j = 0; j < top[i].size(); ++j) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%s%.9g", j ? ", " : "", top[i][j].score);
          rows += (j ? ", " : "") + std::to_string(top[i][j].row);
          scores += buf;
        }
        rows += "]";
        scores += "]";
      }
      std::cout << rows << "], " << scores << "]}" << std::endl;
      continue;
    }
    timer.pass(set, std::min(set.size(), 4 * b * t), b, t, nullptr);  // warm-up
    print_pass(timer.pass(set, std::max(set.size(), 8 * b * t), b, t, nullptr, budget_s, min_s));
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "seqrec_timing: " << e.what() << "\n";
  return 1;
}
