// The tile GEMMs' dispatch: each call goes to oneDNN's micro-kernel for its dtype where the
// probe found one (brgemm.cpp), to the float32 micro-kernel from 16-bit values where only that
// runs, else to the portable loops (portable_gemm.cpp; non-x86 builds, CPUs without AVX2+FMA,
// MHSA_PORTABLE_GEMM, float64). The loops, not brgemm's own fallback cpublas::gemm, because a
// BLAS may split a tile over threads and round differently for another thread count.
#include "engine/tile_gemm.h"

#include <c10/util/Exception.h>

#include <type_traits>

#include "engine/brgemm.h"
#include "engine/cpu_capability.h"
#include "engine/micro_kernel_probe.h"
#include "engine/packing16.h"
#include "engine/portable_gemm.h"

namespace mhsa::cpu {
namespace {

// The portable loops of this CPU's instruction set (portable_gemm.cpp, compiled once per ISA
// like the attention kernels and chosen the same way).
const PortableGemm& portable_gemm() {
  static const PortableGemm gemm = MHSA_ISA_COPY(make_portable_gemm);
  return gemm;
}

// Degenerate shapes are handled here so that no engine sees M, N or K of 0.
template <typename acc_t>
bool handle_degenerate(int64_t M, int64_t N, int64_t K, acc_t beta, acc_t* C, int64_t ldc) {
  if (M == 0 || N == 0) return true;
  if (K > 0) return false;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      C[i * ldc + j] = beta == acc_t(0) ? acc_t(0) : beta * C[i * ldc + j];
  return true;
}

}  // namespace

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
#ifdef MHSA_USE_BRGEMM
  if (support().f32) {
    brgemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  portable_gemm().f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
  portable_gemm().f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {

// bfloat16 or float16 tiles: on their micro-kernel, else on the float32 one from their values
// (exact conversions; AVX2-only CPUs, and float16 without AVX512-FP16), else the loops.
template <typename half_t>
void tile_gemm16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
                 int64_t lda, const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  const Kernel16 kernel = kernel16<half_t>(s);
  if (kernel.runs) {
    brgemm16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, kernel.layout);
    return;
  }
  if (s.f32) {
    brgemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  if constexpr (std::is_same_v<half_t, c10::BFloat16>) {
    portable_gemm().bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    portable_gemm().f16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

}  // namespace

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  tile_gemm16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const c10::Half* A,
               int64_t lda, const c10::Half* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  tile_gemm16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void PackedB16::pack(Trans tb, const c10::BFloat16* B, int64_t ldb, int64_t K, int64_t N) {
  K_ = K;
  N_ = N;
#ifdef MHSA_USE_BRGEMM
  TORCH_CHECK(tile_gemm_bf16_packs_b(), "mhsa: prepacked bfloat16 B needs the bf16 micro-kernel");
  const int64_t first_chunk = K < kChunkK ? K : kChunkK;
  layout_ = support().bf16_layout;
  block_stride_ = packed_block_shape(layout_, first_chunk, kBlockN).elements;
  col_blocks_ = (N + kBlockN - 1) / kBlockN;
  const int64_t chunks = (K + kChunkK - 1) / kChunkK;
  data_.resize(static_cast<size_t>(chunks * col_blocks_ * block_stride_));  // keeps capacity
  Scratch& s = scratch();
  for (int64_t b = 0; b < chunks * col_blocks_; ++b) {
    const int64_t k0 = (b / col_blocks_) * kChunkK, j0 = (b % col_blocks_) * kBlockN;
    const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const int64_t nb = N - j0 < kBlockN ? N - j0 : kBlockN;
    pack_b_block(tb, B, ldb, k0, kc, j0, nb, layout_, data_.data() + b * block_stride_, s);
  }
#else
  (void)tb, (void)B, (void)ldb;
  TORCH_CHECK(false, "mhsa: prepacked bfloat16 B is not available in this build");
#endif
}

void tile_gemm(Trans ta, int64_t M, int64_t K, float alpha, const c10::BFloat16* A, int64_t lda,
               const PackedB16& B, float beta, float* C, int64_t ldc) {
  TORCH_INTERNAL_ASSERT(K == B.K_, "tile_gemm: K differs from the packed B's");
  if (handle_degenerate(M, B.N_, K, beta, C, ldc)) return;
#ifdef MHSA_USE_BRGEMM
  brgemm16_blocks(ta, M, B.N_, K, alpha, A, lda, beta, C, ldc, B.layout_, scratch(),
                  [&](int64_t k0, int64_t, int64_t j0, int64_t) {
                    const int64_t b = (k0 / kChunkK) * B.col_blocks_ + j0 / kBlockN;
                    return B.data_.data() + b * B.block_stride_;
                  });
#else
  (void)ta, (void)alpha, (void)A, (void)lda;
  TORCH_CHECK(false, "mhsa: prepacked bfloat16 B is not available in this build");
#endif
}

void tile_gemm_release() {
#ifdef MHSA_USE_BRGEMM
  // oneDNN may hold the matrix unit for any 16-bit kernel on an AMX CPU, whatever B layout won.
  const Support& s = support();
  if (s.amx && (s.bf16 || s.f16)) cpublas::brgemm_release(true);
#endif
}

bool tile_gemm_f32_chain_order() {
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  if (s.f32) return s.f32_chain;
#endif
  return true;  // the portable loops
}

bool tile_gemm_f16_native() {
#ifdef MHSA_USE_BRGEMM
  return support().f16;
#else
  return false;
#endif
}

bool tile_gemm_bf16_packs_b() {
#ifdef MHSA_USE_BRGEMM
  return support().bf16;
#else
  return false;
#endif
}

bool tile_gemm_f32_packs_columns() {
#ifdef MHSA_USE_BRGEMM
  return support().f32_avx512;
#else
  return false;
#endif
}

}  // namespace mhsa::cpu
