// The portable GEMM (portable_gemm.h), compiled once per instruction set. Per K chunk, op(B) is
// packed into panels of kNR columns and op(A) into panels of kMR rows (transposes and exact
// 16-bit conversions included), and a micro-kernel keeps a kMR x kNR block of chunk sums in
// vector registers. Plain C++ with GCC vector extensions: the per-lane fmaf becomes one vfmadd
// or fmla per vector where the target has FMA, and stays an exact (slow, libm) fma elsewhere.
#ifndef MHSA_ISA
#error "portable_gemm.cpp is compiled once per instruction set, with MHSA_ISA naming the copy"
#endif

#include "engine/portable_gemm.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Each rounding is part of the result: a product and a sum written apart (beta * c + t) must not
// be fused into one FMA by the compiler, which GCC does by default (-ffp-contract=fast).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace mhsa::cpu::MHSA_ISA {
namespace {

// brgemm.h's reduction chunk: part of the result bits, keep them equal.
constexpr int64_t kChunkK = 512;

// Register block: kMR rows x kNV vectors of accumulators, leaving registers for the B vectors
// and the broadcast A value. kRowsInPlace: whether the kernel broadcasts straight from the rows
// of a float or double A (x86 broadcasts from memory; on NEON the row values need registers of
// their own, so A is packed there).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64, kMR = 14, kNV = 2;  // 28 of 32 zmm
constexpr bool kRowsInPlace = true;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kVecBytes = 32, kMR = 6, kNV = 2;  // 12 of 16 ymm
constexpr bool kRowsInPlace = true;
#elif defined(__aarch64__)
constexpr int kVecBytes = 16, kMR = 8, kNV = 3;  // 24 of 32 q registers
constexpr bool kRowsInPlace = false;
#else
constexpr int kVecBytes = 16, kMR = 4, kNV = 2;  // 8 of 16 xmm on baseline x86-64 (no FMA)
constexpr bool kRowsInPlace = false;
#endif

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = kVecBytes / sizeof(T);
template <typename T>
constexpr int kNR = kNV* kLanes<T>;  // columns of a B panel
// Rows and columns of A and B packed at a time (per K chunk): the kMR-row multiples at or
// above 256 and kNR multiples at or above 512, so that the tiles of mhsa fit one block.
constexpr int64_t kMC = (256 + kMR - 1) / kMR * kMR;
template <typename T>
constexpr int64_t kNC = (512 + kNR<T> - 1) / kNR<T>* kNR<T>;

// acc + a * b per lane as the reference loops compute it: a fused multiply-add for float
// (std::fma), the plain product and sum for double.
inline Vec<float> reference_multiply_add(Vec<float> a, Vec<float> b, Vec<float> acc) {
  Vec<float> r;
#pragma GCC unroll 16
  for (int l = 0; l < kLanes<float>; ++l) r[l] = __builtin_fmaf(a[l], b[l], acc[l]);
  return r;
}
inline Vec<double> reference_multiply_add(Vec<double> a, Vec<double> b, Vec<double> acc) {
  return acc + a * b;
}

// out[i][j] (row stride kNR) = the chunk sum of rows i < R, columns j < V * kLanes, over kc
// steps of A and of the packed B panel b (kNR values per k). A's value (i, k) is a[i * lda + k]
// (kRows: A's rows read in place) or a[k * lda + i] (a packed panel, lda = kMR, or a transposed
// A read in place).
template <typename T, int R, int V, bool kRows>
void micro_kernel(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b,
                  T* __restrict out) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[R][V];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = Vec<T>{};  // +0, as the reference's chunk starts
  for (int64_t k = 0; k < kc; ++k, a += kRows ? 1 : lda, b += kNR<T>) {
    Vec<T> bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) std::memcpy(&bv[v], b + v * L, sizeof(Vec<T>));
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      const Vec<T> av = a[kRows ? i * lda : i] - Vec<T>{};  // a broadcast: x - 0 is x
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = reference_multiply_add(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) std::memcpy(out + i * kNR<T> + v * L, &acc[i][v], sizeof(Vec<T>));
}

// The micro-kernels of every edge shape, [(R - 1) * kNV + V - 1], so that no padded row or
// vector of columns is computed.
template <typename T>
using KernelFn = void (*)(int64_t, const T*, int64_t, const T*, T*);
template <typename T, bool kRows, size_t... I>
constexpr std::array<KernelFn<T>, sizeof...(I)> kernel_table(std::index_sequence<I...>) {
  return {&micro_kernel<T, static_cast<int>(I) / kNV + 1, static_cast<int>(I) % kNV + 1, kRows>...};
}
template <typename T, bool kRows>
constexpr std::array<KernelFn<T>, kMR * kNV> kKernels =
    kernel_table<T, kRows>(std::make_index_sequence<kMR * kNV>());

template <typename T, typename in_t>
inline T widen(in_t v) {
  // Exact for every input type. The 16-bit ones by their bits, not by c10's inline operator
  // float: an out-of-line copy of that, compiled here with F16C or AVX-512, could be the one the
  // linker keeps for every translation unit.
  if constexpr (std::is_same_v<in_t, c10::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return static_cast<T>(f);
  } else if constexpr (std::is_same_v<in_t, c10::Half>) {
    const uint32_t h = v.x, sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu,
                   mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {
      bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
    } else if (exponent != 0) {
      bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
    } else if (mantissa == 0) {
      bits = sign;  // +-0
    } else {        // subnormal: normalize
      uint32_t e = 113u, m = mantissa;
      while ((m & 0x400u) == 0) {
        m <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return static_cast<T>(f);
  } else {
    return static_cast<T>(v);
  }
}

// Rows [i0, i0 + mc) of op(A), steps [k0, k0 + kc), as panels of kMR rows (kMR values per k,
// the last panel's rows past mc left unset: its kernel does not read them).
template <typename T, typename in_t>
void pack_a(Trans ta, const in_t* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            T* out) {
  for (int64_t p = 0; p < mc; p += kMR, out += kMR * kc) {
    const int64_t mr = mc - p < kMR ? mc - p : kMR;
    if (ta == Trans::No) {
      for (int64_t r = 0; r < mr; ++r) {
        const in_t* src = A + (i0 + p + r) * lda + k0;
        for (int64_t k = 0; k < kc; ++k) out[k * kMR + r] = widen<T>(src[k]);
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const in_t* src = A + (k0 + k) * lda + i0 + p;
        for (int64_t r = 0; r < mr; ++r) out[k * kMR + r] = widen<T>(src[r]);
      }
    }
  }
}

// Columns [j0, j0 + nc) of op(B), steps [k0, k0 + kc), as panels of kNR columns (kNR values per
// k), the last panel zero-filled up to whole vectors (its padded outputs are not stored).
template <typename T, typename in_t>
void pack_b(Trans tb, const in_t* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
            T* out) {
  constexpr int64_t NR = kNR<T>, L = kLanes<T>;
  for (int64_t q = 0; q < nc; q += NR, out += NR * kc) {
    const int64_t nr = nc - q < NR ? nc - q : NR, width = (nr + L - 1) / L * L;
    if (tb == Trans::No) {
      for (int64_t k = 0; k < kc; ++k) {
        const in_t* src = B + (k0 + k) * ldb + j0 + q;
        for (int64_t c = 0; c < nr; ++c) out[k * NR + c] = widen<T>(src[c]);
      }
    } else {  // by blocks of 16 steps, whose output stays in L1
      for (int64_t kb = 0; kb < kc; kb += 16) {
        const int64_t ke = kc - kb < 16 ? kc : kb + 16;
        for (int64_t c = 0; c < nr; ++c) {
          const in_t* src = B + (j0 + q + c) * ldb + k0;
          for (int64_t k = kb; k < ke; ++k) out[k * NR + c] = widen<T>(src[k]);
        }
      }
    }
    if (width > nr) {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t c = nr; c < width; ++c) out[k * NR + c] = T(0);
    }
  }
}

// Adds one chunk's sums t (mr x nr, row stride ldt) where the reference does: into C (alpha ==
// 1; the first chunk onto beta * C, or onto 0 where beta == 0), else into the running sums s
// (row stride lds; only with several chunks), C getting beta * C + alpha * sum after the last.
template <typename T>
void add_chunk(const T* t, int64_t ldt, int64_t mr, int64_t nr, T alpha, T beta, bool first,
               bool last, T* C, int64_t ldc, T* s, int64_t lds) {
  for (int64_t i = 0; i < mr; ++i, t += ldt, C += ldc) {
    if (alpha == T(1)) {
      if (!first) {
        for (int64_t j = 0; j < nr; ++j) C[j] = C[j] + t[j];
      } else if (beta == T(0)) {
        for (int64_t j = 0; j < nr; ++j) C[j] = T(0) + t[j];
      } else {
        for (int64_t j = 0; j < nr; ++j) C[j] = beta * C[j] + t[j];
      }
    } else if (first && last) {  // a single chunk: its sum is 0 + t
      if (beta == T(0)) {
        for (int64_t j = 0; j < nr; ++j) C[j] = alpha * (T(0) + t[j]);
      } else if (beta == T(1)) {
        for (int64_t j = 0; j < nr; ++j) C[j] = C[j] + alpha * (T(0) + t[j]);
      } else {
        for (int64_t j = 0; j < nr; ++j) C[j] = beta * C[j] + alpha * (T(0) + t[j]);
      }
    } else {
      T* r = s + i * lds;
      if (first) {
        for (int64_t j = 0; j < nr; ++j) r[j] = T(0) + t[j];
      } else if (!last) {
        for (int64_t j = 0; j < nr; ++j) r[j] = r[j] + t[j];
      } else if (beta == T(0)) {
        for (int64_t j = 0; j < nr; ++j) C[j] = alpha * (r[j] + t[j]);
      } else if (beta == T(1)) {
        for (int64_t j = 0; j < nr; ++j) C[j] = C[j] + alpha * (r[j] + t[j]);
      } else {
        for (int64_t j = 0; j < nr; ++j) C[j] = beta * C[j] + alpha * (r[j] + t[j]);
      }
    }
  }
}

// A growable scratch array. Not std::vector: its out-of-line members are one symbol for every
// ISA copy of this file, so the linker would keep one copy, compiled for one ISA (AVX-512 code
// on an AVX2-only CPU); this type has internal linkage.
template <typename T>
struct GrowingBuffer {
  T* data = nullptr;
  int64_t size = 0;
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() { delete[] data; }
};

// Per-thread packing and running-sum storage (one per accumulation type, shared by the input
// types), grown to the largest block seen, never shrunk.
template <typename T>
struct Scratch {
  GrowingBuffer<T> a, b, sums;
};
template <typename T>
Scratch<T>& scratch() {
  thread_local Scratch<T> s;
  return s;
}
template <typename T>
T* sized(GrowingBuffer<T>& v, int64_t n) {
  if (v.size < n) {
    delete[] v.data;
    v.data = nullptr;  // stays valid if new throws
    v.size = 0;
    v.data = new T[static_cast<size_t>(n)];
    v.size = n;
  }
  return v.data;
}

template <typename in_t, typename T>
void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const in_t* A, int64_t lda,
          const in_t* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t NR = kNR<T>, L = kLanes<T>, NC = kNC<T>;
  // A of the accumulation type is read in place where the kernel can (the broadcasts need no
  // layout); else it is packed, which also converts 16-bit values.
  const bool pack = !std::is_same_v<in_t, T> || (ta == Trans::No && !kRowsInPlace);
  const auto& kernels = !pack && ta == Trans::No ? kKernels<T, kRowsInPlace> : kKernels<T, false>;
  Scratch<T>& buffers = scratch<T>();
  alignas(64) T tile[kMR * NR];
  const int64_t kc_max = K < kChunkK ? K : kChunkK;
  // Running sums across chunks only where they do not go to C directly.
  const bool sums = alpha != T(1) && K > kChunkK;
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = N - jc < NC ? N - jc : NC;
    for (int64_t ic = 0; ic < M; ic += kMC) {
      const int64_t mc = M - ic < kMC ? M - ic : kMC;
      T* bp = sized(buffers.b, (nc + NR - 1) / NR * NR * kc_max);
      T* ap = pack ? sized(buffers.a, (mc + kMR - 1) / kMR * kMR * kc_max) : nullptr;
      T* s = sums ? sized(buffers.sums, mc * nc) : nullptr;
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
        const bool first = k0 == 0, last = k0 + kc == K;
        pack_b(tb, B, ldb, jc, nc, k0, kc, bp);
        if (pack) pack_a(ta, A, lda, ic, mc, k0, kc, ap);
        for (int64_t ir = 0; ir < mc; ir += kMR) {
          const int64_t mr = mc - ir < kMR ? mc - ir : kMR;
          const T* a = nullptr;
          int64_t stride = kMR;
          if (pack) {
            a = ap + ir * kc;
          } else if constexpr (std::is_same_v<in_t, T>) {
            a = ta == Trans::No ? A + (ic + ir) * lda + k0 : A + k0 * lda + ic + ir;
            stride = lda;
          }
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int64_t nr = nc - jr < NR ? nc - jr : NR;
            kernels[(mr - 1) * kNV + (nr + L - 1) / L - 1](kc, a, stride, bp + jr * kc, tile);
            add_chunk(tile, NR, mr, nr, alpha, beta, first, last, C + (ic + ir) * ldc + jc + jr,
                      ldc, s ? s + ir * nc + jr : nullptr, nc);
          }
        }
      }
    }
  }
}

void gemm_f32(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_f64(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_f16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const c10::Half* A,
              int64_t lda, const c10::Half* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

PortableGemm make_portable_gemm() { return {&gemm_f32, &gemm_f64, &gemm_bf16, &gemm_f16}; }

}  // namespace mhsa::cpu::MHSA_ISA
