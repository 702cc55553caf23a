#include "engine/cpu_capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "engine/tile_gemm.h"

namespace mhsa::cpu {
namespace {

CpuCapability detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  CpuCapability best = CpuCapability::Default;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = CpuCapability::Avx2;
  if (best == CpuCapability::Avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    best = CpuCapability::Avx512;
  }
#else
  CpuCapability best = CpuCapability::Default;
#endif
  // The override can only lower the choice: asking for an instruction set the CPU lacks
  // would crash.
  if (const char* env = std::getenv("MHSA_CPU_CAPABILITY")) {
    CpuCapability wanted = best;
    if (std::strcmp(env, "default") == 0) wanted = CpuCapability::Default;
    else if (std::strcmp(env, "avx2") == 0) wanted = CpuCapability::Avx2;
    else if (std::strcmp(env, "avx512") == 0) wanted = CpuCapability::Avx512;
    else TORCH_WARN("mhsa: ignoring unknown MHSA_CPU_CAPABILITY=", env, " (default|avx2|avx512)");
    if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
  }
  return best;
}

}  // namespace

CpuCapability cpu_capability() {
  static const CpuCapability capability = detect();
  return capability;
}

namespace {

// A 16-bit compute mode asked for in the environment variable `name` (native|fp32): 1 native,
// 0 fp32, -1 not asked (unset or unknown, which is warned about).
int compute_mode_override(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr) return -1;
  if (std::strcmp(env, "native") == 0) return 1;
  if (std::strcmp(env, "fp32") == 0) return 0;
  TORCH_WARN("mhsa: ignoring unknown ", name, "=", env, " (native|fp32)");
  return -1;
}

}  // namespace

bool bf16_native_compute() {
  static const bool native = [] {
    if (const int mode = compute_mode_override("MHSA_BF16_COMPUTE"); mode >= 0) return mode == 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
#else
    return true;
#endif
  }();
  return native;
}

bool half_native_compute() {
  static const bool native = [] {
    if (const int mode = compute_mode_override("MHSA_HALF_COMPUTE"); mode >= 0) return mode == 1;
    return tile_gemm_f16_native();
  }();
  return native;
}

bool computes_in_fp32(c10::ScalarType dtype) {
  return (dtype == c10::ScalarType::Half && !half_native_compute()) ||
         (dtype == c10::ScalarType::BFloat16 && !bf16_native_compute());
}

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::Avx512: return "avx512";
    case CpuCapability::Avx2: return "avx2";
    default: return "default";
  }
}

}  // namespace mhsa::cpu
