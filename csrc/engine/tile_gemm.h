#pragma once
// Row-major GEMM on raw tiles for the attention kernels and the projection GEMMs:
//   C[M, N] = alpha * op(A) * op(B) + beta * C,   op(X) = X or X^T,
// leading dimensions as row strides (Q, K and V are read in place from the packed QKV rows).
// float, double, bfloat16 or float16 inputs; C is double for double, else float. Each call runs
// on the calling thread, its bits a function of the shapes, strides and values only.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#include "engine/packed_layout.h"

namespace mhsa::cpu {

enum class Trans { No, Yes };

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);
void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);
void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const c10::Half* A,
               int64_t lda, const c10::Half* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Ends a run of tile GEMMs on this thread: releases the matrix-unit state (AMX tile
// configuration) that the 16-bit micro-kernels may hold, so that code running afterwards on
// this thread does not pay for it. Call it at the end of each parallel task range that called
// tile_gemm; a later tile_gemm takes the state again by itself. Cheap when nothing is held.
void tile_gemm_release();

// Whether the bfloat16 tile GEMMs re-lay every B operand out themselves (the VNNI packing of
// the bfloat16 micro-kernel), so that a transposed B costs them nothing extra: the projections
// then pass a weight matrix as it is instead of materializing its transpose on every call.
bool tile_gemm_bf16_packs_b();

// Whether every float32 tile GEMM element is one fused multiply-add chain over k from zero (per
// K chunk), whatever the tile's shape: the portable loops by construction, the micro-kernel where
// the start-up probe found it so. Scores and dP then run on the tile GEMM (engine/score_tile.h).
bool tile_gemm_f32_chain_order();

// Whether float16 tiles run on a float16 micro-kernel (AVX512-FP16 or AMX-FP16); elsewhere they
// are computed on the float32 one from the float16 values, and mhsa computes float16 inputs in
// fp32 by default (see half_native_compute, engine/cpu_capability.h).
bool tile_gemm_f16_native();

// Whether float32 projections should lay out the column tiles of a transposed weight themselves
// (transpose_floats into a compact block per thread) rather than materialize W^T per call: on
// oneDNN's AVX-512 float32 micro-kernel, where that is faster (docs/performance-notes.md).
bool tile_gemm_f32_packs_columns();

// A bfloat16 B operand (op(B) is K x N) packed once, on the calling thread, into the bfloat16
// micro-kernel's layout, for several tile GEMMs that share it: the row tiles of one column tile
// of a projection all multiply the same block of the weight. Only where tile_gemm_bf16_packs_b().
// The same bits as the plain call. pack() may be called again for another B (storage reused).
class PackedB16 {
 public:
  void pack(Trans tb, const c10::BFloat16* B, int64_t ldb, int64_t K, int64_t N);

 private:
  friend void tile_gemm(Trans, int64_t, int64_t, float, const c10::BFloat16*, int64_t,
                        const PackedB16&, float, float*, int64_t);
  int64_t K_ = 0, N_ = 0, block_stride_ = 0, col_blocks_ = 0;
  Layout16 layout_ = Layout16::Vnni;
  std::vector<c10::BFloat16> data_;
};
// C[M, N] = alpha * op(A) * op(B) + beta * C with op(B) (K x N) packed in B.
void tile_gemm(Trans ta, int64_t M, int64_t K, float alpha, const c10::BFloat16* A, int64_t lda,
               const PackedB16& B, float beta, float* C, int64_t ldc);

}  // namespace mhsa::cpu
