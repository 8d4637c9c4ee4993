// The kernel path choice (kernels/cpu_isa.h): names, the CPU's paths, SEQREC_CPU_ISA.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "kernels/cpu_isa.h"

namespace seqrec::kernels {
namespace {

TEST(CpuIsa, NamesRoundTrip) {
  for (CpuIsa isa : kAllCpuIsas) {
    ASSERT_TRUE(parse_cpu_isa(to_string(isa)).has_value()) << to_string(isa);
    EXPECT_EQ(*parse_cpu_isa(to_string(isa)), isa);
  }
  EXPECT_FALSE(parse_cpu_isa("avx512f").has_value());
  EXPECT_FALSE(parse_cpu_isa("").has_value());
  EXPECT_FALSE(parse_cpu_isa("AVX2").has_value());
}

TEST(CpuIsa, SupportedPathsStartPortableAndIncludeTheOneInUse) {
  const auto supported = supported_cpu_isas();
  ASSERT_FALSE(supported.empty());
  EXPECT_EQ(supported.front(), CpuIsa::portable);
  for (size_t i = 1; i < supported.size(); ++i) {
    EXPECT_LT(supported[i - 1], supported[i]);
    // A path needs everything below it: the CPU supports each lower one too.
    for (CpuIsa lower : kAllCpuIsas)
      if (lower < supported[i]) EXPECT_TRUE(cpu_supports(lower)) << to_string(lower);
  }
  bool in_use_listed = false;
  for (CpuIsa isa : supported) in_use_listed = in_use_listed || isa == cpu_isa();
  EXPECT_TRUE(in_use_listed) << to_string(cpu_isa());
}

TEST(CpuIsa, TheRequestedPathIsTheOneInUse) {
  const char* requested = std::getenv("SEQREC_CPU_ISA");
  if (requested && *requested) {
    // test_main.cc refused anything this machine cannot run, so the request was honoured.
    EXPECT_EQ(std::string(to_string(cpu_isa())), requested);
  } else {
    EXPECT_EQ(cpu_isa(), supported_cpu_isas().back()) << "without a request the best path runs";
  }
}

TEST(CpuIsa, UnknownAndUnavailableRequestsAreOneLineErrors) {
  const char* saved = std::getenv("SEQREC_CPU_ISA");
  const std::string restore = saved ? saved : "";
  ::setenv("SEQREC_CPU_ISA", "sse9", 1);
  auto error = check_cpu_isa_request();
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("unknown value 'sse9'"), std::string::npos) << *error;
  EXPECT_NE(error->find("portable|avx2|avx512|avx512_vnni"), std::string::npos) << *error;
  EXPECT_EQ(error->find('\n'), std::string::npos);
  for (CpuIsa isa : kAllCpuIsas) {
    ::setenv("SEQREC_CPU_ISA", to_string(isa), 1);
    const bool available = [&] {
      for (CpuIsa s : supported_cpu_isas())
        if (s == isa) return true;
      return false;
    }();
    EXPECT_EQ(check_cpu_isa_request().has_value(), !available) << to_string(isa);
  }
  ::setenv("SEQREC_CPU_ISA", "", 1);
  EXPECT_FALSE(check_cpu_isa_request().has_value()) << "an empty value means no request";
  if (saved)
    ::setenv("SEQREC_CPU_ISA", restore.c_str(), 1);
  else
    ::unsetenv("SEQREC_CPU_ISA");
}

}  // namespace
}  // namespace seqrec::kernels
