#pragma once
// Row-major GEMM on raw tiles for the attention kernels:
//   C[M, N] = alpha * op(A) * op(B) + beta * C
// with op(X) = X or X^T and leading dimensions given as row strides, so Q, K and V are read in
// place from the packed QKV buffer. Inputs are float, double or bfloat16; C is float for
// float/bfloat16 inputs and double for double inputs (fp32 accumulation for bfloat16).
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace mhsa::cpu {

enum class Trans { No, Yes };

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);

}  // namespace mhsa::cpu
