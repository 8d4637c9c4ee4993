// The inference worker pool: batching what is queued, backpressure, several models, drain.
#include "engine/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

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
  const ModelHandle model{small_recommender(), nullptr};
  WorkerPool pool({.threads = 1, .max_batch = 8, .queue_capacity = 3},
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
  ASSERT_TRUE(pool.submit(model, one_item("101"), [&](Response r, std::exception_ptr e) {
    done(std::move(r), e);
    gate.wait();  // the worker is now busy until released
  }));
  gate.entered.get_future().wait();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(pool.submit(model, one_item("102"), done)) << i;
  EXPECT_EQ(pool.queue_depth(), 3u);
  EXPECT_FALSE(pool.submit(model, one_item("103"), done)) << "a full queue must refuse (the server answers 503)";
  gate.release();
  pool.shutdown();  // drains: everything accepted is answered
  EXPECT_EQ(answered, 4);
  EXPECT_FALSE(pool.submit(model, one_item("104"), done)) << "a stopped pool takes nothing";
  // The three queued requests were answered together, as one batch.
  ASSERT_EQ(batch_sizes.size(), 2u);
  EXPECT_EQ(batch_sizes[1], 3u);
}

TEST(WorkerPool, RequestsForDifferentModelsInOneBatchAreEachAnsweredByTheirOwn) {
  const ModelHandle first{small_recommender(1), nullptr}, second{small_recommender(2), nullptr};
  std::vector<size_t> batch_sizes;
  std::mutex sizes_mutex;
  WorkerPool pool({.threads = 1, .max_batch = 16}, [&](size_t size, double) {
    std::lock_guard lock(sizes_mutex);
    batch_sizes.push_back(size);
  });
  Gate gate;
  ASSERT_TRUE(pool.submit(first, one_item("101"), [&](Response, std::exception_ptr) { gate.wait(); }));
  gate.entered.get_future().wait();
  // Queued while the worker is busy: taken together, answered in one pass per model.
  std::vector<std::promise<Response>> answers(5);
  std::promise<Response> similar;
  const ModelHandle order[] = {first, second, first, second, first};
  for (size_t i = 0; i < 5; ++i)
    ASSERT_TRUE(pool.submit(order[i], one_item("105"),
                            [&answers, i](Response r, std::exception_ptr e) {
                              EXPECT_FALSE(e);
                              answers[i].set_value(std::move(r));
                            }));
  Request similar_request;
  similar_request.k = 2;
  ASSERT_TRUE(pool.submit_similar(second, "105", similar_request, [&](Response r, std::exception_ptr e) {
    EXPECT_FALSE(e);
    similar.set_value(std::move(r));
  }));
  gate.release();
  Workspace ws;
  const Request request = one_item("105");
  const float from_first = first.recommender->recommend({&request, 1}, ws)[0].recommendations[0].score;
  const float from_second = second.recommender->recommend({&request, 1}, ws)[0].recommendations[0].score;
  ASSERT_NE(from_first, from_second);
  for (size_t i = 0; i < 5; ++i)
    EXPECT_EQ(answers[i].get_future().get().recommendations[0].score, i % 2 ? from_second : from_first) << i;
  const Response got_similar = similar.get_future().get();
  const Response expected_similar = second.recommender->similar_items("105", similar_request, ws);
  ASSERT_EQ(got_similar.recommendations.size(), 2u);
  EXPECT_EQ(got_similar.recommendations[0].id, expected_similar.recommendations[0].id);
  pool.shutdown();
  // The first request alone, then the five as one pass for each model.
  EXPECT_EQ(batch_sizes, (std::vector<size_t>{1, 3, 2}));
}

constexpr uint64_t kClient = 7;

TEST(WorkerPool, AnIdlePoolAnswersAMeasuredCheapModelOnTheSubmittingThread) {
  const ModelHandle model{small_recommender(), nullptr};
  std::vector<size_t> batch_sizes;
  std::mutex sizes_mutex;
  WorkerPool pool({.threads = 1, .max_batch = 8, .inline_max_microseconds = 100000}, [&](size_t size, double) {
    std::lock_guard lock(sizes_mutex);
    batch_sizes.push_back(size);
  });
  const auto submit_and_wait = [&](const std::string& id) {
    std::promise<std::thread::id> answered_on;
    EXPECT_TRUE(pool.submit(model, one_item(id), [&](Response r, std::exception_ptr e) {
      EXPECT_FALSE(e);
      EXPECT_EQ(r.recommendations.size(), 3u);
      answered_on.set_value(std::this_thread::get_id());
    }, kClient));
    return answered_on.get_future().get();
  };
  // A model never measured goes to a worker (its cost is unknown)...
  EXPECT_NE(submit_and_wait("101"), std::this_thread::get_id());
  // ...then, measured and with the pool idle, it runs here. (The worker counts as computing
  // until its completion returns, a moment after the answer above arrives: wait for it.)
  bool ran_here = false;
  for (int attempt = 0; attempt < 200 && !ran_here; ++attempt) {
    ran_here = submit_and_wait("102") == std::this_thread::get_id();
    if (!ran_here) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(ran_here) << "an idle pool never ran a measured cheap model's request on the submitting thread";
  Workspace ws;
  const Request request = one_item("102");
  std::promise<Response> inline_answer;
  ASSERT_TRUE(pool.submit(model, request, [&](Response r, std::exception_ptr) { inline_answer.set_value(std::move(r)); },
                          kClient));
  const Response got = inline_answer.get_future().get();
  const Response expected = model.recommender->recommend({&request, 1}, ws)[0];
  ASSERT_EQ(got.recommendations.size(), expected.recommendations.size());
  for (size_t i = 0; i < got.recommendations.size(); ++i) {
    EXPECT_EQ(got.recommendations[i].id, expected.recommendations[i].id);
    EXPECT_EQ(got.recommendations[i].score, expected.recommendations[i].score);
  }

  // While a worker computes (here: held in a completion), requests queue for the workers.
  // Another model's first request goes to the worker (unmeasured) and holds it.
  Gate gate;
  const ModelHandle other{small_recommender(9), nullptr};
  ASSERT_TRUE(pool.submit(other, one_item("101"), [&](Response, std::exception_ptr) { gate.wait(); }));
  gate.entered.get_future().wait();
  std::promise<std::thread::id> queued_on;
  ASSERT_TRUE(pool.submit(model, one_item("104"), [&](Response, std::exception_ptr) {
    queued_on.set_value(std::this_thread::get_id());
  }, kClient));
  EXPECT_EQ(pool.queue_depth(), 1u) << "a busy pool must queue, not compute on the caller's thread";
  gate.release();
  EXPECT_NE(queued_on.get_future().get(), std::this_thread::get_id());
  pool.shutdown();
  EXPECT_GE(batch_sizes.size(), 5u);  // every request a pass of one, the inline ones counted too
}

TEST(WorkerPool, NoInlineWhenTheLimitIsZeroOrTheModelCostsMore) {
  const ModelHandle model{small_recommender(), nullptr};
  for (const int limit : {0, 1}) {  // never; 1 µs, less than any forward pass takes
    WorkerPool pool({.threads = 1, .max_batch = 8, .inline_max_microseconds = limit});
    for (int i = 0; i < 3; ++i) {
      std::promise<std::thread::id> answered_on;
      ASSERT_TRUE(pool.submit(model, one_item("101"), [&](Response, std::exception_ptr) {
        answered_on.set_value(std::this_thread::get_id());
      }, kClient));
      EXPECT_NE(answered_on.get_future().get(), std::this_thread::get_id()) << "limit " << limit << ", request " << i;
    }
  }
}

TEST(ActiveClients, CountsTheDistinctClientsOfTheLastRequestsWithinTheWindow) {
  ActiveClients clients;
  const auto t0 = std::chrono::steady_clock::now();
  const auto us = [t0](int n) { return t0 + std::chrono::microseconds(n); };
  // One client, request after request: 1.
  for (int i = 0; i < 100; ++i) EXPECT_EQ(clients.note(5, us(i * 50)), 1) << i;
  // A second one joins: 2, and stays 2 while they alternate.
  EXPECT_EQ(clients.note(6, us(5000)), 2);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(clients.note(i % 2 ? 5 : 6, us(5100 + i * 50)), 2) << i;
  // Forty different ones in a burst: as many as the ring holds.
  int last = 0;
  for (uint64_t c = 100; c < 140; ++c) last = clients.note(c, us(6000 + static_cast<int>(c)));
  EXPECT_EQ(last, ActiveClients::kSize);
  // After a quiet window, the one client that comes back is alone again.
  const auto later = us(6200) + ActiveClients::kWindow + std::chrono::microseconds(1);
  EXPECT_EQ(clients.note(5, later), 1);
  // Requests without a client (0) are not counted.
  EXPECT_EQ(clients.note(0, later + std::chrono::microseconds(1)), 1);
}

// A request without a client (e.g. one entry of a batch) never runs inline, however idle the
// pool and cheap the model.
TEST(WorkerPool, RequestsWithoutAClientNeverRunInline) {
  const ModelHandle model{small_recommender(), nullptr};
  WorkerPool pool({.threads = 1, .max_batch = 8, .inline_max_microseconds = 100000});
  for (int i = 0; i < 5; ++i) {
    std::promise<std::thread::id> answered_on;
    ASSERT_TRUE(pool.submit(model, one_item("101"), [&](Response, std::exception_ptr) {
      answered_on.set_value(std::this_thread::get_id());
    }));
    EXPECT_NE(answered_on.get_future().get(), std::this_thread::get_id()) << "request " << i;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the worker finishes its completion
  }
}

}  // namespace
}  // namespace seqrec
