#include "kernels/embedding.h"

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

void gather_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float scale, float* out,
                 int64_t ld_out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* src = table + static_cast<int64_t>(rows[i]) * dim;
    float* dst = out + i * ld_out;
    for (int64_t c = 0; c < dim; ++c) dst[c] = src[c] * scale;
  }
}

void gather_add_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float* out, int64_t ld_out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* src = table + static_cast<int64_t>(rows[i]) * dim;
    float* dst = out + i * ld_out;
    for (int64_t c = 0; c < dim; ++c) dst[c] += src[c];
  }
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
