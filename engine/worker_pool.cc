#include "engine/worker_pool.h"

#include <chrono>

#include "kernels/gemm.h"

namespace seqrec {

WorkerPool::WorkerPool(std::shared_ptr<const Recommender> recommender, Options options, BatchObserver observer)
    : options_(options), observer_(std::move(observer)), recommender_(std::move(recommender)) {
  if (options_.threads < 1) options_.threads = 1;
  if (options_.max_batch < 1) options_.max_batch = 1;
  // The workers are the parallelism: each GEMM runs on the calling worker's thread only,
  // so N workers use N cores and nothing oversubscribes.
  kernels::set_gemm_threads(1);
  for (int i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { run(); });
}

WorkerPool::~WorkerPool() { shutdown(); }

bool WorkerPool::submit(Request request, Completion done) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || static_cast<int64_t>(queue_.size()) >= options_.queue_capacity) return false;
    queue_.push_back(Job{std::move(request), std::move(done)});
  }
  work_ready_.notify_one();
  return true;
}

void WorkerPool::set_recommender(std::shared_ptr<const Recommender> recommender) {
  recommender_.store(std::move(recommender));
}

std::shared_ptr<const Recommender> WorkerPool::recommender() const { return recommender_.load(); }

void WorkerPool::set_popularity(std::shared_ptr<const std::vector<uint64_t>> counts) {
  popularity_.store(std::move(counts));
}

size_t WorkerPool::queue_depth() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void WorkerPool::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

void WorkerPool::run() {
  Workspace workspace;  // this worker's scratch, reused across batches
  std::vector<Job> batch;
  std::vector<Request> requests;
  for (;;) {
    batch.clear();
    {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything is answered
      while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    requests.clear();
    for (Job& job : batch) requests.push_back(std::move(job.request));
    const std::shared_ptr<const Recommender> model = recommender_.load();  // held for the whole batch
    const std::shared_ptr<const std::vector<uint64_t>> popularity = popularity_.load();
    const auto start = std::chrono::steady_clock::now();
    std::vector<Response> responses;
    std::exception_ptr error;
    try {
      responses = model->recommend(requests, workspace, popularity.get());
    } catch (...) {
      error = std::current_exception();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (observer_) observer_(batch.size(), seconds);
    for (size_t i = 0; i < batch.size(); ++i) batch[i].done(error ? Response{} : std::move(responses[i]), error);
  }
}

}  // namespace seqrec
