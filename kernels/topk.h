#pragma once

#include <cstdint>

namespace seqrec::kernels {

// The k best of a score buffer: the indices of the k highest scores, ordered by score
// descending, ties by lower index first (catalog order). NaN ranks below everything.
//   scores: [n]
//   skip:   [n] bytes, nonzero = never selected; may be null
//   out:    room for k indices; returns how many were written (< k when fewer qualify)
int64_t top_k(const float* scores, int64_t n, const uint8_t* skip, int64_t k, int32_t* out);

// The same over a subset of indices (each must be < the length of scores and skip;
// duplicates are the caller's to remove).
int64_t top_k_of(const float* scores, const int32_t* indices, int64_t n_indices, const uint8_t* skip, int64_t k,
                 int32_t* out);

}  // namespace seqrec::kernels
