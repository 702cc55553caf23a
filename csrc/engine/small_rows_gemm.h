#pragma once
// Projections of a few rows (a decoded token, a short input): y = alpha * x W^T + bias read
// straight from the weight as nn.Linear stores it (out_features x in_features, row-major), each
// weight row once per call, so nothing is transposed or packed per call and the time is the
// weight's memory traffic. Compiled once per instruction set like the attention kernels.
#include <cstdint>

namespace mhsa::cpu {

// The most rows the kernel takes: beyond it the tile GEMMs, whose weight preparation is then
// shared by enough rows, are faster.
constexpr int64_t kSmallRows = 8;

// C[i][j] = alpha * sum_k A[i][k] * W[j][k] (+ bias[j] where bias is not null) for i < M <=
// kSmallRows and j0 <= j < j1. Each C element is summed by one call in an order fixed by K alone
// (vector lanes, then the lanes as a tree, then the tail), so the bits depend on neither the
// thread nor the split of [0, N) into calls.
using SmallRowsGemm = void (*)(int64_t M, int64_t j0, int64_t j1, int64_t K, float alpha,
                               const float* A, int64_t lda, const float* W, int64_t ldw,
                               const float* bias, float* C, int64_t ldc);

namespace isa_default {
SmallRowsGemm make_small_rows_gemm();
}
#if defined(__x86_64__) || defined(__i386__)
namespace isa_avx2 {
SmallRowsGemm make_small_rows_gemm();
}
namespace isa_avx512 {
SmallRowsGemm make_small_rows_gemm();
}
#endif

}  // namespace mhsa::cpu
