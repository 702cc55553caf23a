#pragma once
// Float32 tile products of a few rows (one-token calls in generation) as plain vector loops, per
// instruction set: the micro-kernel JIT-compiles a kernel for every new shape, and a growing KV
// cache gives every call a new one (a kernel build costs far more than such a call). Each element
// is one fused multiply-add chain over k from zero, then alpha, then the add to C: the micro-
// kernel's own sums where tile_gemm_f32_chain_order() holds, so the bits are the same.
#include "engine/per_isa.h"

#include <cstdint>

#include "engine/dot_tile.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {

// The most rows the loops take: beyond it the micro-kernel's shapes repeat (whole tiles).
constexpr int64_t kSmallTileRows = 8;

// Columns c0 .. c0 + V * kLanes of one row (count: the last vector's valid columns, kLanes if
// whole): V independent chains, one would wait on each add.
// A partial last vector is read whole in the rows of B whose whole read still ends before the
// last row's last element (the extra lanes fall inside B's storage and are never stored), and
// lane by lane only in the last rows: a tail copy per element was most of a few-row call's time.
template <int V>
inline void small_tile_columns(int64_t K, float alpha, const float* a, const float* B, int64_t ldb,
                               bool accumulate, float* c, int64_t count) {
  const int64_t tail_rows = count == kLanes ? 0 : ldb > 0 ? (kLanes - count + ldb - 1) / ldb : K;
  const int64_t whole_rows = K - tail_rows;
  vfloat acc[V] = {};
  for (int64_t k = 0; k < K; ++k) {
    const vfloat ak = splat(a[k]);
    const float* b = B + k * ldb;
    for (int v = 0; v + 1 < V; ++v) acc[v] = fused_multiply_add(ak, load(b + v * kLanes), acc[v]);
    const float* last = b + (V - 1) * kLanes;
    const vfloat bk = k < whole_rows ? load(last) : load_tail(last, count, 0);
    acc[V - 1] = fused_multiply_add(ak, bk, acc[V - 1]);
  }
  for (int v = 0; v < V; ++v) {
    const int64_t n = v + 1 < V ? kLanes : count;
    float* out = c + v * kLanes;
    vfloat result = alpha == 1.0f ? acc[v] : acc[v] * alpha;
    if (accumulate) result += n == kLanes ? load(out) : load_tail(out, n, 0);
    if (n == kLanes) {
      store(out, result);
    } else {
      store_tail(out, n, result);
    }
  }
}

// C[r][c] = alpha * sum_k A[r][k] * B[k][c] (+ C[r][c] with accumulate), r < M <= kSmallTileRows,
// c < N; rows of A, B and C at strides lda, ldb and ldc.
inline void small_tile_gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                            int64_t lda, const float* B, int64_t ldb, bool accumulate, float* C,
                            int64_t ldc) {
  for (int64_t r = 0; r < M; ++r) {
    const float* a = A + r * lda;
    float* c = C + r * ldc;
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= N; c0 += 4 * kLanes)
      small_tile_columns<4>(K, alpha, a, B + c0, ldb, accumulate, c + c0, kLanes);
    for (; c0 < N; c0 += kLanes) {
      const int64_t count = N - c0 < kLanes ? N - c0 : kLanes;
      small_tile_columns<1>(K, alpha, a, B + c0, ldb, accumulate, c + c0, count);
    }
  }
}

}  // namespace mhsa::cpu::MHSA_ISA
