#include "engine/worker_pool.h"

#include <chrono>
#include <span>

#include "kernels/gemm.h"

namespace seqrec {

WorkerPool::WorkerPool(Options options, BatchObserver observer, QueueObserver queue_observer)
    : options_(options), observer_(std::move(observer)), queue_observer_(std::move(queue_observer)) {
  if (options_.threads < 1) options_.threads = 1;
  if (options_.max_batch < 1) options_.max_batch = 1;
  // The workers are the parallelism: each GEMM runs on the calling worker's thread only,
  // so N workers use N cores and nothing oversubscribes.
  kernels::set_gemm_threads(1);
  for (int i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { run(); });
}

WorkerPool::~WorkerPool() { shutdown(); }

bool WorkerPool::enqueue(Job job) {
  job.queued = std::chrono::steady_clock::now();
  bool wake;
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || static_cast<int64_t>(queue_.size()) >= options_.queue_capacity) return false;
    queue_.push_back(std::move(job));
    queued_.store(queue_.size(), std::memory_order_release);
    // A spinning worker takes it without a wake-up; only a sleeping one needs the futex.
    wake = sleeping_ > 0;
  }
  if (wake) work_ready_.notify_one();
  return true;
}

bool WorkerPool::submit(ModelHandle model, Request request, Completion done, uint64_t client) {
  if (try_inline(model, request, done, client)) return true;
  return enqueue(Job{std::move(model), std::move(request), std::nullopt, std::move(done)});
}

bool WorkerPool::try_inline(ModelHandle& model, Request& request, Completion& done, uint64_t client) {
  if (options_.inline_max_microseconds <= 0 || client == 0) return false;
  {
    std::lock_guard lock(mutex_);
    const int active_clients = active_clients_.note(client, std::chrono::steady_clock::now());
    if (stopping_ || inline_busy_ || computing_ > 0 || !queue_.empty()) return false;
    const auto known = batch1_seconds_.find(model.recommender.get());
    if (known == batch1_seconds_.end() || active_clients * known->second * 1e6 > options_.inline_max_microseconds)
      return false;
    inline_busy_ = true;
  }
  if (queue_observer_) queue_observer_(0.0);
  std::vector<Response> responses;
  std::exception_ptr error;
  const auto start = std::chrono::steady_clock::now();
  try {
    responses = model.recommender->recommend(std::span<const Request>(&request, 1), inline_workspace_,
                                             model.popularity.get());
  } catch (...) {
    error = std::current_exception();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    std::lock_guard lock(mutex_);
    inline_busy_ = false;
    note_batch1_seconds(model.recommender.get(), seconds);
  }
  if (observer_) observer_(1, seconds);
  done(error ? Response{} : std::move(responses[0]), error);
  return true;
}

int ActiveClients::note(uint64_t client, std::chrono::steady_clock::time_point now) {
  entries_[next_] = {client, now};
  next_ = (next_ + 1) % kSize;
  const auto recent = [now](const Entry& e) { return e.client != 0 && e.at <= now && now - e.at <= kWindow; };
  int distinct = 0;
  for (int i = 0; i < kSize; ++i) {
    if (!recent(entries_[i])) continue;
    bool counted = false;  // at an earlier slot already
    for (int j = 0; j < i && !counted; ++j) counted = entries_[j].client == entries_[i].client && recent(entries_[j]);
    distinct += !counted;
  }
  return distinct;
}

void WorkerPool::note_batch1_seconds(const Recommender* model, double seconds) {
  if (batch1_seconds_.size() >= 64 && !batch1_seconds_.count(model)) batch1_seconds_.clear();  // models come and go
  batch1_seconds_[model] = seconds;
}

bool WorkerPool::submit_similar(ModelHandle model, std::string item_id, Request request, Completion done) {
  return enqueue(Job{std::move(model), std::move(request), std::move(item_id), std::move(done)});
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
  std::vector<size_t> group;  // indices into batch: one model's recommend jobs
  std::vector<Request> requests;
  std::vector<bool> done_jobs;
  for (;;) {
    batch.clear();
    // Watch the queue a moment before sleeping (Options::spin_microseconds).
    if (options_.spin_microseconds > 0 && queued_.load(std::memory_order_acquire) == 0) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.spin_microseconds);
      while (queued_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
    }
    {
      std::unique_lock lock(mutex_);
      if (!stopping_ && queue_.empty()) {
        ++sleeping_;
        work_ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        --sleeping_;
      }
      if (queue_.empty()) return;  // stopping, and everything is answered
      while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      queued_.store(queue_.size(), std::memory_order_release);
      ++computing_;
    }
    if (queue_observer_) {
      const auto taken = std::chrono::steady_clock::now();
      for (const Job& job : batch) queue_observer_(std::chrono::duration<double>(taken - job.queued).count());
    }
    done_jobs.assign(batch.size(), false);
    for (size_t first = 0; first < batch.size(); ++first) {
      if (done_jobs[first]) continue;
      Job& lead = batch[first];
      if (lead.similar_to) {  // one item at a time: a scan of the item table, no forward pass
        Response response;
        std::exception_ptr error;
        try {
          response = lead.model.recommender->similar_items(*lead.similar_to, lead.request, workspace);
        } catch (...) {
          error = std::current_exception();
        }
        done_jobs[first] = true;
        lead.done(std::move(response), error);
        continue;
      }
      // Every recommend job of this model (and cold-start counts) taken in this batch: one pass.
      group.clear();
      requests.clear();
      for (size_t i = first; i < batch.size(); ++i) {
        if (done_jobs[i] || batch[i].similar_to || batch[i].model.recommender != lead.model.recommender ||
            batch[i].model.popularity != lead.model.popularity)
          continue;
        group.push_back(i);
        requests.push_back(std::move(batch[i].request));
      }
      const auto start = std::chrono::steady_clock::now();
      std::vector<Response> responses;
      std::exception_ptr error;
      try {
        responses = lead.model.recommender->recommend(requests, workspace, lead.model.popularity.get());
      } catch (...) {
        error = std::current_exception();
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (group.size() == 1 && options_.inline_max_microseconds > 0) {
        std::lock_guard lock(mutex_);
        note_batch1_seconds(lead.model.recommender.get(), seconds);
      }
      if (observer_) observer_(group.size(), seconds);
      for (size_t g = 0; g < group.size(); ++g) {
        done_jobs[group[g]] = true;
        batch[group[g]].done(error ? Response{} : std::move(responses[g]), error);
      }
    }
    std::lock_guard lock(mutex_);
    --computing_;
  }
}

}  // namespace seqrec
