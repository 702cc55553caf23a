#pragma once
// The portable loops: a register-blocked GEMM for the tiles where oneDNN's micro-kernels do not
// run (see tile_gemm.cpp), compiled once per instruction set. Each element gets the reference
// loops' operations (each K chunk summed from zero in increasing k with fused multiply-adds, the
// chunk sums combined with C in chunk order), so the bits are the same for any blocking, ISA
// copy or thread (test_portable_gemm.cpp). Single-threaded: callers own the threading.
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
