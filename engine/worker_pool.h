// Inference workers (product.md "Serving model"): a fixed pool fed by one bounded queue.
// A worker takes everything queued (up to max_batch) and answers the requests for one model
// with ONE Recommender::recommend call, so concurrent requests share one forward pass and one
// scoring GEMM. The pool serves any number of models: each job carries the model it is for
// (held until the job is answered, so a model swapped out meanwhile finishes what it took).
// Completions run on the thread that computed and should only hand the response back (e.g.
// post it to a connection's strand).
//
// One exception to "callers never compute": a request that names its client (e.g. the HTTP
// connection) may run on the submitting thread, one at a time, when
//   - no worker is computing and nothing is queued, and
//   - (clients seen in the last ActiveClients::kWindow) x (the model's last batch-1 time) is at
//     most inline_max_microseconds: all the work the submitting thread could be asked to do
//     back to back for the clients active now stays within that budget.
// One client at a time then skips the hand-off to a worker and back (two thread wake-ups,
// which cost more than a small model's inference); many clients (a loaded server) go to the
// workers, which batch them. The client count matters because an I/O thread that computes
// does not read the other connections meanwhile: their requests never reach the queue, so
// "the queue is empty" alone cannot tell one client from sixty-four. A model never measured
// yet (its first request), and a request without a client, always go to the queue.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/recommender.h"

namespace seqrec {

// A model as a job uses it: the recommender and its cold-start counts.
struct ModelHandle {
  std::shared_ptr<const Recommender> recommender;
  // One count per catalog row (e.g. from the history store); null: the model file's own.
  std::shared_ptr<const std::vector<uint64_t>> popularity;
};

// Who sent the latest requests: a ring of the last kSize (client, time) pairs, enough to tell
// one, a few and many clients apart. Not thread-safe (the pool calls it under its mutex).
class ActiveClients {
 public:
  static constexpr int kSize = 32;
  static constexpr std::chrono::milliseconds kWindow{10};
  // Records `client`'s request at `now` → the distinct clients (non-zero) seen within kWindow
  // before `now`, this one included; at most kSize.
  int note(uint64_t client, std::chrono::steady_clock::time_point now);

 private:
  struct Entry {
    uint64_t client = 0;
    std::chrono::steady_clock::time_point at{};
  };
  Entry entries_[kSize];
  int next_ = 0;
};

class WorkerPool {
 public:
  struct Options {
    int threads = 1;              // inference workers
    int max_batch = 64;           // most requests taken at once (one forward pass per model)
    int64_t queue_capacity = 4096;  // beyond this submit() refuses (the server answers 503)
    // After a batch a worker watches the queue this long before it sleeps: a request that
    // arrives meanwhile is taken without a futex wake-up (the hand-off that dominates one
    // request at a time). 0: sleep at once.
    int spin_microseconds = 50;
    // The inline path above: its budget in µs (active clients x the model's batch-1 time).
    // 0: never.
    int inline_max_microseconds = 0;
  };
  // Called with the response, or with an exception_ptr when the engine failed.
  using Completion = std::function<void(Response response, std::exception_ptr error)>;
  // Called after each forward pass with its size and its compute time (metrics).
  using BatchObserver = std::function<void(size_t batch_size, double seconds)>;
  // Called for each job taken, with the time it waited in the queue (metrics).
  using QueueObserver = std::function<void(double seconds)>;

  explicit WorkerPool(Options options, BatchObserver observer = {}, QueueObserver queue_observer = {});
  ~WorkerPool();  // answers what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues one request for `model`; false when the queue is full or the pool is stopping.
  // `client` (non-zero) names who sent it, e.g. the connection: only then may it run inline.
  bool submit(ModelHandle model, Request request, Completion done, uint64_t client = 0);
  // Queues one similar-items request (Recommender::similar_items) for `model`.
  bool submit_similar(ModelHandle model, std::string item_id, Request request, Completion done);

  size_t queue_depth() const;
  // Stops taking work, answers everything queued, joins the workers. Idempotent.
  void shutdown();

 private:
  struct Job {
    ModelHandle model;
    Request request;
    std::optional<std::string> similar_to;  // set: a similar-items job
    Completion done;
    std::chrono::steady_clock::time_point queued{};
  };
  bool enqueue(Job job);
  // Runs the request on this thread when the inline path's conditions hold (see above).
  bool try_inline(ModelHandle& model, Request& request, Completion& done, uint64_t client);
  // The latest batch-1 time of a model (under mutex_), which decides whether it may run inline.
  void note_batch1_seconds(const Recommender* model, double seconds);
  void run();

  Options options_;
  BatchObserver observer_;
  QueueObserver queue_observer_;
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;
  std::deque<Job> queue_;
  std::atomic<size_t> queued_{0};  // queue_.size(), readable without the mutex (spinning workers)
  int sleeping_ = 0;               // workers waiting on work_ready_ (under mutex_)
  int computing_ = 0;              // workers between taking a batch and answering it (under mutex_)
  bool inline_busy_ = false;       // a request is running inline (under mutex_)
  Workspace inline_workspace_;     // its scratch (used by the one inline request)
  std::unordered_map<const Recommender*, double> batch1_seconds_;  // under mutex_
  ActiveClients active_clients_;  // of the requests offered to the inline path (under mutex_)
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace seqrec
