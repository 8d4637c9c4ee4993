#include "kernels/topk.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

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
  int32_t* heap = out;  // the heap lives in `out`: it never holds more than min(k, n)
  int64_t size = 0;
  auto offer = [&](int32_t idx) {
    if (skip && skip[idx]) return;
    if (size < k) {
      heap[size++] = idx;
      std::push_heap(heap, heap + size, better);
    } else if (better(idx, heap[0])) {
      std::pop_heap(heap, heap + size, better);
      heap[size - 1] = idx;
      std::push_heap(heap, heap + size, better);
    }
  };
  for (int64_t i = 0; i < n; ++i) offer(index_at(i));
  std::sort(heap, heap + size, better);
  return size;
}

}  // namespace

int64_t top_k(const float* scores, int64_t n, const uint8_t* skip, int64_t k, int32_t* out) {
#if SEQREC_HAVE_AVX512
SEQREC_INTRINSIC_WARNINGS_OFF
  // Most scores lose to the weakest kept one: compare 16 at a time against it and look
  // closer only at lanes that beat it (strictly: a later equal score ranks lower).
  if (k > 0 && n > 4 * k) {
    Better better{scores};
    int32_t* heap = out;  // as in select()
    int64_t size = 0;
    int64_t i = 0;
    for (; i < n && size < k; ++i) {
      if (skip && skip[i]) continue;
      heap[size++] = static_cast<int32_t>(i);
      std::push_heap(heap, heap + size, better);
    }
    // The weakest kept score, kept in a register: reading it through heap[0] each block put
    // two dependent loads in front of every compare (+15% on 10k scores).
    float weakest = size > 0 ? Better::key(scores[heap[0]]) : 0.0f;
    auto offer = [&](int64_t idx) {
      if ((skip && skip[idx]) || !better(static_cast<int32_t>(idx), heap[0])) return;
      std::pop_heap(heap, heap + size, better);
      heap[size - 1] = static_cast<int32_t>(idx);
      std::push_heap(heap, heap + size, better);
      weakest = Better::key(scores[heap[0]]);
    };
    for (; i < n && (i & 15); ++i) offer(i);
    for (; i + 16 <= n; i += 16) {
      __mmask16 beats = _mm512_cmp_ps_mask(_mm512_loadu_ps(scores + i), _mm512_set1_ps(weakest), _CMP_GT_OQ);
      while (beats) {
        const int lane = __builtin_ctz(beats);
        beats &= beats - 1;
        offer(i + lane);
      }
    }
    for (; i < n; ++i) offer(i);
    std::sort(heap, heap + size, better);
    return size;
  }
SEQREC_INTRINSIC_WARNINGS_ON
#endif
  return select(scores, n, [](int64_t i) { return static_cast<int32_t>(i); }, skip, k, out);
}

int64_t top_k_of(const float* scores, const int32_t* indices, int64_t n_indices, const uint8_t* skip, int64_t k,
                 int32_t* out) {
  return select(scores, n_indices, [indices](int64_t i) { return indices[i]; }, skip, k, out);
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
