// The unit tests' main: GoogleTest's, after a look at SEQREC_CPU_ISA (kernels/cpu_isa.h).
// CTest runs the suite once per kernel path; a path this machine cannot run is a skip
// (exit 77, CTest's SKIP_RETURN_CODE), said so, never a pass.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/cpu_isa.h"

int main(int argc, char** argv) {
  if (const auto problem = seqrec::kernels::check_cpu_isa_request()) {
    const char* requested = std::getenv("SEQREC_CPU_ISA");
    if (!seqrec::kernels::parse_cpu_isa(requested)) {
      std::fprintf(stderr, "%s\n", problem->c_str());
      return 1;  // a typo in the test set-up is a failure
    }
    std::printf("skipped: %s\n", problem->c_str());
    return 77;
  }
  std::printf("kernel path: %s\n", seqrec::kernels::to_string(seqrec::kernels::cpu_isa()));
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
