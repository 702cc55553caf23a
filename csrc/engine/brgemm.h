#pragma once
// The micro-kernel GEMM: tiles on oneDNN's batch-reduce micro-kernels through PyTorch's exported
// at::native::cpublas::brgemm (row-major C (+)= A B, fp32 accumulation). They never split a call
// over threads and are chosen by shape and strides only, so with constant blocking (kChunkK,
// kBlockN) a tile has the same bits on any thread, for any thread count. No transposes, alpha or
// beta: a transposed operand is copied row-major into per-thread scratch, and alpha and beta are
// applied around the product (Target). Internal to the engine (tile_gemm.cpp calls it).
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/brgemm_build.h"
#include "engine/packed_layout.h"
#include "engine/tile_gemm.h"
#include "engine/transpose.h"

#ifdef MHSA_USE_BRGEMM
#include <ATen/native/CPUBlas.h>

namespace mhsa::cpu {

namespace cpublas = at::native::cpublas;

// The reduction is cut into chunks of at most kChunkK (accumulated into C in order), so that the
// scratch copies of a projection's operands stay a few hundred KiB whatever N*L is. Attention
// tiles never reach it (K is the head dimension or a tile side). Part of the result bits.
constexpr int64_t kChunkK = 512;

// Per-thread scratch of the micro-kernel path, grown to the largest operand seen.
struct Scratch {
  std::vector<float> a, b, c;
  std::vector<uint16_t> a16, b16, plain16;  // bfloat16 or float16 elements, as their bits
};
Scratch& scratch();

template <typename T>
T* sized(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// A 16-bit scratch vector as at least n elements of half_t (bfloat16 or float16).
template <typename half_t>
half_t* sized16(std::vector<uint16_t>& v, int64_t n) {
  static_assert(sizeof(half_t) == sizeof(uint16_t), "a 16-bit type");
  return reinterpret_cast<half_t*>(sized(v, n));
}

template <typename half_t>
constexpr at::ScalarType dtype16() {
  return std::is_same_v<half_t, c10::Half> ? at::kHalf : at::kBFloat16;
}

// Where the product goes: C itself (alpha == 1; beta applied to C first), or a scratch tile that
// is then combined with C as beta * C + alpha * product.
struct Target {
  float* c;
  int64_t ldc;
  bool add_first;  // the first K chunk adds to the target (else it overwrites it)
};
Target prepare_target(int64_t M, int64_t N, float alpha, float beta, float* C, int64_t ldc,
                      Scratch& s);
void finish_target(const Target& t, int64_t M, int64_t N, float alpha, float beta, float* C,
                   int64_t ldc);

// Columns k0..k0+kc of op(A) (M x K) as a row-major M x kc block (ld kc).
template <typename in_t, typename out_t>
void copy_a_block(Trans ta, const in_t* A, int64_t lda, int64_t k0, int64_t kc, int64_t M,
                  int64_t ld_out, out_t* out) {
  if (ta == Trans::No) {
    for (int64_t i = 0; i < M; ++i) {
      const in_t* a = A + i * lda + k0;
      out_t* row = out + i * ld_out;
      if constexpr (std::is_same_v<in_t, out_t>) {
        std::memcpy(row, a, static_cast<size_t>(kc) * sizeof(out_t));  // 16-bit: a copy
      } else {
        for (int64_t k = 0; k < kc; ++k) row[k] = static_cast<out_t>(to_float(a[k]));
      }
    }
  } else {
    transpose_block(A + k0 * lda, lda, kc, M, out, ld_out);
  }
}

// float32 (or 16-bit values computed in float32) on the float32 micro-kernel.
template <typename in_t>
void brgemm_f32(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const in_t* A,
                int64_t lda, const in_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

// bfloat16 or float16 on its 16-bit micro-kernel, K in chunks of kChunkK, N in blocks of
// kBlockN: block_at(k0, kc, j0, nb) gives the packed B block of those rows and columns (packed on
// the spot for a plain call, taken from a PackedB16 for a prepacked one: the same bits).
template <typename half_t, typename BlockAt>
void brgemm16_blocks(Trans ta, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
                     int64_t lda, float beta, float* C, int64_t ldc, Layout16 layout, Scratch& s,
                     BlockAt block_at) {
  const Target t = prepare_target(M, N, alpha, beta, C, ldc, s);
  const half_t zero(0.0f);
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const int64_t kp = (kc + 1) / 2 * 2;  // VNNI pairs: an odd reduction gets a zero pair half
    const half_t* a = A + k0;
    int64_t ld_a = lda;
    if (ta == Trans::Yes || kp != kc) {
      half_t* buf = sized16<half_t>(s.a16, M * kp);
      copy_a_block(ta, A, lda, k0, kc, M, kp, buf);
      if (kp != kc)
        for (int64_t i = 0; i < M; ++i) buf[i * kp + kc] = zero;
      a = buf;
      ld_a = kp;
    }
    const bool add_C = k0 > 0 || t.add_first;
    for (int64_t j0 = 0; j0 < N; j0 += kBlockN) {
      const int64_t nb = N - j0 < kBlockN ? N - j0 : kBlockN;
      const half_t* pb = block_at(k0, kc, j0, nb);
      const int64_t ld_b = packed_block_shape(layout, kc, nb).ld;
      cpublas::brgemm(M, nb, kp, ld_a, ld_b, t.ldc, add_C, a, pb, t.c + j0, true);
    }
  }
  finish_target(t, M, N, alpha, beta, C, ldc);
}

// The plain 16-bit call: each B block packed on the spot in `layout`.
template <typename half_t>
void brgemm16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
              int64_t lda, const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
              Layout16 layout);

}  // namespace mhsa::cpu

#endif  // MHSA_USE_BRGEMM
