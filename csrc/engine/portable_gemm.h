#pragma once
// Register-blocked GEMM for the tiles where oneDNN's micro-kernels do not run (non-x86 builds,
// MHSA_PORTABLE_GEMM, CPUs or torch builds without them; see tile_gemm.cpp). Compiled once per
// instruction set like the attention kernels (cpu_capability.h). Every output element goes
// through exactly the operations of tile_gemm.cpp's reference loops (per-chunk FMA sums from
// zero, combined with C in chunk order), so the float results are bitwise the reference's for
// any blocking, ISA copy or thread; double keeps the chunk structure with acc + a * b.
// Single-threaded: callers run it inside their own parallel regions.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "engine/tile_gemm.h"

namespace mhsa::cpu {

// C[M, N] = alpha * op(A) * op(B) + beta * C, row-major with row strides lda, ldb, ldc (as
// tile_gemm). M, N and K must be positive (tile_gemm handles the degenerate shapes).
struct PortableGemm {
  void (*f32)(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
  void (*f64)(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
  void (*bf16)(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);
  void (*f16)(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const c10::Half* A,
              int64_t lda, const c10::Half* B, int64_t ldb, float beta, float* C, int64_t ldc);
};

namespace isa_default {
PortableGemm make_portable_gemm();
}
#if defined(__x86_64__) || defined(__i386__)
namespace isa_avx2 {
PortableGemm make_portable_gemm();
}
namespace isa_avx512 {
PortableGemm make_portable_gemm();
}
#endif

}  // namespace mhsa::cpu
