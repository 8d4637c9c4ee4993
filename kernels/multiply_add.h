// a·b + c the way every kernel path accumulates (kernels/isa.h): one fused rounding where the
// path has FMA (AVX2 and AVX-512 give the same bits), a product then a sum where it has not
// (portable: a fused multiply-add would be a library call per term there). Within one path,
// kernels::panel_gemm's lanes and kernels::exact_score use it alike, so they agree bit for bit.
#pragma once

#include "kernels/isa.h"

SEQREC_ISA_BEGIN
namespace seqrec::kernels::SEQREC_ISA_NS {

inline float multiply_add(float a, float b, float c) {
#if SEQREC_HAVE_AVX2
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;  // two roundings: the kernels are built with -ffp-contract=off
#endif
}

}  // namespace seqrec::kernels::SEQREC_ISA_NS
SEQREC_ISA_END
