// The request path allocates nothing once a worker's Workspace has grown to a batch's size,
// apart from the answers it hands back (the response list and each response's items).
//
// This binary replaces the global allocation functions with counting ones — operator new,
// and aligned_alloc, which the engine's 64-byte-aligned buffers (FloatBuffer) call — so it
// is built apart from seqrec_unit_tests (and not under the sanitizers, whose allocator it
// would hide). glibc's own entry points do the allocating.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>

#include "engine/recommender.h"
#include "kernels/panel_gemm.h"
#include "test_models.h"

extern "C" void* __libc_malloc(std::size_t);
extern "C" void* __libc_memalign(std::size_t, std::size_t);

namespace {
std::atomic<long> allocations{0};

void* counted(std::size_t n, std::size_t alignment) {
  ++allocations;
  const std::size_t size = std::max<std::size_t>(n, 1);
  void* p = alignment <= alignof(std::max_align_t) ? __libc_malloc(size) : __libc_memalign(alignment, size);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
extern "C" void* aligned_alloc(std::size_t alignment, std::size_t n) {
  ++allocations;
  return __libc_memalign(alignment, n);
}

namespace seqrec {
namespace {

// Requests over the whole catalog, as most traffic is: histories of 1..60 items with
// timestamps (some out of order), k 10 or 50, seen items excluded or not, a few exclusions.
std::vector<Request> traffic(int64_t n_items, unsigned seed) {
  std::mt19937 rng(seed);
  auto id = [&] { return std::to_string(100 + rng() % (n_items - 1)); };
  std::vector<Request> out;
  for (int i = 0; i < 24; ++i) {
    Request r;
    const int len = 1 + static_cast<int>(rng() % 60);
    for (int j = 0; j < len; ++j) r.interactions.push_back({id(), (j * 7919) % (len + 3), std::nullopt});
    r.k = i % 3 == 0 ? 50 : 10;
    r.recommend_seen = i % 2 == 0;
    if (i % 4 == 1)
      for (int j = 0; j < 5; ++j) r.exclude_ids.push_back(id());
    out.push_back(std::move(r));
  }
  return out;
}

// Allocations of one recommend() call on a workspace that has seen the same batch before.
long allocations_of_repeat(const Recommender& rec, std::span<const Request> batch) {
  Workspace ws;
  rec.recommend(batch, ws);  // the workspace grows here
  const long before = allocations.load();
  const std::vector<Response> answers = rec.recommend(batch, ws);
  const long used = allocations.load() - before;
  EXPECT_EQ(answers.size(), batch.size());
  return used;
}

// Batches of 1, 8 and all of `requests` allocate at most their answers: the response list,
// and each response's list of items (ids short enough for the string's own buffer).
void expect_only_answers_allocated(const Recommender& rec, const std::vector<Request>& requests) {
  for (size_t batch : {size_t{1}, size_t{8}, requests.size()})
    EXPECT_LE(allocations_of_repeat(rec, std::span<const Request>(requests.data(), batch)),
              static_cast<long>(1 + batch))
        << "batch " << batch;
}

TEST(RequestPath, APreScannedBatchAllocatesOnlyItsAnswers) {
  const ModelSpec spec = testing::small_spec(3000, 50, 64, 2);  // past the pre-scan threshold
  const Recommender rec(spec, testing::random_weights(spec), testing::offset_ids(spec.n_items), {}, std::nullopt);
  ASSERT_TRUE(rec.model().scorer().has_pre_scan());
  expect_only_answers_allocated(rec, traffic(spec.n_items, 3));
}

// Small catalogs (and softmax models) rank the full logits instead: the same holds.
TEST(RequestPath, AFullyScoredBatchAllocatesOnlyItsAnswers) {
  for (ScoreKind score : {ScoreKind::raw, ScoreKind::softmax}) {
    ModelSpec spec = testing::small_spec(400, 50, 32, 2);  // below the pre-scan threshold
    spec.scorer.score = score;
    const Recommender rec(spec, testing::random_weights(spec), testing::offset_ids(spec.n_items), {}, std::nullopt);
    ASSERT_FALSE(rec.model().scorer().has_pre_scan());
    expect_only_answers_allocated(rec, traffic(spec.n_items, 5));
  }
}

// The counter sees what it should: the same call on a fresh workspace allocates far more.
TEST(RequestPath, TheCounterCountsAFreshWorkspace) {
  const ModelSpec spec = testing::small_spec(3000, 50, 64, 2);
  const Recommender rec(spec, testing::random_weights(spec), testing::offset_ids(spec.n_items), {}, std::nullopt);
  const std::vector<Request> requests = traffic(spec.n_items, 4);
  Workspace ws;
  const long before = allocations.load();
  rec.recommend(requests, ws);
  EXPECT_GT(allocations.load() - before, static_cast<long>(3 * requests.size()));
}

// ... and the engine's aligned buffers, which do not go through operator new.
TEST(RequestPath, TheCounterCountsAlignedBuffers) {
  const long before = allocations.load();
  FloatBuffer buffer(1000);
  buffer[999] = 1.0f;
  EXPECT_EQ(allocations.load() - before, 1);
}

}  // namespace
}  // namespace seqrec
