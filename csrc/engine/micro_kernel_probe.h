#pragma once
// The capability probe: which oneDNN micro-kernels run on this machine, found once at start-up
// by exact small products through each (CPU flags, a oneDNN ISA cap, torch.backends.mkldnn and
// MHSA_PORTABLE_GEMM decide which are tried), and the reports of it: _backend_info(), the
// warning when a kernel the CPU promises failed, and the probes themselves for tests.
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>

#include <string>
#include <type_traits>

#include "engine/brgemm_build.h"
#include "engine/packed_layout.h"

namespace mhsa::cpu {

// The GEMM engine the tiles use on this machine, for torch.ops.mhsa._backend_info(), e.g.
// "onednn-brgemm(float32,bfloat16-vnni;float16-as-float32)" or "portable-loops".
const char* tile_gemm_backend();
// Why float32 tiles run on the portable loops ("" where they do not).
std::string tile_gemm_loops_reason();
// The start-up probes that failed on a CPU whose flags promise that micro-kernel: dtype,
// layout, shape and exception text ("" when none did).
std::string tile_gemm_probe_failures();
// Probes that failed where nothing promised the kernel (float16 on AVX512-FP16 without
// AMX-FP16): reported by _backend_info(), not warned about.
std::string tile_gemm_probe_notes();
// Warns once (on the calling thread: call it outside parallel regions) when
// tile_gemm_probe_failures() is not empty: mhsa is never silently slow.
void warn_if_tile_engine_degraded();

// The start-up probes, for tests: exact small-integer products through the float32
// micro-kernel, or a 16-bit one in `layout` ("" when right, else what failed). `pack`, when
// given, stands in for cpublas::pack on this thread during the probe (test_packed_layout.cpp).
std::string probe_micro_kernel_f32();
// Random float32 products at attention tile shapes, bitwise against one fused multiply-add
// chain per element in k order (what scores and dP on the micro-kernel need).
std::string probe_micro_kernel_f32_chain();
std::string probe_micro_kernel16(c10::ScalarType dtype, Layout16 layout,
                                 PackFunction pack = nullptr);

#ifdef MHSA_USE_BRGEMM
// What the micro-kernels of this machine can do, and why not where the CPU's flags promised
// more.
struct Support {
  bool f32 = false;                       // float32 micro-kernel
  bool f32_avx512 = false;                // ... oneDNN's AVX-512 one
  bool f32_chain = false;                 // ... summing each element as one fused chain in k order
  bool bf16 = false;                      // bfloat16 micro-kernel ...
  Layout16 bf16_layout = Layout16::Vnni;  // ... and its B layout
  bool f16 = false;                       // float16 micro-kernel (AVX512-FP16, AMX-FP16) ...
  Layout16 f16_layout = Layout16::Plain;  // ... and its B layout
  bool amx = false;          // the CPU has a matrix unit, whose state a 16-bit kernel may hold
  std::string loops_reason;  // why float32 runs on the portable loops
  std::string failures;      // probes that failed where the CPU flags promise the kernel (warned)
  std::string notes;         // probes that failed where oneDNN promises nothing (reported only)
};

// What the micro-kernels can do now: nothing while torch.backends.mkldnn is disabled (checked
// on every call: brgemm checks it too) or MHSA_PORTABLE_GEMM=1, else what the probe found.
const Support& support();

// A 16-bit type's micro-kernel on this machine: whether it runs, and its B layout.
struct Kernel16 {
  bool runs;
  Layout16 layout;
};
template <typename half_t>
Kernel16 kernel16(const Support& s) {
  if constexpr (std::is_same_v<half_t, c10::BFloat16>) {
    return {s.bf16, s.bf16_layout};
  } else {
    return {s.f16, s.f16_layout};
  }
}
#endif  // MHSA_USE_BRGEMM

}  // namespace mhsa::cpu
