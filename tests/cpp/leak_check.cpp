// mhsa_leak_check [rounds] [--leak-on-purpose]: runs the leak workload (leak_workload.h)
// `rounds` times (default 10) and exits 0. scripts/sanitize.sh runs it in the ASan build with
// LeakSanitizer on: any allocation still unreferenced at exit is reported and fails the run.
// --leak-on-purpose then leaks one tensor (its TensorImpl and storage, allocated through
// torch's allocator like every buffer of the op), for the self-test that LeakSanitizer sees
// such leaks.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "leak_workload.h"

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 10;
  double checksum = 0;
  for (int r = 0; r < rounds; ++r) checksum += mhsa_leak::run_round(r);
  std::printf("mhsa_leak_check: %d rounds done (checksum %.6g)\n", rounds, checksum);
  if (argc > 2 && std::strcmp(argv[2], "--leak-on-purpose") == 0) {
    at::Tensor leaked = at::empty({4096});
    leaked.unsafeReleaseTensorImpl();  // drops the only reference without freeing it
    std::printf("mhsa_leak_check: leaked a tensor on purpose\n");
  }
  return 0;
}
