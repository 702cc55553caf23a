// The few-rows projection (small_rows_gemm.h), compiled once per instruction set. For each block
// of kJB weight rows it streams the rows once and multiplies them with kRB rows of A at a time;
// every output element gets the same operations whatever the block it is in: two vector
// accumulators over alternate vectors of K (multiply-adds), their sum's lanes added as a
// tree, then the tail of K one element at a time.
#ifndef MHSA_ISA
#error "small_rows_gemm.cpp is compiled once per instruction set, with MHSA_ISA naming the copy"
#endif

#include "engine/small_rows_gemm.h"

#include <cstdint>
#include <cstring>

#include "engine/lane_sum.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64, kRB = 2;  // 16 accumulators of 32 zmm
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kVecBytes = 32, kRB = 1;  // 8 of 16 ymm
#else
constexpr int kVecBytes = 16, kRB = 1;
#endif
constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(float));
constexpr int kJB = 4;  // weight rows streamed together
typedef float Vec __attribute__((vector_size(kVecBytes)));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

// acc + a * b, contracted by GCC to one fused multiply-add per vector where the target has FMA,
// a multiply and an add elsewhere; either way the same operations on every call of this copy.
inline Vec contracted_multiply_add(Vec a, Vec b, Vec acc) { return acc + a * b; }

// Rows a[0..R) (stride lda) times weight rows w[0..J) (stride ldw): out[i][j] = a_i . w_j in
// the fixed order described at the top.
template <int R, int J>
void dot_block(int64_t K, const float* a, int64_t lda, const float* w, int64_t ldw,
               float (&out)[kRB][kJB]) {
  Vec acc[R][J][2];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) acc[i][j][0] = acc[i][j][1] = Vec{};
  int64_t k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u) {
      Vec av[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) av[i] = load(a + i * lda + k + u * kLanes);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) {
        const Vec wv = load(w + j * ldw + k + u * kLanes);
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) acc[i][j][u] = contracted_multiply_add(av[i], wv, acc[i][j][u]);
      }
    }
  }
  if (k + kLanes <= K) {
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const Vec av = load(a + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j)
        acc[i][j][0] = contracted_multiply_add(av, load(w + j * ldw + k), acc[i][j][0]);
    }
    k += kLanes;
  }
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < J; ++j) {
      const float s = lane_tree_sum(acc[i][j][0] + acc[i][j][1]);
      float tail = 0.0f;
      for (int64_t kk = k; kk < K; ++kk) tail += a[i * lda + kk] * w[j * ldw + kk];
      out[i][j] = s + tail;
    }
  }
}

template <int R>
void dot_rows(int64_t K, const float* a, int64_t lda, const float* w, int64_t ldw, int J,
              float (&out)[kRB][kJB]) {
  switch (J) {
    case 4: return dot_block<R, 4>(K, a, lda, w, ldw, out);
    case 3: return dot_block<R, 3>(K, a, lda, w, ldw, out);
    case 2: return dot_block<R, 2>(K, a, lda, w, ldw, out);
    default: return dot_block<R, 1>(K, a, lda, w, ldw, out);
  }
}

void small_rows_gemm(int64_t M, int64_t j0, int64_t j1, int64_t K, float alpha, const float* A,
                     int64_t lda, const float* W, int64_t ldw, const float* bias, float* C,
                     int64_t ldc) {
  float out[kRB][kJB];
  for (int64_t j = j0; j < j1; j += kJB) {
    const int J = static_cast<int>(j1 - j < kJB ? j1 - j : kJB);
    for (int64_t i = 0; i < M; i += kRB) {
      const int R = static_cast<int>(M - i < kRB ? M - i : kRB);
      if (R == kRB) {
        dot_rows<kRB>(K, A + i * lda, lda, W + j * ldw, ldw, J, out);
      } else {
        dot_rows<1>(K, A + i * lda, lda, W + j * ldw, ldw, J, out);
      }
      for (int r = 0; r < R; ++r)
        for (int jj = 0; jj < J; ++jj) {
          const float scaled = alpha * out[r][jj];
          C[(i + r) * ldc + j + jj] = bias != nullptr ? scaled + bias[j + jj] : scaled;
        }
    }
  }
}

}  // namespace

SmallRowsGemm make_small_rows_gemm() { return &small_rows_gemm; }

}  // namespace mhsa::cpu::MHSA_ISA
