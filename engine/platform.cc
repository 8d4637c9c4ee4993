#include "engine/platform.h"

#include "kernels/cpu_isa.h"

namespace seqrec {

std::string kernel_path() { return kernels::to_string(kernels::cpu_isa()); }

std::string supported_kernel_paths() {
  std::string out;
  for (kernels::CpuIsa isa : kernels::supported_cpu_isas()) out += (out.empty() ? "" : ", ") + std::string(to_string(isa));
  return out;
}

std::string cpu_model() {
  const std::string name = kernels::cpu_name();
  return name.empty() ? "unknown CPU" : name;
}

std::optional<std::string> check_kernel_path_request() { return kernels::check_cpu_isa_request(); }

}  // namespace seqrec
