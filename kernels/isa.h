// For the kernel sources that are compiled once per instruction-set path (kernels/cpu_isa.h,
// kernels/CMakeLists.txt). The build defines exactly one of SEQREC_ISA_PORTABLE,
// SEQREC_ISA_AVX2, SEQREC_ISA_AVX512, SEQREC_ISA_AVX512_VNNI for each copy. Include this after
// every other header, then write the code as
//
//   SEQREC_ISA_BEGIN
//   namespace seqrec::kernels::SEQREC_ISA_NS { ... }
//   SEQREC_ISA_END
//
// Between the two, GCC compiles for the path's instructions (a target pragma: the rest of the
// binary stays baseline x86-64, and the standard library's templates instantiated in here keep
// their baseline target, so no AVX-512 code can leak into a shared template instance that a
// baseline caller might run), in a namespace of its own per path, so the copies never collide.
// SEQREC_HAVE_AVX2 / _AVX512 / _VNNI say what this copy may use: GCC's __AVX512F__ & co.
// describe the command line, not the pragma, and stay unset.
#pragma once

#if defined(SEQREC_ISA_AVX512_VNNI)
#define SEQREC_ISA_NS avx512_vnni
#define SEQREC_HAVE_AVX2 1
#define SEQREC_HAVE_AVX512 1
#define SEQREC_HAVE_VNNI 1
#define SEQREC_ISA_TARGET _Pragma("GCC target(\"avx2,fma,bmi,bmi2,f16c,avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx512vnni\")")
#elif defined(SEQREC_ISA_AVX512)
#define SEQREC_ISA_NS avx512
#define SEQREC_HAVE_AVX2 1
#define SEQREC_HAVE_AVX512 1
#define SEQREC_HAVE_VNNI 0
#define SEQREC_ISA_TARGET _Pragma("GCC target(\"avx2,fma,bmi,bmi2,f16c,avx512f,avx512cd,avx512bw,avx512dq,avx512vl\")")
#elif defined(SEQREC_ISA_AVX2)
#define SEQREC_ISA_NS avx2
#define SEQREC_HAVE_AVX2 1
#define SEQREC_HAVE_AVX512 0
#define SEQREC_HAVE_VNNI 0
#define SEQREC_ISA_TARGET _Pragma("GCC target(\"avx2,fma,bmi,bmi2,f16c\")")
#elif defined(SEQREC_ISA_PORTABLE)
#define SEQREC_ISA_NS portable
#define SEQREC_HAVE_AVX2 0
#define SEQREC_HAVE_AVX512 0
#define SEQREC_HAVE_VNNI 0
#define SEQREC_ISA_TARGET
#else
#error "kernels/isa.h: compile this source through kernels/CMakeLists.txt (one copy per SEQREC_ISA_*)"
#endif

#if SEQREC_HAVE_AVX2 && (defined(__clang__) || !defined(__GNUC__))
#error "kernels/isa.h: the SIMD paths need GCC's target pragmas; with another compiler configure -DSEQREC_KERNEL_ISAS=portable"
#endif

#if SEQREC_HAVE_AVX2
#define SEQREC_ISA_BEGIN _Pragma("GCC push_options") SEQREC_ISA_TARGET
#define SEQREC_ISA_END _Pragma("GCC pop_options")
#else
#define SEQREC_ISA_BEGIN
#define SEQREC_ISA_END
#endif

// GCC 12's AVX-512 intrinsics build results on _mm512_undefined_*() (`__m512 __Y = __Y;`), which
// -Wuninitialized / -Wmaybe-uninitialized then report in every function they are inlined into:
// warnings about GCC's own headers. The kernels wrap exactly their AVX-512 code in these.
#define SEQREC_INTRINSIC_WARNINGS_OFF                                   \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define SEQREC_INTRINSIC_WARNINGS_ON _Pragma("GCC diagnostic pop")
