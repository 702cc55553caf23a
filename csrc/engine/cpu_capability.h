#pragma once
// Run-time choices of what the CPU runs: the instruction set whose copy of the per-ISA code
// (CMake's MHSA_ISA_SOURCES: default x86-64, AVX2+FMA, AVX-512, each in its own namespace) is
// used, so one libmhsa.so runs on any x86-64 and uses AVX-512 where present, and how 16-bit
// inputs are computed. MHSA_CPU_CAPABILITY=default|avx2|avx512 lowers the choice (tests use it
// to exercise every copy the machine can run).
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace mhsa::cpu {

enum class CpuCapability { Default, Avx2, Avx512 };

CpuCapability cpu_capability();
const char* cpu_capability_name(CpuCapability capability);

// Whether bfloat16 inputs use bfloat16 tile GEMMs (oneDNN's brgemm micro-kernels with
// AVX512-BF16 or AMX instructions, see micro_kernel_probe.h) or are computed in fp32 from their
// bfloat16 values. Without bf16 instructions bf16 GEMMs are emulated, slower than fp32 ones, so
// fp32 compute is both faster and more accurate there. MHSA_BF16_COMPUTE=native|fp32 overrides
// the choice.
bool bf16_native_compute();

// The same choice for float16: native (float16 tile GEMMs and storage, with fp32 accumulation)
// where the CPU has a float16 micro-kernel (AVX512-FP16 or AMX-FP16, found at start-up by
// the micro-kernel probe), else fp32 compute from the float16 values. MHSA_HALF_COMPUTE=
// native|fp32 overrides it (native without the micro-kernel runs the float16 kernels on the fp32
// micro-kernel: how the float16 path is tested on CPUs without AVX512-FP16).
bool half_native_compute();

// Whether inputs of this dtype are computed in fp32 from their 16-bit values (by the op
// kernels, cpu/fp32_compute.h) rather than by kernels of their own type: float16 and bfloat16
// without native compute (above).
bool computes_in_fp32(c10::ScalarType dtype);

#if defined(__x86_64__) || defined(__i386__)
// Built on x86 only (CMakeLists.txt); elsewhere the portable copy is the only one.
#define MHSA_X86_KERNEL_COPIES 1
#endif

// This CPU's copy of a per-instruction-set table: `make` (e.g. make_portable_gemm) of the
// namespace cpu_capability() chose, isa_avx512, isa_avx2 or isa_default.
#ifdef MHSA_X86_KERNEL_COPIES
#define MHSA_ISA_COPY(make)                                                                 \
  (::mhsa::cpu::cpu_capability() == ::mhsa::cpu::CpuCapability::Avx512 ? isa_avx512::make() \
   : ::mhsa::cpu::cpu_capability() == ::mhsa::cpu::CpuCapability::Avx2 ? isa_avx2::make()   \
                                                                       : isa_default::make())
#else
#define MHSA_ISA_COPY(make) (isa_default::make())
#endif

}  // namespace mhsa::cpu
