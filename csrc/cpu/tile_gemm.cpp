// Tile GEMMs on oneDNN's batch-reduce micro-kernels, through the API PyTorch exports for them:
// at::native::cpublas::brgemm (C[M, N] (+)= A[M, K] B[K, N], row-major, fp32 accumulation),
// cpublas::pack and cpublas::could_pack (the matrix unit's B layout, AMX), brgemm_release.
//
// Why these: they are PyTorch's own JIT micro-kernels (AVX2/AVX-512 for float32, AVX512-BF16
// and AMX for bfloat16), single-threaded by construction (they never split a call over
// threads), cached per shape on each thread, and exported by libtorch_cpu on purpose, unlike the
// MKL symbols that this file used to look up inside it. A kernel is chosen by (M, N, K, strides,
// add_C) only, so a tile gives the same bits on whatever thread runs it; the tile shapes below
// (N blocks, K chunks) are constants, so results are bitwise the same for any thread count.
//
// brgemm has no transposes, alpha or beta, hence the per-thread scratch here: a transposed
// operand is copied into row-major order first (its cost is one pass over the operand against
// 2 * (other dimension) flops per element), the product goes through a scratch C when alpha != 1,
// and C is scaled first when beta is neither 0 nor 1.
//
// bfloat16 runs on the micro-kernel only with B in VNNI layout (pairs of consecutive k
// interleaved: B_vnni[k / 2][n][k % 2] = B[k][n]); oneDNN has it from AVX-512 (the AVX512-BF16
// dot product where the CPU has it) and uses AMX where the CPU has that, with B packed by
// cpublas::pack (could_pack tells). Where the bfloat16 micro-kernel is missing (AVX2-only CPUs),
// bfloat16 tiles are computed by the float32 micro-kernel from their bfloat16 values (exact
// conversions).
//
// The portable loops (portable_gemm.cpp, register-blocked and compiled per instruction set) are
// the engine where the micro-kernels are not available: non-x86 builds, CPUs without AVX2+FMA,
// torch.backends.mkldnn disabled, a oneDNN ISA cap below AVX2, a failed float32 probe, and
// MHSA_PORTABLE_GEMM (build or run time). brgemm itself would fall back to cpublas::gemm there,
// a BLAS that may split a tile over its own threads and round differently for another thread
// count. float64 (the gradcheck and reference dtype) always uses the loops.
#include "cpu/tile_gemm.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/cpu_capability.h"
#include "cpu/portable_gemm.h"

#if !defined(MHSA_PORTABLE_GEMM) && (defined(__x86_64__) || defined(_M_X64))
#define MHSA_USE_BRGEMM 1
#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace mhsa::cpu {
namespace {

// The reduction is cut into chunks of at most kChunkK (accumulated into C in order), so that the
// scratch copies of a projection's operands stay a few hundred KiB whatever N*L is. Attention
// tiles never reach it (K is the head dimension or a tile side).
constexpr int64_t kChunkK = 512;

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

#ifdef MHSA_USE_BRGEMM
namespace cpublas = at::native::cpublas;

// cpublas::pack, or the stand-in a test put on this thread (probe_micro_kernel16): how tests
// feed the probe another CPU's packing rules.
thread_local PackFunction pack_stand_in = nullptr;

void pack16(int64_t K, int64_t N, int64_t ld_in, int64_t ld_out, at::ScalarType dtype,
            const void* in, void* out) {
  if (pack_stand_in != nullptr) {
    pack_stand_in(K, N, ld_in, ld_out, dtype, in, out);
  } else {
    cpublas::pack(K, N, ld_in, ld_out, dtype, dtype, in, out);
  }
}

struct Scratch {
  std::vector<float> a, b, c;
  std::vector<uint16_t> a16, b16, plain16;  // bfloat16 or float16 elements, as their bits
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

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
                      Scratch& s) {
  if (alpha == 1.0f) {
    if (beta != 0.0f && beta != 1.0f) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * ldc + j] *= beta;
    }
    return {C, ldc, beta != 0.0f};
  }
  return {sized(s.c, M * N), N, false};
}

void finish_target(const Target& t, int64_t M, int64_t N, float alpha, float beta, float* C,
                   int64_t ldc) {
  if (t.c == C) return;
  for (int64_t i = 0; i < M; ++i) {
    const float* p = t.c + i * t.ldc;
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < N; ++j) c[j] = alpha * p[j];
    } else if (beta == 1.0f) {
      for (int64_t j = 0; j < N; ++j) c[j] += alpha * p[j];
    } else {
      for (int64_t j = 0; j < N; ++j) c[j] = beta * c[j] + alpha * p[j];
    }
  }
}

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(c10::Half v) { return static_cast<float>(v); }

// Rows k0..k0+kc of op(B) (K x N) as a row-major kc x N float block.
template <typename in_t>
void copy_b_block(Trans tb, const in_t* B, int64_t ldb, int64_t k0, int64_t kc, int64_t N,
                  float* out) {
  for (int64_t k = 0; k < kc; ++k) {
    float* o = out + k * N;
    if (tb == Trans::No) {
      const in_t* b = B + (k0 + k) * ldb;
      for (int64_t j = 0; j < N; ++j) o[j] = to_float(b[j]);
    } else {
      for (int64_t j = 0; j < N; ++j) o[j] = to_float(B[j * ldb + k0 + k]);
    }
  }
}

// out[i][k] (row stride ld_out) = in[k][i] (row stride ld_in) for k < rows, i < cols, by
// 16 x 16 blocks so that both sides stay in L1 (a plain loop over the rows of `in` writes a
// column of `out` at a time, one cache line per element: it ran the transposed-A tile GEMMs at
// 60% of the untransposed ones).
template <typename in_t, typename out_t>
void transpose_block(const in_t* in, int64_t ld_in, int64_t rows, int64_t cols, out_t* out,
                     int64_t ld_out) {
  constexpr int64_t kB = 16;
  for (int64_t i0 = 0; i0 < cols; i0 += kB) {
    const int64_t i1 = i0 + kB < cols ? i0 + kB : cols;
    for (int64_t k0 = 0; k0 < rows; k0 += kB) {
      const int64_t k1 = k0 + kB < rows ? k0 + kB : rows;
      for (int64_t i = i0; i < i1; ++i) {
        out_t* o = out + i * ld_out;
        for (int64_t k = k0; k < k1; ++k) {
          if constexpr (std::is_same_v<in_t, out_t>) {
            o[k] = in[k * ld_in + i];  // 16-bit to 16-bit: a copy, no round trip
          } else {
            o[k] = static_cast<out_t>(to_float(in[k * ld_in + i]));
          }
        }
      }
    }
  }
}
// The same transpose for same-type elements of kBytes bytes, as bit copies: full kV x kV
// squares inside the 16 x 16 blocks go through square(in_at, ld_in, out_at, ld_out), an SSE2
// shuffle kernel (no arithmetic, so every bit pattern survives; SSE2 is in every x86-64 CPU,
// the only target of the brgemm build), and the ragged edges are copied element by element.
template <int64_t kBytes, int64_t kV, typename Square>
void blocked_transpose(const void* in_ptr, int64_t ld_in, int64_t rows, int64_t cols, void* out_ptr,
                       int64_t ld_out, Square square) {
  const char* in = static_cast<const char*>(in_ptr);
  char* out = static_cast<char*>(out_ptr);
  auto copy = [&](int64_t k, int64_t i) {
    std::memcpy(out + (i * ld_out + k) * kBytes, in + (k * ld_in + i) * kBytes, kBytes);
  };
  constexpr int64_t kB = 16;
  for (int64_t i0 = 0; i0 < cols; i0 += kB) {
    const int64_t i1 = i0 + kB < cols ? i0 + kB : cols;
    for (int64_t k0 = 0; k0 < rows; k0 += kB) {
      const int64_t k1 = k0 + kB < rows ? k0 + kB : rows;
      int64_t i = i0;
      for (; i + kV <= i1; i += kV) {
        int64_t k = k0;
        for (; k + kV <= k1; k += kV)
          square(in + (k * ld_in + i) * kBytes, ld_in * kBytes, out + (i * ld_out + k) * kBytes,
                 ld_out * kBytes);
        for (; k < k1; ++k)
          for (int64_t ii = i; ii < i + kV; ++ii) copy(k, ii);
      }
      for (; i < i1; ++i)
        for (int64_t k = k0; k < k1; ++k) copy(k, i);
    }
  }
}

inline __m128i load128(const char* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline void store128(char* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// out[i][k] = in[k][i] for 32-bit words (strides in words): floats, or pairs of bfloat16 moved
// as one word (the VNNI packing).
void transpose_words(const void* in, int64_t ld_in, int64_t rows, int64_t cols, void* out,
                     int64_t ld_out) {
  blocked_transpose<4, 4>(
      in, ld_in, rows, cols, out, ld_out, [](const char* a, int64_t lda, char* b, int64_t ldb) {
        __m128 r0 = _mm_castsi128_ps(load128(a)), r1 = _mm_castsi128_ps(load128(a + lda)),
               r2 = _mm_castsi128_ps(load128(a + 2 * lda)),
               r3 = _mm_castsi128_ps(load128(a + 3 * lda));
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        store128(b, _mm_castps_si128(r0));
        store128(b + ldb, _mm_castps_si128(r1));
        store128(b + 2 * ldb, _mm_castps_si128(r2));
        store128(b + 3 * ldb, _mm_castps_si128(r3));
      });
}

// float to float (the float32 GEMMs): 4 x 4 word transposes.
template <>
void transpose_block<float, float>(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                                   float* out, int64_t ld_out) {
  transpose_words(in, ld_in, rows, cols, out, ld_out);
}

// 16-bit to 16-bit (the transposed operands of the bfloat16 and float16 tile GEMMs: P^T dO,
// dS^T Q and the weight gradients): 8 x 8 transposes of 16-bit words; the element-by-element
// loop was an eighth of a bfloat16 training step.
void transpose_halfwords(const void* in, int64_t ld_in, int64_t rows, int64_t cols, void* out,
                         int64_t ld_out) {
  blocked_transpose<2, 8>(
      in, ld_in, rows, cols, out, ld_out, [](const char* a, int64_t lda, char* b, int64_t ldb) {
        __m128i t[8];  // rows 2r and 2r + 1 interleaved: t[2r] columns 0..3, t[2r + 1] 4..7
        for (int r = 0; r < 4; ++r) {
          const __m128i even = load128(a + 2 * r * lda), odd = load128(a + (2 * r + 1) * lda);
          t[2 * r] = _mm_unpacklo_epi16(even, odd);
          t[2 * r + 1] = _mm_unpackhi_epi16(even, odd);
        }
        // u[c] holds columns 2c, 2c + 1 of rows 0..3, u[c + 4] those of rows 4..7.
        const __m128i u[8] = {_mm_unpacklo_epi32(t[0], t[2]), _mm_unpackhi_epi32(t[0], t[2]),
                              _mm_unpacklo_epi32(t[1], t[3]), _mm_unpackhi_epi32(t[1], t[3]),
                              _mm_unpacklo_epi32(t[4], t[6]), _mm_unpackhi_epi32(t[4], t[6]),
                              _mm_unpacklo_epi32(t[5], t[7]), _mm_unpackhi_epi32(t[5], t[7])};
        for (int c = 0; c < 4; ++c) {
          store128(b + 2 * c * ldb, _mm_unpacklo_epi64(u[c], u[c + 4]));
          store128(b + (2 * c + 1) * ldb, _mm_unpackhi_epi64(u[c], u[c + 4]));
        }
      });
}
template <>
void transpose_block<c10::BFloat16, c10::BFloat16>(const c10::BFloat16* in, int64_t ld_in,
                                                   int64_t rows, int64_t cols, c10::BFloat16* out,
                                                   int64_t ld_out) {
  transpose_halfwords(in, ld_in, rows, cols, out, ld_out);
}
template <>
void transpose_block<c10::Half, c10::Half>(const c10::Half* in, int64_t ld_in, int64_t rows,
                                           int64_t cols, c10::Half* out, int64_t ld_out) {
  transpose_halfwords(in, ld_in, rows, cols, out, ld_out);
}

// out[2j] = r0[j], out[2j + 1] = r1[j] (0 where r1 is null) for j < n: two rows of a row-major
// B as one row of VNNI pairs.
template <typename half_t>
void interleave_rows(const half_t* r0, const half_t* r1, int64_t n, half_t* out) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 8 <= n; j += 8) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + j));
    const __m128i b = r1 != nullptr ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + j))
                                    : _mm_setzero_si128();
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j), _mm_unpacklo_epi16(a, b));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j + 8), _mm_unpackhi_epi16(a, b));
  }
#endif
  const half_t zero(0.0f);
  for (; j < n; ++j) {
    out[2 * j] = r0[j];
    out[2 * j + 1] = r1 != nullptr ? r1[j] : zero;
  }
}
// Columns k0..k0+kc of op(A) (M x K) as a row-major M x kc block (ld kc).
template <typename in_t, typename out_t>
void copy_a_block(Trans ta, const in_t* A, int64_t lda, int64_t k0, int64_t kc, int64_t M,
                  int64_t ld_out, out_t* out) {
  if (ta == Trans::No) {
    for (int64_t i = 0; i < M; ++i) {
      const in_t* a = A + i * lda + k0;
      out_t* o = out + i * ld_out;
      if constexpr (std::is_same_v<in_t, out_t>) {
        std::memcpy(o, a, static_cast<size_t>(kc) * sizeof(out_t));  // 16-bit: a copy
      } else {
        for (int64_t k = 0; k < kc; ++k) o[k] = static_cast<out_t>(to_float(a[k]));
      }
    }
  } else {
    transpose_block(A + k0 * lda, lda, kc, M, out, ld_out);
  }
}

// float32 (or bfloat16 values computed in float32) on the float32 micro-kernel.
template <typename in_t>
void brgemm_f32(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const in_t* A,
                int64_t lda, const in_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr bool kFloat = std::is_same_v<in_t, float>;
  Scratch& s = scratch();
  const Target t = prepare_target(M, N, alpha, beta, C, ldc, s);
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const float* a = nullptr;
    int64_t ld_a = 0;
    if constexpr (kFloat) {
      if (ta == Trans::No) {
        a = A + k0;
        ld_a = lda;
      }
    }
    if (a == nullptr) {
      float* buf = sized(s.a, M * kc);
      copy_a_block(ta, A, lda, k0, kc, M, kc, buf);
      a = buf;
      ld_a = kc;
    }
    const float* b = nullptr;
    int64_t ld_b = 0;
    if constexpr (kFloat) {
      if (tb == Trans::No) {
        b = B + k0 * ldb;
        ld_b = ldb;
      }
    }
    if (b == nullptr) {
      float* buf = sized(s.b, kc * N);
      copy_b_block(tb, B, ldb, k0, kc, N, buf);
      b = buf;
      ld_b = N;
    }
    const bool add_C = k0 > 0 || t.add_first;
    cpublas::brgemm(M, N, kc, ld_a, ld_b, t.ldc, add_C, a, b, t.c, false);
  }
  finish_target(t, M, N, alpha, beta, C, ldc);
}

template <typename half_t>
void pack_rows_as_columns(const half_t* rows, int64_t ld, int64_t nb, int64_t K, Layout16 layout,
                          half_t* out, Scratch& s);

// Rows k0..k0+kc of op(B) (K x N), columns j0..j0+nb (nb <= kBlockN), as one block of the
// 16-bit micro-kernel's B in its layout, kc rounded up to an even number of rows with zeros
// (VNNI pairs need it; the other layouts get the same shapes, so one code path serves all).
// A transposed B (rows of B^T, e.g. a weight matrix for x W^T) packs as cheaply as a plain one.
template <typename half_t>
void pack_b_block(Trans tb, const half_t* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0,
                  int64_t nb, Layout16 layout, half_t* pb, Scratch& s) {
  const half_t zero(0.0f);
  const int64_t kp = (kc + 1) / 2 * 2;
  auto b_at = [&](int64_t k, int64_t j) -> half_t {
    if (k >= kc) return zero;
    return tb == Trans::No ? B[(k0 + k) * ldb + j0 + j] : B[(j0 + j) * ldb + k0 + k];
  };
  if (tb == Trans::Yes && kp == kc) {
    pack_rows_as_columns(B + j0 * ldb + k0, ldb, nb, kc, layout, pb, s);
  } else if (layout != Layout16::Vnni) {
    // Row-major kp x nb: the plain layout itself, or cpublas::pack's input.
    half_t* plain = layout == Layout16::Plain ? pb : sized16<half_t>(s.plain16, kp * nb);
    if (tb == Trans::No) {
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(plain + k * nb, B + (k0 + k) * ldb + j0, static_cast<size_t>(nb) * 2);
    } else {
      transpose_block(B + j0 * ldb + k0, ldb, nb, kc, plain, nb);
    }
    for (int64_t k = kc; k < kp; ++k)
      for (int64_t j = 0; j < nb; ++j) plain[k * nb + j] = zero;
    if (layout == Layout16::Pack)
      pack16(kp, nb, nb, packed_block_shape(layout, kc, nb).ld, dtype16<half_t>(), plain, pb);
  } else if (tb == Trans::No) {
    for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
      const half_t* r0 = B + (k0 + 2 * k2) * ldb + j0;
      interleave_rows(r0, 2 * k2 + 1 < kc ? r0 + ldb : nullptr, nb, pb + k2 * 2 * nb);
    }
  } else {
    for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
      half_t* row = pb + k2 * 2 * nb;
      for (int64_t j = 0; j < nb; ++j) {
        row[2 * j] = b_at(2 * k2, j);
        row[2 * j + 1] = b_at(2 * k2 + 1, j);
      }
    }
  }
}

// bfloat16 or float16 on its 16-bit micro-kernel, K in chunks of kChunkK, N in blocks of
// kBlockN: block_at(k0, kc, j0, nb) gives the packed B block of those rows and columns (packed on
// the spot for a plain call, taken from a PackedB16 for a prepacked one: the same bits either
// way).
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

template <typename half_t>
void brgemm16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
              int64_t lda, const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
              Layout16 layout) {
  Scratch& s = scratch();
  brgemm16_blocks(ta, M, N, K, alpha, A, lda, beta, C, ldc, layout, s,
                  [&](int64_t k0, int64_t kc, int64_t j0, int64_t nb) {
                    half_t* pb =
                        sized16<half_t>(s.b16, packed_block_shape(layout, kc, nb).elements);
                    pack_b_block(tb, B, ldb, k0, kc, j0, nb, layout, pb, s);
                    return static_cast<const half_t*>(pb);
                  });
}

// B^T in the 16-bit micro-kernel's layout: column c of B is row c of `rows` (stride ld), K long
// (even), nb <= kBlockN columns. The plain layout is a transpose of 16-bit words (cpublas::pack
// starts from it); the VNNI layout is a transpose of 32-bit words: packed row d/2 holds the
// pairs (rows[c][d], rows[c][d+1]) for c = 0..nb, so each pair moves as one word (it was a
// per-element scatter that cost as much as the GEMM it fed).
template <typename half_t>
void pack_rows_as_columns(const half_t* rows, int64_t ld, int64_t nb, int64_t K, Layout16 layout,
                          half_t* out, Scratch& s) {
  if (layout == Layout16::Plain) {
    transpose_block(rows, ld, nb, K, out, nb);
  } else if (layout == Layout16::Pack) {
    half_t* plain = sized16<half_t>(s.plain16, K * nb);
    transpose_block(rows, ld, nb, K, plain, nb);
    pack16(K, nb, nb, packed_block_shape(layout, K, nb).ld, dtype16<half_t>(), plain, out);
  } else if (K % 2 == 0 && ld % 2 == 0) {
    transpose_words(rows, ld / 2, nb, K / 2, out, nb);
  } else {
    for (int64_t c = 0; c < nb; ++c) {
      const half_t* r = rows + c * ld;
      for (int64_t d = 0; d < K; ++d) out[(d / 2) * 2 * nb + 2 * c + d % 2] = r[d];
    }
  }
}

// What the micro-kernels of this machine can do (detect_support), and why not where the CPU's
// flags promised more.
struct Support {
  bool f32 = false;                       // float32 micro-kernel
  bool f32_avx512 = false;                // ... oneDNN's AVX-512 one
  bool bf16 = false;                      // bfloat16 micro-kernel ...
  Layout16 bf16_layout = Layout16::Vnni;  // ... and its B layout
  bool f16 = false;                       // float16 micro-kernel (AVX512-FP16, AMX-FP16) ...
  Layout16 f16_layout = Layout16::Plain;  // ... and its B layout
  bool amx = false;          // the CPU has a matrix unit, whose state a 16-bit kernel may hold
  std::string loops_reason;  // why float32 runs on the portable loops
  std::string failures;      // probes that failed where the CPU flags promise the kernel (warned)
  std::string notes;         // probes that failed where oneDNN promises nothing (reported only)
};

// How far a oneDNN ISA cap (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) leaves the
// micro-kernels. PyTorch's brgemm runs float32 on oneDNN from avx2 up and bfloat16 from
// avx512_core up; below that float32 quietly falls back to cpublas::gemm (a BLAS that may split
// a tile over threads), so a cap under avx2, or one this code cannot read, means the loops.
enum class IsaCap { Loops, Avx2, Avx512Core };

IsaCap onednn_isa_cap(std::string* text) {
  const char* env = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (env == nullptr) env = std::getenv("DNNL_MAX_CPU_ISA");
  if (env == nullptr) return IsaCap::Avx512Core;
  std::string cap(env);
  *text = cap;
  for (char& c : cap) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (cap == "all" || cap == "default") return IsaCap::Avx512Core;
  if (cap.rfind("avx512_core", 0) == 0 || cap.rfind("avx10", 0) == 0) return IsaCap::Avx512Core;
  if (cap.rfind("avx2", 0) == 0) return IsaCap::Avx2;
  return IsaCap::Loops;
}

std::string shape_text(int64_t M, int64_t N, int64_t K, const char* operands) {
  return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (" +
         operands + ")";
}

// Small-integer operands of an M x K by K x N product, plain and transposed, and its exact
// result (small integers: exact in any summation order).
template <typename T>
struct ProbeCase {
  std::vector<T> a, at, b, bt;
  std::vector<float> want;
  ProbeCase(int64_t M, int64_t N, int64_t K)
      : a(M * K), at(K * M), b(K * N), bt(N * K), want(M * N) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) {
        a[i * K + k] = T(static_cast<float>((i * K + k) % 5) - 2.0f);
        at[k * M + i] = a[i * K + k];
      }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        b[k * N + n] = T(static_cast<float>((k * 3 + n) % 7) - 3.0f);
        bt[n * K + k] = b[k * N + n];
      }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          want[i * N + n] += static_cast<float>(a[i * K + k]) * static_cast<float>(b[k * N + n]);
  }
};

struct ProbeShape {
  int64_t M, N, K;
};
// Odd shapes, tails around 16 and the 64-wide blocks, K odd and even.
constexpr ProbeShape kProbeShapes[] = {
    {2, 16, 4}, {5, 17, 38}, {3, 64, 64}, {64, 130, 33}, {7, 2, 6}};

// gemm(ta, tb, case, C) over the probe shapes with plain and transposed operands, compared with
// the exact results: "" when all are right, else what went wrong first (shape, operands, and
// the exception text where the micro-kernel threw).
template <typename T, typename Gemm>
std::string probe_products(const char* what, Gemm gemm) {
  std::string where;
  try {
    for (const ProbeShape& sh : kProbeShapes) {
      const ProbeCase<T> pc(sh.M, sh.N, sh.K);
      std::vector<float> c(sh.M * sh.N);
      for (const char* operands : {"A, B", "A, B transposed", "A transposed, B"}) {
        where = shape_text(sh.M, sh.N, sh.K, operands);
        std::fill(c.begin(), c.end(), 1.0f);
        gemm(operands, sh, pc, c);
        if (c != pc.want) return std::string(what) + " probe gave wrong products at " + where;
      }
    }
  } catch (const std::exception& e) {
    return std::string(what) + " probe failed at " + where + ": " + e.what();
  }
  return "";
}

// MHSA_TEST_FAIL_PROBE=float32,bfloat16-vnni,... makes those probes throw, so that tests see
// what a CPU whose probe fails gets: the fallback, the warning, the report.
void injected_probe_failure(const std::string& probe) {
  const char* env = std::getenv("MHSA_TEST_FAIL_PROBE");
  if (env == nullptr) return;
  const std::string list = std::string(",") + env + ",";
  if (list.find("," + probe + ",") != std::string::npos)
    throw std::runtime_error("failure injected by MHSA_TEST_FAIL_PROBE");
}

std::string probe_f32() {
  return probe_products<float>("float32", [](const std::string& ops, const ProbeShape& sh,
                                             const ProbeCase<float>& pc, std::vector<float>& c) {
    injected_probe_failure("float32");
    if (ops == "A, B")
      brgemm_f32(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.b.data(), sh.N,
                 0.0f, c.data(), sh.N);
    else if (ops == "A, B transposed")
      brgemm_f32(Trans::No, Trans::Yes, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.bt.data(),
                 sh.K, 0.0f, c.data(), sh.N);
    else
      brgemm_f32(Trans::Yes, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.at.data(), sh.M, pc.b.data(),
                 sh.N, 0.0f, c.data(), sh.N);
  });
}

// The 16-bit products through this file's micro-kernel path in one B layout, and the
// score-block packing (B given as rows, even K, one block of columns).
template <typename half_t>
std::string probe16(Layout16 layout) {
  std::string failure = probe_products<half_t>(
      layout16_name(layout), [layout](const std::string& ops, const ProbeShape& sh,
                                      const ProbeCase<half_t>& pc, std::vector<float>& c) {
        injected_probe_failure((std::is_same_v<half_t, c10::BFloat16> ? "bfloat16-" : "float16-") +
                               std::string(layout16_name(layout)));
        if (ops == "A, B")
          brgemm16(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.b.data(),
                   sh.N, 0.0f, c.data(), sh.N, layout);
        else if (ops == "A, B transposed")
          brgemm16(Trans::No, Trans::Yes, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.bt.data(),
                   sh.K, 0.0f, c.data(), sh.N, layout);
        else
          brgemm16(Trans::Yes, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.at.data(), sh.M, pc.b.data(),
                   sh.N, 0.0f, c.data(), sh.N, layout);
      });
  if (failure.empty()) {
    failure = probe_products<half_t>(
        layout16_name(layout), [layout](const std::string& ops, const ProbeShape& sh,
                                        const ProbeCase<half_t>& pc, std::vector<float>& c) {
          if (ops != "A, B" || sh.K % 2 != 0 || sh.N > kBlockN) {
            c = pc.want;  // not a score-block shape
            return;
          }
          const PackedBlockShape shape = packed_block_shape(layout, sh.K, sh.N);
          std::vector<half_t> packed(shape.elements);
          pack_rows_as_columns(pc.bt.data(), sh.K, sh.N, sh.K, layout, packed.data(), scratch());
          cpublas::brgemm(sh.M, sh.N, sh.K, sh.K, shape.ld, sh.N, false, pc.a.data(), packed.data(),
                          c.data(), true);
        });
  }
  try {
    cpublas::brgemm_release(true);
  } catch (const std::exception&) {
  }
  return failure;
}

// The first layout of `order` whose probe passes; the failures of the others go to `tried`.
template <typename half_t>
bool first_working_layout(std::initializer_list<Layout16> order, Layout16* found,
                          std::string* tried) {
  for (Layout16 layout : order) {
    const std::string failure = probe16<half_t>(layout);
    if (failure.empty()) {
      *found = layout;
      return true;
    }
    *tried += (tried->empty() ? "" : "; ") + failure;
  }
  return false;
}

// __builtin_cpu_supports takes only string literals, hence a macro.
#define MHSA_CPU_HAS(feature) (__builtin_cpu_init(), __builtin_cpu_supports(feature) != 0)

// The matrix-unit flags, which __builtin_cpu_supports of older compilers does not know: CPUID
// leaf 7, EDX bit 22 (AMX-BF16) and leaf 7 subleaf 1, EAX bit 21 (AMX-FP16).
bool cpu_has_amx(bool fp16) {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  // __get_cpuid_count checks that leaf 7 exists; EAX of subleaf 0 is the last subleaf.
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  if (!fp16) return (edx >> 22) & 1u;
  if (eax < 1 || __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (eax >> 21) & 1u;
}

bool could_pack(at::ScalarType dtype) {
  try {
    return cpublas::could_pack(dtype);
  } catch (const std::exception&) {
    return false;
  }
}

void add_failure(std::string& to, const char* dtype, const std::string& failure,
                 const char* fallback) {
  to += std::string(to.empty() ? "" : " | ") + dtype + ": " + failure + " (its tiles run on " +
        fallback + ")";
}

Support detect_support() {
  Support s;
  std::string cap_text;
  const IsaCap cap = onednn_isa_cap(&cap_text);
  if (cap == IsaCap::Loops) {
    s.loops_reason = "oneDNN ISA cap " + cap_text + " is below avx2";
    return s;
  }
  if (!MHSA_CPU_HAS("avx2") || !MHSA_CPU_HAS("fma")) {
    s.loops_reason = "this CPU has no AVX2+FMA";
    return s;
  }
  const std::string f32_failure = probe_f32();
  s.f32 = f32_failure.empty();
  if (!s.f32) {
    s.loops_reason = "the float32 probe failed";
    add_failure(s.failures, "float32", f32_failure, "the portable loops");
  }
  // oneDNN's avx512_core: what its 16-bit micro-kernels need (AVX512-BF16, AVX512-FP16 and
  // AMX are used on top where present).
  const bool avx512_core = MHSA_CPU_HAS("avx512f") && MHSA_CPU_HAS("avx512bw") &&
                           MHSA_CPU_HAS("avx512vl") && MHSA_CPU_HAS("avx512dq") &&
                           cap == IsaCap::Avx512Core;
  s.f32_avx512 = s.f32 && avx512_core;
  if (!avx512_core) return s;
  const char* fallback = s.f32 ? "the float32 micro-kernel" : "the portable loops";
  std::string tried;
  if (could_pack(at::kBFloat16)) {
    s.bf16 = first_working_layout<c10::BFloat16>({Layout16::Pack, Layout16::Vnni, Layout16::Plain},
                                                 &s.bf16_layout, &tried);
  } else {
    s.bf16 = first_working_layout<c10::BFloat16>({Layout16::Vnni, Layout16::Plain}, &s.bf16_layout,
                                                 &tried);
  }
  s.amx = cpu_has_amx(false) || cpu_has_amx(true);
  if (!s.bf16 && tried.find("oneDNN ukernel is enabled") != std::string::npos) {
    // A torch built without oneDNN's micro-kernels: its brgemm would run float32 tiles on
    // cpublas::gemm, a BLAS that may split them over threads (the float32 probe cannot tell,
    // its products are exact either way), so float32 goes to the loops too.
    s.f32 = s.f32_avx512 = false;
    s.loops_reason = "this torch has no oneDNN micro-kernels";
    return s;
  }
  if (!s.bf16 && (MHSA_CPU_HAS("avx512bf16") || cpu_has_amx(false)))
    add_failure(s.failures, "bfloat16", tried, fallback);
  // float16: without AVX512-FP16 (which AMX-FP16 CPUs have too) there is no float16 kernel to
  // probe: brgemm would throw after setting up state whose memory would stay. With AMX-FP16
  // the kernel is promised; on AVX512-FP16 alone oneDNN documents no B layout for this API,
  // so a failure there is reported, not warned about.
  if (MHSA_CPU_HAS("avx512fp16")) {
    tried.clear();
    if (could_pack(at::kHalf)) {
      s.f16 = first_working_layout<c10::Half>({Layout16::Pack, Layout16::Plain, Layout16::Vnni},
                                              &s.f16_layout, &tried);
    } else {
      s.f16 =
          first_working_layout<c10::Half>({Layout16::Plain, Layout16::Vnni}, &s.f16_layout, &tried);
    }
    if (!s.f16) add_failure(cpu_has_amx(true) ? s.failures : s.notes, "float16", tried, fallback);
  }
  return s;
}

// MHSA_PORTABLE_GEMM=1 asks for the portable loops (scripts/sanitize.sh runs the GoogleTest
// suite both ways: the loops let ASan see every tile operand access).
bool portable_requested() {
  static const bool requested = [] {
    const char* env = std::getenv("MHSA_PORTABLE_GEMM");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return requested;
}

// A 16-bit type's micro-kernel on this machine: whether it runs, and its B layout.
struct Kernel16 {
  bool runs;
  Layout16 layout;
};
template <typename half_t>
Kernel16 kernel16(const Support& s);

const Support& detected_support() {
  static const Support detected = detect_support();
  return detected;
}

// What the micro-kernels can do now: nothing while torch.backends.mkldnn is disabled (checked
// on every call: brgemm checks it too) or MHSA_PORTABLE_GEMM=1, else what was detected the
// first time.
const Support& support() {
  static const Support none;
  if (portable_requested() || !at::globalContext().userEnabledMkldnn()) return none;
  return detected_support();
}

template <typename half_t>
Kernel16 kernel16(const Support& s) {
  if constexpr (std::is_same_v<half_t, c10::BFloat16>) {
    return {s.bf16, s.bf16_layout};
  } else {
    return {s.f16, s.f16_layout};
  }
}

#endif  // MHSA_USE_BRGEMM

}  // namespace

#ifdef MHSA_USE_BRGEMM
namespace {

// The scores S[i - i0][j - j0] = scale * q_i . k_j on the fixed grid of score blocks (see
// tile_gemm.h), for either 16-bit type on its micro-kernel.
template <typename half_t>
void score_blocks16(ScoreOperand<half_t> q, ScoreOperand<half_t> k, int64_t K, float scale,
                    int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                    Layout16 layout) {
  static_assert(kScoreBlock == kBlockN, "a score block's keys are one packed B block");
  if (i1 <= i0 || j1 <= j0) return;
  Scratch& s = scratch();
  half_t* packed = sized16<half_t>(s.b16, packed_block_shape(layout, K, kScoreBlock).elements);
  float* block = sized(s.c, kScoreBlock * kScoreBlock);
  for (int64_t kb = j0 / kScoreBlock * kScoreBlock; kb < j1; kb += kScoreBlock) {
    const int64_t nb = k.length - kb < kScoreBlock ? k.length - kb : kScoreBlock;
    pack_rows_as_columns(k.data + kb * k.ld, k.ld, nb, K, layout, packed, s);
    const int64_t c0 = j0 > kb ? j0 : kb, c1 = j1 < kb + nb ? j1 : kb + nb;
    for (int64_t qb = i0 / kScoreBlock * kScoreBlock; qb < i1; qb += kScoreBlock) {
      const int64_t mb = q.length - qb < kScoreBlock ? q.length - qb : kScoreBlock;
      // The one call that computes these scores, whichever tile asked for them.
      cpublas::brgemm(mb, nb, K, q.ld, packed_block_shape(layout, K, nb).ld, kScoreBlock, false,
                      q.data + qb * q.ld, packed, block, true);
      const int64_t r0 = i0 > qb ? i0 : qb, r1 = i1 < qb + mb ? i1 : qb + mb;
      for (int64_t i = r0; i < r1; ++i) {
        const float* b = block + (i - qb) * kScoreBlock;
        float* out = S + (i - i0) * lds;
        for (int64_t j = c0; j < c1; ++j) out[j - j0] = scale * b[j - kb];
      }
    }
  }
}

}  // namespace
#endif  // MHSA_USE_BRGEMM

bool score_blocks_available(c10::ScalarType dtype, int64_t K) {
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  const bool kernel = dtype == c10::ScalarType::BFloat16 ? s.bf16
                      : dtype == c10::ScalarType::Half   ? s.f16
                                                         : false;
  // An even head dimension: Q is read in place, in VNNI pairs where that is the layout.
  return kernel && K > 0 && K % 2 == 0 && K <= kChunkK;
#else
  (void)dtype, (void)K;
  return false;
#endif
}

namespace {

// score_blocks for either 16-bit type: checked, on that type's micro-kernel and B layout.
template <typename half_t>
void checked_score_blocks(ScoreOperand<half_t> q, ScoreOperand<half_t> k, int64_t K, float scale,
                          int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds) {
  const char* name = std::is_same_v<half_t, c10::BFloat16> ? "bfloat16" : "float16";
#ifdef MHSA_USE_BRGEMM
  TORCH_CHECK(score_blocks_available(dtype16<half_t>(), K), "mhsa: ", name,
              " score blocks are not available");
  score_blocks16(q, k, K, scale, i0, i1, j0, j1, S, lds, kernel16<half_t>(support()).layout);
#else
  (void)q, (void)k, (void)K, (void)scale, (void)i0, (void)i1, (void)j0, (void)j1, (void)S,
      (void)lds;
  TORCH_CHECK(false, "mhsa: ", name, " score blocks are not available in this build");
#endif
}

}  // namespace

void score_blocks(ScoreOperand<c10::BFloat16> q, ScoreOperand<c10::BFloat16> k, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds);
}

void score_blocks(ScoreOperand<c10::Half> q, ScoreOperand<c10::Half> k, int64_t K, float scale,
                  int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds);
}

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

void transpose_floats(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                      int64_t ld_out) {
#ifdef MHSA_USE_BRGEMM
  transpose_words(in, ld_in, rows, cols, out, ld_out);
#else
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t i = 0; i < cols; ++i) out[i * ld_out + k] = in[k * ld_in + i];
#endif
}

const char* tile_gemm_backend() {
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  if (s.f32) {
    thread_local std::string text;
    text = "onednn-brgemm(float32";
    text += s.bf16 ? std::string(",bfloat16-") + layout16_name(s.bf16_layout)
                   : std::string(";bfloat16-as-float32");
    text += s.f16 ? std::string(",float16-") + layout16_name(s.f16_layout)
                  : std::string(";float16-as-float32");
    text += ")";
    return text.c_str();
  }
#endif
  // The loops' instruction-set copy: vectorized with FMA from avx2 up (and on aarch64's NEON).
  thread_local std::string loops;
  loops = std::string("portable-loops-") + cpu_capability_name(cpu_capability());
  return loops.c_str();
}

std::string tile_gemm_loops_reason() {
#if defined(MHSA_USE_BRGEMM)
  if (portable_requested()) return "MHSA_PORTABLE_GEMM=1";
  if (!at::globalContext().userEnabledMkldnn()) return "torch.backends.mkldnn is disabled";
  return detected_support().loops_reason;
#elif defined(MHSA_PORTABLE_GEMM)
  return "built with MHSA_PORTABLE_GEMM";
#else
  return "PyTorch has the oneDNN micro-kernels on x86-64 only";
#endif
}

#ifdef MHSA_USE_BRGEMM
namespace {
// A probe report of the detection, none while the micro-kernels are switched off.
std::string probe_report(std::string Support::*field) {
  if (portable_requested() || !at::globalContext().userEnabledMkldnn()) return "";
  return detected_support().*field;
}
}  // namespace
#endif

std::string tile_gemm_probe_failures() {
#ifdef MHSA_USE_BRGEMM
  return probe_report(&Support::failures);
#else
  return "";
#endif
}

std::string tile_gemm_probe_notes() {
#ifdef MHSA_USE_BRGEMM
  return probe_report(&Support::notes);
#else
  return "";
#endif
}

void warn_if_tile_engine_degraded() {
  static const bool warned = [] {
    const std::string failures = tile_gemm_probe_failures();
    if (!failures.empty())
      TORCH_WARN(
          "mhsa: a micro-kernel this CPU's flags promise failed its start-up probe and "
          "is not used, so mhsa runs slower than it should here: ",
          failures,
          ". torch.ops.mhsa._backend_info() reports it; please report it with that text.");
    return true;
  }();
  (void)warned;
}

std::string probe_micro_kernel_f32() {
#ifdef MHSA_USE_BRGEMM
  return probe_f32();
#else
  return "this build has no micro-kernels";
#endif
}

std::string probe_micro_kernel16(c10::ScalarType dtype, Layout16 layout, PackFunction pack) {
  TORCH_CHECK(dtype == c10::ScalarType::BFloat16 || dtype == c10::ScalarType::Half,
              "probe_micro_kernel16: dtype must be bfloat16 or float16, got ", dtype);
#ifdef MHSA_USE_BRGEMM
  struct StandIn {
    explicit StandIn(PackFunction p) { pack_stand_in = p; }
    ~StandIn() { pack_stand_in = nullptr; }
  } stand_in(pack);
  return dtype == c10::ScalarType::BFloat16 ? probe16<c10::BFloat16>(layout)
                                            : probe16<c10::Half>(layout);
#else
  (void)layout, (void)pack;
  return "this build has no micro-kernels";
#endif
}

}  // namespace mhsa::cpu
