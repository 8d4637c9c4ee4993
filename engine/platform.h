// What the engine computes on, for logs, `seqrec inspect`, GET /model and /metrics: the
// kernels' instruction-set path (kernels/cpu_isa.h: chosen once per process from the CPU's
// features, or forced lower with SEQREC_CPU_ISA) and the CPU itself.
#pragma once

#include <optional>
#include <string>

namespace seqrec {

std::string kernel_path();             // the path in use: "avx512_vnni", "avx512", "avx2" or "portable"
std::string supported_kernel_paths();  // every path this binary can run here, e.g. "portable, avx2"
std::string cpu_model();               // the CPU's brand string, or "unknown CPU"
// A one-line error when SEQREC_CPU_ISA names a path that is unknown or not available here.
std::optional<std::string> check_kernel_path_request();

}  // namespace seqrec
