// The inference worker pool: batching what is queued, backpressure, model swaps, drain.
#include "engine/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>

#include "test_models.h"

namespace seqrec {
namespace {

std::shared_ptr<const Recommender> small_recommender(unsigned seed = 7) {
  ModelSpec spec = testing::small_spec();
  return std::make_shared<const Recommender>(spec, testing::random_weights(spec, seed),
                                             testing::offset_ids(spec.n_items), std::vector<uint64_t>{}, std::nullopt);
}

Request one_item(const std::string& id) {
  Request r;
  r.interactions.push_back({id, 1, std::nullopt});
  r.k = 3;
  return r;
}

// Holds the only worker inside a completion until released, so the queue can be filled.
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;
  std::promise<void> entered;
  void wait() {
    entered.set_value();
    std::unique_lock lock(mutex);
    cv.wait(lock, [this] { return open; });
  }
  void release() {
    {
      std::lock_guard lock(mutex);
      open = true;
    }
    cv.notify_all();
  }
};

TEST(WorkerPool, AFullQueueRefusesAndEverythingAcceptedIsAnswered) {
  std::vector<size_t> batch_sizes;
  std::mutex sizes_mutex;
  WorkerPool pool(small_recommender(), {.threads = 1, .max_batch = 8, .queue_capacity = 3},
                  [&](size_t size, double) {
                    std::lock_guard lock(sizes_mutex);
                    batch_sizes.push_back(size);
                  });
  Gate gate;
  std::atomic<int> answered{0};
  auto done = [&](Response response, std::exception_ptr error) {
    EXPECT_FALSE(error);
    EXPECT_EQ(response.recommendations.size(), 3u);
    ++answered;
  };
  ASSERT_TRUE(pool.submit(one_item("101"), [&](Response r, std::exception_ptr e) {
    done(std::move(r), e);
    gate.wait();  // the worker is now busy until released
  }));
  gate.entered.get_future().wait();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(pool.submit(one_item("102"), done)) << i;
  EXPECT_EQ(pool.queue_depth(), 3u);
  EXPECT_FALSE(pool.submit(one_item("103"), done)) << "a full queue must refuse (the server answers 503)";
  gate.release();
  pool.shutdown();  // drains: everything accepted is answered
  EXPECT_EQ(answered, 4);
  EXPECT_FALSE(pool.submit(one_item("104"), done)) << "a stopped pool takes nothing";
  // The three queued requests were answered together, as one batch.
  ASSERT_EQ(batch_sizes.size(), 2u);
  EXPECT_EQ(batch_sizes[1], 3u);
}

TEST(WorkerPool, ASwappedModelAnswersTheNextRequests) {
  auto first = small_recommender(1), second = small_recommender(2);
  WorkerPool pool(first, {.threads = 2});
  auto ask = [&] {
    std::promise<Response> answer;
    pool.submit(one_item("105"), [&](Response r, std::exception_ptr) { answer.set_value(std::move(r)); });
    return answer.get_future().get();
  };
  Workspace ws;
  const Request request = one_item("105");
  const Response from_first = ask();
  EXPECT_EQ(from_first.recommendations[0].score, first->recommend({&request, 1}, ws)[0].recommendations[0].score);
  pool.set_recommender(second);
  const Response from_second = ask();
  EXPECT_EQ(from_second.recommendations[0].score, second->recommend({&request, 1}, ws)[0].recommendations[0].score);
  EXPECT_NE(from_first.recommendations[0].score, from_second.recommendations[0].score);
}

}  // namespace
}  // namespace seqrec
