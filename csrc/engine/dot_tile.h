#pragma once
// Dot-product tiles, per instruction set: C[r][c] = alpha * sum_d A[r][d] * B[c][d] for the
// scores S = scale * Q K^T and dP = dO V^T. Every element is one multiply-add chain over
// d = 0..K-1 from zero, whatever the tile: backward recomputes the forward's scores bitwise,
// and a saturated softmax row gets dP_ij == Dsum_i exactly, so its dS is exactly zero as in
// nn.MultiheadAttention (a BLAS picks other summation orders for other tile shapes).
#include "engine/per_isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <ATen/OpMathType.h>

#include <cstdint>

#include "engine/conversions.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {

// One step of the chain, acc + a * b with one rounding: a fused multiply-add, spelled out so
// that the scalar and the vector forms round identically (the compiler's own contraction of
// a * b + c is not guaranteed: it may vectorize the products and add them unfused).
inline vfloat fused_multiply_add(vfloat a, vfloat b, vfloat acc) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__FMA__)
  return (vfloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#elif defined(__x86_64__) || defined(__i386__)
  // Baseline x86-64 has no fused multiply-add. The product of two floats is exact in double,
  // so one double add then the rounding to float gives the fused result but for rare
  // double-rounding ties (a float multiply and add would round twice per step).
  typedef double vdouble __attribute__((vector_size(2 * kVecBytes)));
  const vdouble exact = __builtin_convertvector(a, vdouble) * __builtin_convertvector(b, vdouble);
  return __builtin_convertvector(exact + __builtin_convertvector(acc, vdouble), vfloat);
#else
  // Other architectures (aarch64: fmla): fused, lane by lane, as the scalar form below.
  vfloat r;
  for (int k = 0; k < kLanes; ++k) r[k] = __builtin_fmaf(a[k], b[k], acc[k]);
  return r;
#endif
}
inline float fused_multiply_add(float a, float b, float acc) {
#if defined(__FMA__) || defined(__AVX512F__) || !(defined(__x86_64__) || defined(__i386__))
  return __builtin_fmaf(a, b, acc);
#else
  // As the vector form above: the exact product and one add in double, then float.
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) +
                            static_cast<double>(acc));
#endif
}
inline double fused_multiply_add(double a, double b, double acc) {
#if defined(__FMA__) || defined(__AVX512F__) || !(defined(__x86_64__) || defined(__i386__))
  return __builtin_fma(a, b, acc);
#else
  volatile double product = a * b;
  return acc + product;
#endif
}

// The scalar chain, the same operations as one lane of dot_tile_panels.
template <typename scalar_t>
inline at::opmath_type<scalar_t> dot_chain(const scalar_t* a, const scalar_t* b, int64_t K) {
  at::opmath_type<scalar_t> acc = 0;
  for (int64_t d = 0; d < K; ++d) acc = fused_multiply_add(to_acc(a[d]), to_acc(b[d]), acc);
  return acc;
}

// The dot tiles read B from its pack: B^T in fp32 as column panels of kDotPanel (two vectors),
// panel p at pack + p * K * kDotPanel, its row d holding B[p*kDotPanel .. +kDotPanel][d],
// columns past N zero. dot_pack_size floats hold the pack of N rows of B.
constexpr int64_t kDotPanel = 2 * kLanes;
inline int64_t dot_pack_size(int64_t N, int64_t K) {
  return ((N + kDotPanel - 1) / kDotPanel) * kDotPanel * K;
}

// Packs B (N rows, K columns, row stride ldb) for dot_tile: once per key block in backward,
// for every query block. float64 reads B directly (the reference dtype, not a fast path).
inline void dot_pack(const double*, int64_t, int64_t, int64_t, float*) {}
template <typename scalar_t>
void dot_pack(const scalar_t* B, int64_t ldb, int64_t N, int64_t K, float* pack) {
  for (int64_t p = 0; p * kDotPanel < N; ++p) {
    float* panel = pack + p * K * kDotPanel;
    for (int64_t c = 0; c < kDotPanel; ++c) {
      const int64_t col = p * kDotPanel + c;
      if (col < N) {
        const scalar_t* b = B + col * ldb;
        for (int64_t d = 0; d < K; ++d) panel[d * kDotPanel + c] = to_acc(b[d]);
      } else {
        for (int64_t d = 0; d < K; ++d) panel[d * kDotPanel + c] = 0.0f;
      }
    }
  }
}

// R rows (R <= 4) of A against one panel of the pack: out[r][0..kDotPanel).
template <int R, typename scalar_t>
inline void dot_panel_rows(const scalar_t* A, int64_t lda, const float* panel, int64_t K,
                           vfloat out[4][2]) {
  vfloat acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vfloat{};
  for (int64_t d = 0; d < K; ++d) {
    const vfloat b0 = load(panel + d * kDotPanel);
    const vfloat b1 = load(panel + d * kDotPanel + kLanes);
    for (int r = 0; r < R; ++r) {
      const vfloat a = splat(to_acc(A[r * lda + d]));
      acc[r][0] = fused_multiply_add(a, b0, acc[r][0]);
      acc[r][1] = fused_multiply_add(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    out[r][0] = acc[r][0];
    out[r][1] = acc[r][1];
  }
}

// C[M, N] (row stride ldc) = alpha * A B^T from B's pack.
template <typename scalar_t>
void dot_tile_panels(int64_t M, int64_t N, int64_t K, float alpha, const scalar_t* A, int64_t lda,
                     const float* pack, float* C, int64_t ldc) {
  vfloat out[4][2];
  for (int64_t r0 = 0; r0 < M; r0 += 4) {
    const int rows = static_cast<int>(M - r0 < 4 ? M - r0 : 4);
    const scalar_t* a = A + r0 * lda;
    for (int64_t p = 0; p * kDotPanel < N; ++p) {
      const float* panel = pack + p * K * kDotPanel;
      switch (rows) {
        case 4: dot_panel_rows<4>(a, lda, panel, K, out); break;
        case 3: dot_panel_rows<3>(a, lda, panel, K, out); break;
        case 2: dot_panel_rows<2>(a, lda, panel, K, out); break;
        default: dot_panel_rows<1>(a, lda, panel, K, out); break;
      }
      const int64_t c0 = p * kDotPanel, cols = N - c0 < kDotPanel ? N - c0 : kDotPanel;
      for (int r = 0; r < rows; ++r) {
        float* c = C + (r0 + r) * ldc + c0;
        const vfloat v0 = out[r][0] * alpha, v1 = out[r][1] * alpha;
        if (cols == kDotPanel) {
          store(c, v0);
          store(c + kLanes, v1);
        } else {
          float tmp[kDotPanel];
          store(tmp, v0);
          store(tmp + kLanes, v1);
          for (int64_t k = 0; k < cols; ++k) c[k] = tmp[k];
        }
      }
    }
  }
}

// C[M, N] (row stride ldc) = alpha * A B^T, B (N rows, row stride ldb) read from the pack that
// dot_pack made of it; float64 computes the same chain per element from B itself.
inline void dot_tile(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                     const double* B, int64_t ldb, const float* /*pack*/, double* C, int64_t ldc) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < N; ++c) C[r * ldc + c] = alpha * dot_chain(A + r * lda, B + c * ldb, K);
}
template <typename scalar_t>
inline void dot_tile(int64_t M, int64_t N, int64_t K, float alpha, const scalar_t* A, int64_t lda,
                     const scalar_t* /*B*/, int64_t /*ldb*/, const float* pack, float* C,
                     int64_t ldc) {
  dot_tile_panels(M, N, K, alpha, A, lda, pack, C, ldc);
}

}  // namespace mhsa::cpu::MHSA_ISA
