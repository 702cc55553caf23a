// Leaks. Repeated forward + backward calls through every path of the library
// (leak_workload.h):
//   * release build: resident memory does not grow from round to round (a leak of any
//     per-call buffer would: the workload allocates megabytes per round);
//   * ASan build (scripts/sanitize.sh): the rounds run under LeakSanitizer, which reports
//     every allocation still unreferenced when the process exits; resident memory is not
//     meaningful there (ASan's quarantine holds freed memory on purpose).
// Leaks.LeakOnPurpose leaks one tensor when MHSA_LEAK_ON_PURPOSE=1 (skipped otherwise): the
// self-test of scripts/sanitize.sh that LeakSanitizer does see a tensor leaked through torch's
// allocator, as every buffer of the op is allocated.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <ATen/Parallel.h>

#include "leak_workload.h"

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif

// Resident set size of this process in KiB (VmRSS in /proc/self/status), or -1.
long resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST(Leaks, RepeatedCalls) {
  if (kAddressSanitizer) {
    // LeakSanitizer checks at exit; a few rounds visit every path.
    for (int r = 0; r < 2; ++r) mhsa_leak::run_round(r);
    return;
  }
  if (resident_kib() < 0) GTEST_SKIP() << "no /proc/self/status";
  // One intra-op thread: the same code runs (at::parallel_for calls its body inline), and the
  // many small parallel regions of the workload cannot stall on a busy machine.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  // Warm-up: thread pools, allocator caches, one-time initializations.
  for (int r = 0; r < 3; ++r) mhsa_leak::run_round(r);
  const long before = resident_kib();
  constexpr int kRounds = 20;
  for (int r = 0; r < kRounds; ++r) mhsa_leak::run_round(r);
  const long after = resident_kib();
  at::set_num_threads(threads);
  std::printf("resident memory: %ld KiB before, %ld KiB after %d more rounds\n", before, after,
              kRounds);
  // Leaking only the qkv buffer of each call (70 x 2 x 96 floats, 19 calls a round) would add
  // over 1 MB a round; allow 8 MB in all for allocator noise.
  EXPECT_LT(after - before, 8 * 1024) << "resident memory grew from " << before << " KiB to "
                                      << after << " KiB over " << kRounds << " rounds";
}

TEST(Leaks, LeakOnPurpose) {
  const char* env = std::getenv("MHSA_LEAK_ON_PURPOSE");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set MHSA_LEAK_ON_PURPOSE=1";
  at::Tensor leaked = at::empty({4096});
  leaked.unsafeReleaseTensorImpl();  // drops the only reference without freeing it
}

}  // namespace
