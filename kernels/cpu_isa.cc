#include "kernels/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace seqrec::kernels {

namespace {

constexpr const char* kNames[] = {"portable", "avx2", "avx512", "avx512_vnni"};
static_assert(std::size(kNames) == std::size(kAllCpuIsas));

// Whether this binary holds the path's kernels (kernels/CMakeLists.txt, SEQREC_KERNEL_ISAS).
bool built(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::portable: return true;
    case CpuIsa::avx2: return SEQREC_BUILT_AVX2;
    case CpuIsa::avx512: return SEQREC_BUILT_AVX512;
    case CpuIsa::avx512_vnni: return SEQREC_BUILT_AVX512_VNNI;
  }
  return false;
}

std::string names(const std::vector<CpuIsa>& isas) {
  std::string out;
  for (CpuIsa isa : isas) out += (out.empty() ? "" : "|") + std::string(to_string(isa));
  return out;
}

CpuIsa best_supported() { return supported_cpu_isas().back(); }

}  // namespace

const char* to_string(CpuIsa isa) { return kNames[static_cast<int>(isa)]; }

std::optional<CpuIsa> parse_cpu_isa(const std::string& text) {
  for (CpuIsa isa : kAllCpuIsas)
    if (text == to_string(isa)) return isa;
  return std::nullopt;
}

bool cpu_supports(CpuIsa isa) {
#if defined(__x86_64__)
  // libgcc's feature bits already require the OS to save the AVX / AVX-512 state (XGETBV).
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  switch (isa) {
    case CpuIsa::portable: return true;
    case CpuIsa::avx2: return avx2;
    case CpuIsa::avx512: return avx512;
    case CpuIsa::avx512_vnni: return avx512 && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == CpuIsa::portable;
#endif
}

std::vector<CpuIsa> supported_cpu_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : kAllCpuIsas)
    if (built(isa) && cpu_supports(isa)) out.push_back(isa);
  return out;
}

std::optional<std::string> check_cpu_isa_request() {
  const char* requested = std::getenv("SEQREC_CPU_ISA");
  if (!requested || !*requested) return std::nullopt;
  const std::optional<CpuIsa> isa = parse_cpu_isa(requested);
  if (!isa)
    return "SEQREC_CPU_ISA: unknown value '" + std::string(requested) + "' (expected " +
           names({std::begin(kAllCpuIsas), std::end(kAllCpuIsas)}) + ")";
  if (!built(*isa))
    return "SEQREC_CPU_ISA: '" + std::string(requested) + "' is not built into this binary (built here: " +
           names(supported_cpu_isas()) + ")";
  if (!cpu_supports(*isa))
    return "SEQREC_CPU_ISA: '" + std::string(requested) + "' is not supported by this CPU (supported: " +
           names(supported_cpu_isas()) + ")";
  return std::nullopt;
}

CpuIsa cpu_isa() {
  static const CpuIsa chosen = [] {
    if (const char* requested = std::getenv("SEQREC_CPU_ISA"); requested && !check_cpu_isa_request())
      if (const std::optional<CpuIsa> isa = parse_cpu_isa(requested)) return *isa;
    return best_supported();
  }();
  return chosen;
}

std::string cpu_name() {
#if defined(__x86_64__)
  unsigned regs[12] = {};
  if (__get_cpuid_max(0x80000000u, nullptr) < 0x80000004u) return "";
  for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
  char text[sizeof regs + 1] = {};
  std::memcpy(text, regs, sizeof regs);
  std::string name(text);
  const size_t first = name.find_first_not_of(' ');
  const size_t last = name.find_last_not_of(' ');
  return first == std::string::npos ? "" : name.substr(first, last - first + 1);
#else
  return "";
#endif
}

}  // namespace seqrec::kernels
