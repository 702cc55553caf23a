#pragma once
// Building blocks of the attention kernels, compiled once per instruction set: include this
// header only from the ISA translation units (attention_*_kernel.cpp), which define MHSA_ISA
// (the namespace of their copy) and are built with that ISA's compiler flags. Every function
// here lives in that namespace, and the code avoids inline library templates (std::vector,
// std::fill, ...) whose copies compiled with different flags could be merged by the linker
// and run AVX-512 code on a CPU without it.
#ifndef MHSA_ISA
#error "attention_tile.h is for the per-ISA kernel translation units (MHSA_ISA undefined)"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/attention_args.h"
#include "cpu/cpu_capability.h"
#include "cpu/tile_gemm.h"

namespace mhsa::cpu::MHSA_ISA {

// ---------------------------------------------------------------------------------------
// Vector math on fp32 rows with GCC vector extensions: the width follows the ISA flags of
// this translation unit (4, 8 or 16 lanes).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
typedef float vfloat __attribute__((vector_size(kVecBytes)));
typedef int32_t vint __attribute__((vector_size(kVecBytes)));
constexpr int kLanes = kVecBytes / 4;

inline vfloat splat(float v) { return vfloat{} + v; }
inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) in about 1 ulp: x = n ln2 + r with |r| <= ln2/2, a degree-7 polynomial for exp(r)
// (Cephes' expf coefficients), 2^n added to the exponent bits. Below -87.3 (including -inf,
// i.e. masked scores) the result is exactly 0; NaN stays NaN.
inline vfloat vexp(vfloat x) {
  const vint is_nan = x != x;
  const vint underflow = x < -87.3365478515625f;
  x = x > 88.3762626647949f ? splat(88.3762626647949f) : x;
  x = underflow ? splat(-87.3365478515625f) : x;
  const vfloat t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln2) via 1.5 * 2^23
  const vfloat n = t - 12582912.0f;
  const vint n_int = (vint)t - 0x4B400000;
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vint bits = (vint)p + (n_int << 23);
  vfloat result = (vfloat)bits;
  result = underflow ? vfloat{} : result;
  return is_nan ? x : result;
}

// Tail of a row: the last n % kLanes elements through a padded vector.
inline vfloat load_tail(const float* p, int64_t count, float pad) {
  float tmp[kLanes];
  for (int k = 0; k < kLanes; ++k) tmp[k] = k < count ? p[k] : pad;
  return load(tmp);
}
inline void store_tail(float* p, int64_t count, vfloat v) {
  float tmp[kLanes];
  store(tmp, v);
  for (int64_t k = 0; k < count; ++k) p[k] = tmp[k];
}
inline float horizontal_sum(vfloat v) {
  float s = 0;
  for (int k = 0; k < kLanes; ++k) s += v[k];
  return s;
}
// The maxima below propagate NaN (a NaN score must give a NaN row, as in torch, not be
// mistaken for a masked one).
inline float horizontal_max(vfloat v) {
  float m = v[0];
  for (int k = 1; k < kLanes; ++k) m = (v[k] > m || v[k] != v[k]) ? v[k] : m;
  return m;
}

inline float row_max(const float* x, int64_t n) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  vfloat m = splat(neg_inf);
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    const vfloat v = load(x + c);
    m = (v > m) | (v != v) ? v : m;
  }
  if (c < n) {
    const vfloat v = load_tail(x + c, n - c, neg_inf);
    m = (v > m) | (v != v) ? v : m;
  }
  return horizontal_max(m);
}
inline double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < n; ++c) m = (x[c] > m || x[c] != x[c]) ? x[c] : m;
  return m;
}

// x = exp(x - shift) in place; returns the sum of the new values.
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  vfloat sum{};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    const vfloat e = vexp(load(x + c) - shift);
    store(x + c, e);
    sum += e;
  }
  if (c < n) {
    const vfloat e = vexp(load_tail(x + c, n - c, -std::numeric_limits<float>::infinity()) - shift);
    store_tail(x + c, n - c, e);
    sum += e;
  }
  return horizontal_sum(sum);
}
inline double exp_shift_sum(double* x, int64_t n, double shift) {
  double sum = 0;
  for (int64_t c = 0; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

// ---------------------------------------------------------------------------------------
// Element conversions. bfloat16 and float16 are converted with explicit bit operations (round
// to nearest even) rather than c10's inline operators, for the reason given at the top of this
// file.
// float16 bits to float: exact (subnormals scaled by 2^-24, which is exact in fp32).
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    float f = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// float to float16 bits, rounding to nearest even as Tensor.to does (overflow to inf, NaN stays
// a quiet NaN).
inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (x >= 0x38800000u) {  // a normal float16 (>= 2^-14): rebias, round 23 -> 10 mantissa bits
    const uint32_t r = x - 0x38000000u;
    return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  // A subnormal float16 (or zero): adding 0.5 leaves units of 2^-24 in the low mantissa bits,
  // rounded to nearest even by the addition itself.
  float a;
  std::memcpy(&a, &x, sizeof(a));
  const float t = a + 0.5f;
  uint32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  return static_cast<uint16_t>(sign | (tb - 0x3f000000u));
}

template <typename scalar_t>
inline auto to_acc(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return half_bits_to_float(v.x);
  } else {
    return v;
  }
}
template <typename scalar_t, typename acc_t>
inline scalar_t from_acc(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    uint16_t out;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      out = static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    } else {
      out = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
    return c10::BFloat16(out, c10::BFloat16::from_bits());
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return c10::Half(float_to_half_bits(v), c10::Half::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// A heap array freed on scope exit (std::vector is avoided, see the top of this file).
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n) : data_(n > 0 ? new T[n] : nullptr) {}
  ~Buffer() { delete[] data_; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  T* data_;
};

template <typename T>
inline void fill(T* p, int64_t n, T v) {
  for (int64_t k = 0; k < n; ++k) p[k] = v;
}

// Returns the acc_t tile as a GEMM input of scalar_t: itself, or converted into `cast`.
template <typename scalar_t, typename acc_t>
inline const scalar_t* as_gemm_input(const acc_t* tile, int64_t count, scalar_t* cast) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return tile;
  } else {
    for (int64_t k = 0; k < count; ++k) cast[k] = from_acc<scalar_t>(tile[k]);
    return cast;
  }
}

// ---------------------------------------------------------------------------------------
// Dot-product tiles: C[r][c] = alpha * sum_d A[r][d] * B[c][d] (A and B row-major with row
// strides lda, ldb; K = the head dimension). Used for dP = dO V^T and for the scores
// S = scale * Q K^T, in forward and backward alike (but bfloat16 scores where the bfloat16
// micro-kernel runs: see scores_on_grid below).
//
// Why not the BLAS: every element here is one multiply-add chain over d = 0, 1, ..., K-1 in
// order, starting from zero (dot_chain below), whatever the tile shape, its position or the
// thread that runs it. So backward recomputes bitwise the scores the forward saw (a BLAS picks
// different kernels, and summation orders, for different tile shapes), and for a saturated
// (one-hot) softmax row dP_ij == Dsum_i = dO_i . O_i exactly, so dS = P * (dP - Dsum) is
// exactly zero there, as in nn.MultiheadAttention, instead of a rounding residue that the
// large keys and queries of such rows amplify into the gradients.

// One step of the chain, acc + a * b: a fused multiply-add (one rounding) on ISAs that have
// it, a multiply then an add otherwise, spelled out so that the scalar and the vector forms
// round identically (the compiler's own contraction of a * b + c is not guaranteed: it
// vectorizes the products of a scalar loop and then adds them one by one, unfused).
inline vfloat multiply_add(vfloat a, vfloat b, vfloat acc) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__FMA__)
  return (vfloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#elif defined(__x86_64__) || defined(__i386__)
  // Baseline x86-64 has no fused multiply-add. The product of two floats is exact in double,
  // so one double add then the rounding to float gives the fused result but for rare
  // double-rounding ties; a separate float multiply and add (two roundings per step) made the
  // saturated-softmax gradients 10x less accurate than nn's (test_saturated.py, L = 17 causal).
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
inline float multiply_add(float a, float b, float acc) {
#if defined(__FMA__) || defined(__AVX512F__) || !(defined(__x86_64__) || defined(__i386__))
  return __builtin_fmaf(a, b, acc);
#else
  // As the vector form above: the exact product and one add in double, then float.
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) +
                            static_cast<double>(acc));
#endif
}
inline double multiply_add(double a, double b, double acc) {
#if defined(__FMA__) || defined(__AVX512F__) || !(defined(__x86_64__) || defined(__i386__))
  return __builtin_fma(a, b, acc);
#else
  volatile double product = a * b;
  return acc + product;
#endif
}

// The scalar chain, the same operations as one lane of dot_tile_packed.
template <typename scalar_t>
inline at::opmath_type<scalar_t> dot_chain(const scalar_t* a, const scalar_t* b, int64_t K) {
  at::opmath_type<scalar_t> acc = 0;
  for (int64_t d = 0; d < K; ++d) acc = multiply_add(to_acc(a[d]), to_acc(b[d]), acc);
  return acc;
}

// Width of the column panels of packed B^T: two vectors.
constexpr int64_t kDotPanel = 2 * kLanes;
inline int64_t dot_packed_size(int64_t N, int64_t K) {
  return ((N + kDotPanel - 1) / kDotPanel) * kDotPanel * K;
}

// B^T in fp32 (N rows of B, K columns), column panel p at Bt + p * K * kDotPanel, row d of a
// panel holding B[p*kDotPanel .. +kDotPanel][d]; columns past N are zero.
template <typename scalar_t>
void pack_dot_operand(const scalar_t* B, int64_t ldb, int64_t N, int64_t K, float* Bt) {
  for (int64_t p = 0; p * kDotPanel < N; ++p) {
    float* panel = Bt + p * K * kDotPanel;
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

// R rows (R <= 4) of A against one packed panel: out[r][0..kDotPanel).
template <int R, typename scalar_t>
inline void dot_micro(const scalar_t* A, int64_t lda, const float* panel, int64_t K,
                      vfloat out[4][2]) {
  vfloat acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vfloat{};
  for (int64_t d = 0; d < K; ++d) {
    const vfloat b0 = load(panel + d * kDotPanel);
    const vfloat b1 = load(panel + d * kDotPanel + kLanes);
    for (int r = 0; r < R; ++r) {
      const vfloat a = splat(to_acc(A[r * lda + d]));
      acc[r][0] = multiply_add(a, b0, acc[r][0]);
      acc[r][1] = multiply_add(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    out[r][0] = acc[r][0];
    out[r][1] = acc[r][1];
  }
}

// C[M, N] (row stride ldc) = alpha * A B^T from B^T packed by pack_dot_operand.
template <typename scalar_t>
void dot_tile_packed(int64_t M, int64_t N, int64_t K, float alpha, const scalar_t* A, int64_t lda,
                     const float* Bt, float* C, int64_t ldc) {
  vfloat out[4][2];
  for (int64_t r0 = 0; r0 < M; r0 += 4) {
    const int rows = static_cast<int>(M - r0 < 4 ? M - r0 : 4);
    const scalar_t* a = A + r0 * lda;
    for (int64_t p = 0; p * kDotPanel < N; ++p) {
      const float* panel = Bt + p * K * kDotPanel;
      switch (rows) {
        case 4: dot_micro<4>(a, lda, panel, K, out); break;
        case 3: dot_micro<3>(a, lda, panel, K, out); break;
        case 2: dot_micro<2>(a, lda, panel, K, out); break;
        default: dot_micro<1>(a, lda, panel, K, out); break;
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

// Double precision: the same chain per element, no packing (float64 is the reference dtype,
// not a fast path).
inline void dot_tile(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                     const double* B, int64_t ldb, double* C, int64_t ldc, float* /*packed*/) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < N; ++c) C[r * ldc + c] = alpha * dot_chain(A + r * lda, B + c * ldb, K);
}
template <typename scalar_t>
inline void dot_tile(int64_t M, int64_t N, int64_t K, float alpha, const scalar_t* A, int64_t lda,
                     const scalar_t* B, int64_t ldb, float* C, int64_t ldc, float* packed) {
  pack_dot_operand(B, ldb, N, K, packed);
  dot_tile_packed(M, N, K, alpha, A, lda, packed, C, ldc);
}

// The same with B already packed into `packed` by pack_for_dot (backward packs each key
// block's K and V once and reuses them for every query block). Double reads B directly.
inline void pack_for_dot(const double*, int64_t, int64_t, int64_t, float*) {}
template <typename scalar_t>
inline void pack_for_dot(const scalar_t* B, int64_t ldb, int64_t N, int64_t K, float* packed) {
  pack_dot_operand(B, ldb, N, K, packed);
}
inline void dot_tile_prepacked(int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                               int64_t lda, const double* B, int64_t ldb, const float*, double* C,
                               int64_t ldc) {
  dot_tile(M, N, K, alpha, A, lda, B, ldb, C, ldc, nullptr);
}
template <typename scalar_t>
inline void dot_tile_prepacked(int64_t M, int64_t N, int64_t K, float alpha, const scalar_t* A,
                               int64_t lda, const scalar_t*, int64_t, const float* packed, float* C,
                               int64_t ldc) {
  dot_tile_packed(M, N, K, alpha, A, lda, packed, C, ldc);
}

// ---------------------------------------------------------------------------------------
// Masks inside a score tile S (rows i0..i1 of queries, columns j0..j1 of keys, row stride ld)
// of batch n, head h.
template <typename acc_t>
void apply_masks(acc_t* S, int64_t ld, const MaskView<acc_t>& m, const AttentionGeometry& g,
                 int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t cols = j1 - j0;
  for (int64_t i = i0; i < i1; ++i) {
    acc_t* s = S + (i - i0) * ld;
    if (m.attn_bool) {
      const bool* mask = m.attn_bool + m.attn_layout.at(n, i, h) + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] = mask[c] ? neg_inf : s[c];
    } else if (m.attn_add) {
      const acc_t* mask = m.attn_add + m.attn_layout.at(n, i, h) + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] += mask[c];
    }
    if (m.kpm_bool) {
      const bool* mask = m.kpm_bool + n * g.S + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] = mask[c] ? neg_inf : s[c];
    } else if (m.kpm_add) {
      const acc_t* mask = m.kpm_add + n * g.S + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] += mask[c];
    }
    const int64_t p = i + m.diagonal;  // the query's position on the keys' axis
    if (m.causal) {
      for (int64_t c = (p + 1 - j0 > 0 ? p + 1 - j0 : 0); c < cols; ++c) s[c] = neg_inf;
    }
    if (m.window_left >= 0) {  // keys j < p - left
      const int64_t first = p - m.window_left - j0;
      for (int64_t c = 0; c < (first < cols ? first : cols); ++c) s[c] = neg_inf;
    }
    if (m.window_right >= 0) {  // keys j > p + right
      const int64_t last = p + m.window_right - j0;
      for (int64_t c = (last + 1 > 0 ? last + 1 : 0); c < cols; ++c) s[c] = neg_inf;
    }
    if (m.key_end != nullptr) {  // keys j >= key_end[n]
      const int64_t end = m.key_end[n] - j0;
      for (int64_t c = (end > 0 ? end : 0); c < cols; ++c) s[c] = neg_inf;
    }
  }
}

// Whether the scores of this call come from the bfloat16 micro-kernel on the fixed block grid
// (score_blocks, tile_gemm.h) instead of dot_tile: 16-bit inputs where their kernel runs.
// Either way every score is the same bits in forward and backward (the grid's blocks are
// identical calls; dot_tile's chain does not depend on the tile). dP = dO V^T is on dot_tile,
// the chain of Dsum = dO . O (dsum_rows), except for bfloat16 with its micro-kernel (dp_tile).
template <typename scalar_t>
inline bool scores_on_grid(const AttentionGeometry& g) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    return score_blocks_available(c10::CppTypeToScalarType<scalar_t>::value, g.D);
  } else {
    return false;
  }
}

// S = scale * Q_i K_j^T on the grid (see scores_on_grid).
template <typename scalar_t, typename acc_t>
inline void grid_scores(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                        const AttentionGeometry& g, acc_t scale, int64_t n, int64_t h, int64_t i0,
                        int64_t i1, int64_t j0, int64_t j1) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    score_blocks(ScoreOperand<scalar_t>{q + g.q.at(n, 0, h), g.q.seq, g.L},
                 ScoreOperand<scalar_t>{k + g.k.at(n, 0, g.kv_head(h)), g.k.seq, g.S}, g.D, scale,
                 i0, i1, j0, j1, S, ld);
  }
}

// Scores of a (query block, key block) tile, S = scale * Q_i K_j^T + masks (row stride ld), with
// K_j already packed by pack_for_dot (on the grid the packed copy is not used, see
// pack_keys_for_scores).
template <typename scalar_t, typename acc_t>
inline void score_tile_prepacked(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                                 const AttentionGeometry& g, const MaskView<acc_t>& masks,
                                 acc_t scale, int64_t n, int64_t h, int64_t i0, int64_t i1,
                                 int64_t j0, int64_t j1, const float* packed_k) {
  if (scores_on_grid<scalar_t>(g)) {
    grid_scores(S, ld, q, k, g, scale, n, h, i0, i1, j0, j1);
  } else {
    const scalar_t* qi = q + g.q.at(n, i0, h);
    const scalar_t* kj = k + g.k.at(n, j0, g.kv_head(h));
    dot_tile_prepacked(i1 - i0, j1 - j0, g.D, scale, qi, g.q.seq, kj, g.k.seq, packed_k, S, ld);
  }
  if (masks.any()) apply_masks(S, ld, masks, g, n, h, i0, i1, j0, j1);
}

// pack_for_dot for the keys of score_tile_prepacked: nothing to do when the scores come from
// the grid.
template <typename scalar_t>
inline void pack_keys_for_scores(const AttentionGeometry& g, const scalar_t* k, int64_t ldk,
                                 int64_t N, float* packed) {
  if (!scores_on_grid<scalar_t>(g)) pack_for_dot(k, ldk, N, g.D, packed);
}

// score_tile_prepacked, packing K_j into `packed` (scratch of dot_packed_size(j1 - j0, D)
// floats) first: bitwise the same scores.
template <typename scalar_t, typename acc_t>
inline void score_tile(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                       const AttentionGeometry& g, const MaskView<acc_t>& masks, acc_t scale,
                       int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                       float* packed) {
  pack_keys_for_scores(g, k + g.k.at(n, j0, g.kv_head(h)), g.k.seq, j1 - j0, packed);
  score_tile_prepacked(S, ld, q, k, g, masks, scale, n, h, i0, i1, j0, j1, packed);
}

// A half-open range of sequence positions.
struct PositionRange {
  int64_t begin, end;
  bool empty() const { return end <= begin; }
};

// The keys that some query of i0..i1 (batch n) may see under the causal mask, the sliding
// window and the padding limit: tiles outside are skipped, forward and backward (exact: their
// probabilities are zero); inside, apply_masks masks per element.
template <typename acc_t>
inline PositionRange visible_key_range(const AttentionGeometry& g, const MaskView<acc_t>& m,
                                       int64_t n, int64_t i0, int64_t i1) {
  int64_t begin = 0, end = g.S;
  const int64_t p0 = i0 + m.diagonal, p1 = i1 + m.diagonal;  // positions on the keys' axis
  if (m.causal && p1 < end) end = p1;
  if (m.window_right >= 0 && p1 + m.window_right < end) end = p1 + m.window_right;
  if (m.window_left >= 0 && p0 - m.window_left > begin) begin = p0 - m.window_left;
  if (m.key_end != nullptr && m.key_end[n] < end) end = m.key_end[n];
  return {begin, end > begin ? end : begin};
}

// The queries that may see some key of j0..j1 (batch n): the backward's query sweep of a key
// block.
template <typename acc_t>
inline PositionRange visible_query_range(const AttentionGeometry& g, const MaskView<acc_t>& m,
                                         int64_t n, int64_t j0, int64_t j1) {
  if (m.key_end != nullptr && j0 >= m.key_end[n]) return {0, 0};
  int64_t begin = 0, end = g.L;
  const int64_t d = m.diagonal;  // query i sits at key position i + d
  if (m.causal && j0 - d > begin) begin = j0 - d;
  if (m.window_right >= 0 && j0 - m.window_right - d > begin) begin = j0 - m.window_right - d;
  if (m.window_left >= 0 && j1 + m.window_left - d < end) end = j1 + m.window_left - d;
  return {begin, end > begin ? end : begin};
}

// ---------------------------------------------------------------------------------------
// Dropout with Philox-4x32-10, a counter-based generator: element (n, h, i, j) uses counter
// ((n*H + h)*L + i) * ceil(S/4) + j/4 and output word j%4 (i, j, L, S: the DropoutParams
// plane's), so any tile regenerates its own bits.
// kPhiloxLanes counters are evaluated at once, one per 64-bit vector lane; the result depends
// only on (seed, counter), so every ISA copy draws the same dropout masks.
typedef uint64_t vu64 __attribute__((vector_size(kVecBytes)));
constexpr int kPhiloxLanes = kVecBytes / 8;

inline void philox_lanes(vu64 counter, uint64_t key, vu64 out[4]) {
  const uint64_t low = 0xffffffffu;
  vu64 c0 = counter & low, c1 = counter >> 32, c2 = vu64{}, c3 = vu64{};
  uint64_t k0 = key & low, k1 = key >> 32;
  for (int round = 0; round < 10; ++round) {
    const vu64 p0 = c0 * static_cast<uint64_t>(0xD2511F53u);
    const vu64 p1 = c2 * static_cast<uint64_t>(0xCD9E8D57u);
    c0 = (p1 >> 32) ^ c1 ^ k0;
    c1 = p1 & low;
    c2 = (p0 >> 32) ^ c3 ^ k1;
    c3 = p0 & low;
    k0 = (k0 + 0x9E3779B9u) & low;
    k1 = (k1 + 0xBB67AE85u) & low;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// `kept` (or 0 where dropped) for row i of head (n, h), columns j0..j1, written to
// factors[0..). The context path uses kept = 1, a 0/1 mask, and applies 1 / (1 - p) once to
// the whole context (see DropoutParams); the returned weights use kept = 1 / (1 - p).
template <typename acc_t>
void dropout_factors(acc_t* factors, const DropoutParams& d, const AttentionGeometry& g, int64_t n,
                     int64_t h, int64_t i, int64_t j0, int64_t j1, acc_t kept) {
  const acc_t scale = kept;
  // 24-bit uniforms u; keep iff u >= p.
  const uint64_t threshold = static_cast<uint64_t>((d.p < 1.0 ? d.p : 1.0) * 16777216.0);
  const int64_t rows = d.rows > 0 ? d.rows : g.L, cols = d.cols > 0 ? d.cols : g.S;
  const int64_t groups_per_row = (cols + 3) / 4;
  const int64_t row = (n * g.H + h) * rows + d.row_offset + i;
  const uint64_t row_base = static_cast<uint64_t>(row * groups_per_row);
  const int64_t c0 = j0 + d.col_offset, c1 = j1 + d.col_offset;  // columns of the plane
  vu64 lane_offset;
  for (int k = 0; k < kPhiloxLanes; ++k) lane_offset[k] = static_cast<uint64_t>(k);
  for (int64_t group = c0 / 4; group * 4 < c1; group += kPhiloxLanes) {
    vu64 r[4];
    philox_lanes(lane_offset + (row_base + static_cast<uint64_t>(group)), d.seed, r);
    for (int lane = 0; lane < kPhiloxLanes; ++lane) {
      for (int k = 0; k < 4; ++k) {
        const int64_t c = (group + lane) * 4 + k;
        if (c < c0 || c >= c1) continue;
        factors[c - c0] = (r[k][lane] >> 8) >= threshold ? scale : acc_t(0);
      }
    }
  }
}

// Multiplies row i of head (n, h), columns j0..j1, by `kept` or 0 in place; `factors` is
// scratch of at least j1 - j0 elements.
template <typename acc_t>
void dropout_row(acc_t* row, acc_t* factors, const DropoutParams& d, const AttentionGeometry& g,
                 int64_t n, int64_t h, int64_t i, int64_t j0, int64_t j1, acc_t kept) {
  dropout_factors(factors, d, g, n, h, i, j0, j1, kept);
  for (int64_t c = 0; c < j1 - j0; ++c)
    row[c] = factors[c] == acc_t(0) ? acc_t(0) : row[c] * factors[c];
}

}  // namespace mhsa::cpu::MHSA_ISA
