#pragma once

#include <cstdint>

namespace seqrec::kernels {

// out[i, :] = scale * table[rows[i], :] for i in [0, n).
//   table: [*, dim] contiguous;  rows: [n] (each a valid row);  out: [n, dim], row stride ld_out
void gather_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float scale, float* out,
                 int64_t ld_out);

// out[i, :] += table[rows[i], :] for i in [0, n). Same layouts as gather_rows.
void gather_add_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float* out, int64_t ld_out);

}  // namespace seqrec::kernels
