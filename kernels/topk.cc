#include "kernels/topk.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace seqrec::kernels {

namespace {

// A min-heap of the best k seen so far: its top is the weakest kept candidate.
struct Better {
  const float* scores;
  static float key(float s) { return std::isnan(s) ? -INFINITY : s; }
  bool operator()(int32_t a, int32_t b) const {  // true when a ranks above b
    const float sa = key(scores[a]), sb = key(scores[b]);
    if (sa != sb) return sa > sb;
    return a < b;
  }
};

template <class IndexAt>
int64_t select(const float* scores, int64_t n, IndexAt index_at, const uint8_t* skip, int64_t k, int32_t* out) {
  if (k <= 0) return 0;
  Better better{scores};
  std::vector<int32_t> heap;
  heap.reserve(static_cast<size_t>(std::min(k, n)));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t idx = index_at(i);
    if (skip && skip[idx]) continue;
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(idx);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(idx, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = idx;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  std::copy(heap.begin(), heap.end(), out);
  return static_cast<int64_t>(heap.size());
}

}  // namespace

int64_t top_k(const float* scores, int64_t n, const uint8_t* skip, int64_t k, int32_t* out) {
  return select(scores, n, [](int64_t i) { return static_cast<int32_t>(i); }, skip, k, out);
}

int64_t top_k_of(const float* scores, const int32_t* indices, int64_t n_indices, const uint8_t* skip, int64_t k,
                 int32_t* out) {
  return select(scores, n_indices, [indices](int64_t i) { return indices[i]; }, skip, k, out);
}

}  // namespace seqrec::kernels
