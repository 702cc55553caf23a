#pragma once
// Row-major GEMM on raw tiles for the attention kernels and the projection GEMMs:
//   C[M, N] = alpha * op(A) * op(B) + beta * C
// with op(X) = X or X^T and leading dimensions given as row strides, so Q, K and V are read in
// place from the packed QKV buffer. Inputs are float, double, bfloat16 or float16; C is double
// for double inputs and float for the others (fp32 accumulation for the 16-bit types).
//
// Every call runs single-threaded on the calling thread, and the result depends only on the
// shapes, strides and values passed (not on the thread, nor on how many threads exist), which
// is what makes mhsa's results bitwise identical for any thread count. See tile_gemm.cpp for
// the engines (oneDNN's batch-reduce micro-kernels through at::native::cpublas::brgemm, or
// portable loops).
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/packed_layout.h"

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

// Attention scores of 16-bit inputs on their micro-kernel, computed so that every score
// is the same bits whichever tile asks for it (forward, the weights sweep and backward's
// recompute use tiles of different shapes and positions, and backward's probabilities must be
// bitwise the forward's): the (query, key) plane is cut into a fixed grid of kScoreBlock x
// kScoreBlock blocks, each computed by one identical micro-kernel call (same shape, strides and
// operands) into a scratch block, and a tile copies the part it needs.
//
// S[i - i0][j - j0] (row stride lds) = scale * q_i . k_j for i0 <= i < i1, j0 <= j < j1, where
// position p's query is q.data + p * q.ld and its key k.data + p * k.ld (K = head dimension
// elements each), q.length queries and k.length keys in all.
constexpr int64_t kScoreBlock = 64;
template <typename T>
struct ScoreOperand {
  const T* data;
  int64_t ld, length;
};
// Available for bfloat16 or float16 where that type's micro-kernel runs (see tile_gemm.cpp).
bool score_blocks_available(c10::ScalarType dtype, int64_t K);
void score_blocks(ScoreOperand<c10::BFloat16> q, ScoreOperand<c10::BFloat16> k, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds);
void score_blocks(ScoreOperand<c10::Half> q, ScoreOperand<c10::Half> k, int64_t K, float scale,
                  int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds);

// Ends a run of tile GEMMs on this thread: releases the matrix-unit state (AMX tile
// configuration) that the 16-bit micro-kernels may hold, so that code running afterwards on
// this thread does not pay for it. Call it at the end of each parallel task range that called
// tile_gemm; a later tile_gemm takes the state again by itself. Cheap when nothing is held.
void tile_gemm_release();

// Whether the bfloat16 tile GEMMs re-lay every B operand out themselves (the VNNI packing of
// the bfloat16 micro-kernel), so that a transposed B costs them nothing extra: the projections
// then pass a weight matrix as it is instead of materializing its transpose on every call.
bool tile_gemm_bf16_packs_b();

// Whether float16 tiles run on a float16 micro-kernel (oneDNN's, on CPUs with AVX512-FP16 or
// AMX-FP16); elsewhere they are computed on the float32 one from the float16 values, and mhsa
// computes float16 inputs in fp32 by default (see half_native_compute, cpu_capability.h).
bool tile_gemm_f16_native();

// A bfloat16 B operand (op(B) is K x N) packed once, on the calling thread, into the bfloat16
// micro-kernel's layout, for several tile GEMMs that share it: the row tiles of one column tile
// of a projection all multiply the same block of the weight, which the plain call would pack
// again for each. Only where tile_gemm_bf16_packs_b(). The same bits as the plain call. pack()
// may be called again for another B and reuses the storage.
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

// Whether float32 projections should lay out the column tiles of a transposed weight themselves
// (transpose_floats into a compact block per thread) rather than materialize W^T per call: on
// oneDNN's AVX-512 float32 micro-kernel, where it measured faster; the AVX2 one (measured with
// the ISA caps of scripts/bench --emulate-avx2) was no faster, within the VM's noise.
bool tile_gemm_f32_packs_columns();

// out[i][k] (row stride ld_out) = in[k][i] (row stride ld_in) for k < rows, i < cols: an exact
// float transpose in cache-sized blocks (SSE 4 x 4 squares on x86), for callers that lay out a
// tile GEMM's operand themselves (the projections' transposed weight column tiles).
void transpose_floats(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                      int64_t ld_out);

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
// given, stands in for cpublas::pack on this thread during the probe: tests feed the probe
// another CPU's packing rules (tests/cpp/test_packed_layout.cpp).
using PackFunction = void (*)(int64_t K, int64_t N, int64_t ld_in, int64_t ld_out,
                              c10::ScalarType dtype, const void* in, void* out);
std::string probe_micro_kernel_f32();
std::string probe_micro_kernel16(c10::ScalarType dtype, Layout16 layout,
                                 PackFunction pack = nullptr);

}  // namespace mhsa::cpu
