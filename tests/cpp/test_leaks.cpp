// Repeated forward + backward calls do not grow resident memory (a leak of any per-call
// buffer would: the workload allocates megabytes per round). The exact check, every
// allocation accounted for, is LeakSanitizer on mhsa_leak_check in the sanitizer build
// (scripts/sanitize.sh); this test is the cheap release-build guard, skipped under ASan
// (whose quarantine holds freed memory on purpose).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "leak_workload.h"

namespace {

// Resident set size of this process in KiB (VmRSS in /proc/self/status), or -1.
long resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST(Leaks, RepeatedCallsDoNotGrowResidentMemory) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "resident memory is not meaningful under AddressSanitizer";
#endif
  if (resident_kib() < 0) GTEST_SKIP() << "no /proc/self/status";
  // Warm-up: thread pools, allocator caches, one-time initializations.
  for (int r = 0; r < 3; ++r) mhsa_leak::run_round(r);
  const long before = resident_kib();
  constexpr int kRounds = 20;
  for (int r = 0; r < kRounds; ++r) mhsa_leak::run_round(r);
  const long after = resident_kib();
  std::printf("resident memory: %ld KiB before, %ld KiB after %d more rounds\n", before, after,
              kRounds);
  // Leaking only the qkv buffer of each call (70 x 2 x 96 floats, 19 calls a round) would add
  // over 1 MB a round; allow 8 MB in all for allocator noise.
  EXPECT_LT(after - before, 8 * 1024) << "resident memory grew from " << before << " KiB to "
                                       << after << " KiB over " << kRounds << " rounds";
}

}  // namespace
