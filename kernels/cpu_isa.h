// Which instruction-set path the kernels run: decided once per process, here and nowhere else
// (the way CTranslate2's cpu_isa does it).
//
// The binary is built for baseline x86-64. The kernel sources that use SIMD are compiled once
// per path below (kernels/CMakeLists.txt), each copy in its own namespace under a GCC target
// pragma (kernels/isa.h); kernels/dispatch.cc routes every public kernel call to the copy of
// the path in use. So one binary runs on any x86-64 CPU and uses what the CPU has.
//
// SEQREC_CPU_ISA=avx512_vnni|avx512|avx2|portable forces a path: any path the CPU supports,
// e.g. to test the lower ones on a machine that has the higher ones. Asking for a path the CPU
// lacks is an error (check_cpu_isa_request), never a SIGILL.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace seqrec::kernels {

// Ordered: each path needs everything the ones before it need.
enum class CpuIsa {
  portable,     // plain C++ (SSE2, the x86-64 baseline; any CPU)
  avx2,         // AVX2 + FMA (Haswell, Zen and later)
  avx512,       // AVX-512 F/BW/DQ/VL (Skylake-SP and later, Zen 4)
  avx512_vnni,  // + VNNI (Cascade Lake, Ice Lake, Zen 4): the int8 catalog pre-scan's vpdpbusd
};
inline constexpr CpuIsa kAllCpuIsas[] = {CpuIsa::portable, CpuIsa::avx2, CpuIsa::avx512, CpuIsa::avx512_vnni};

const char* to_string(CpuIsa isa);
// "avx2" -> CpuIsa::avx2; nullopt for anything else.
std::optional<CpuIsa> parse_cpu_isa(const std::string& text);

// Whether this CPU (and the OS, which must save the wider registers) supports the path.
bool cpu_supports(CpuIsa isa);
// Every path this binary can run on this CPU (built in, and supported), lowest first.
std::vector<CpuIsa> supported_cpu_isas();

// The path this process runs: the best supported one, or the one SEQREC_CPU_ISA names when
// that is valid and supported. Decided on the first call; never changes afterwards.
CpuIsa cpu_isa();

// A one-line error when SEQREC_CPU_ISA is set to something unknown or unsupported here
// (cpu_isa() then ignores it); nullopt when it is unset or fine. Programs call this at start.
std::optional<std::string> check_cpu_isa_request();

// "AMD EPYC 7B13" or "" — the CPU's brand string, for logs and benchmark headers.
std::string cpu_name();

}  // namespace seqrec::kernels
