// Inference workers (product.md "Serving model"): a fixed pool fed by one bounded queue.
// A worker takes everything queued (up to max_batch) and answers it with ONE
// Recommender::recommend call, so concurrent requests share one forward pass and one
// scoring GEMM. Callers never compute; completions run on the worker thread and should
// only hand the response back (e.g. post it to a connection's strand).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/recommender.h"

namespace seqrec {

class WorkerPool {
 public:
  struct Options {
    int threads = 1;              // inference workers
    int max_batch = 64;           // most requests answered by one forward pass
    int64_t queue_capacity = 4096;  // beyond this submit() refuses (the server answers 503)
  };
  // Called with the response, or with an exception_ptr when the engine failed.
  using Completion = std::function<void(Response response, std::exception_ptr error)>;
  // Called after each batch with its size and its compute time (metrics).
  using BatchObserver = std::function<void(size_t batch_size, double seconds)>;

  WorkerPool(std::shared_ptr<const Recommender> recommender, Options options, BatchObserver observer = {});
  ~WorkerPool();  // answers what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues one request; false when the queue is full or the pool is stopping.
  bool submit(Request request, Completion done);

  // Atomically replaces the model: batches already taken finish on the old one.
  void set_recommender(std::shared_ptr<const Recommender> recommender);
  std::shared_ptr<const Recommender> recommender() const;

  // Popularity per catalog row of the current model (cold start); null = the model's own.
  void set_popularity(std::shared_ptr<const std::vector<uint64_t>> counts);

  size_t queue_depth() const;
  // Stops taking work, answers everything queued, joins the workers. Idempotent.
  void shutdown();

 private:
  struct Job {
    Request request;
    Completion done;
  };
  void run();

  Options options_;
  BatchObserver observer_;
  std::atomic<std::shared_ptr<const Recommender>> recommender_;
  std::atomic<std::shared_ptr<const std::vector<uint64_t>>> popularity_;
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace seqrec
