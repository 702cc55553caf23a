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
// The portable loops below are the engine where the micro-kernels are not available: non-x86
// builds (PyTorch has the oneDNN micro-kernels on x86-64 only), CPUs without AVX2+FMA,
// torch.backends.mkldnn disabled, a oneDNN ISA cap below AVX2 (ONEDNN_MAX_CPU_ISA) or a torch built
// without them, and -DMHSA_PORTABLE_GEMM=ON at build time or MHSA_PORTABLE_GEMM=1 at run time
// (loops whose every operand access ASan sees). They are deterministic and single-threaded, like
// the micro-kernels. brgemm itself would fall back to cpublas::gemm in those cases, i.e. to a BLAS
// that may split a tile over its own threads (and round differently for another thread count) when
// called outside an OpenMP region, which is why it is not called then. float64 (the gradcheck and
// reference dtype, not a fast path) always uses the loops: brgemm has no float64 kernel.
#include "cpu/tile_gemm.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if !defined(MHSA_PORTABLE_GEMM) && (defined(__x86_64__) || defined(_M_X64))
#define MHSA_USE_BRGEMM 1
#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>
#include <immintrin.h>
#endif

namespace mhsa::cpu {
namespace {

// The reduction is cut into chunks of at most kChunkK (accumulated into C in order), so that the
// scratch copies of a projection's operands stay a few hundred KiB whatever N*L is. Attention
// tiles never reach it (K is the head dimension or a tile side).
constexpr int64_t kChunkK = 512;

// Portable fallback and reference: plain loops, accumulating in the output type, with the
// micro-kernel path's summation structure: each K chunk's products are summed from zero and
// the chunk sums then added to C in order (alpha == 1), or summed apart and combined as
// beta * C + alpha * sum (the scratch target of prepare_target/finish_target). A running sum
// that starts from C instead lost the cancellations inside a chunk: dQ += dS K_j of a nearly
// saturated softmax row, whose terms cancel, came out 40x less accurate than the micro-kernels'.
//
// float products are fused multiply-adds, as in the micro-kernels (with both, these loops give the
// micro-kernels' bits on the saturated-softmax tests; without FMA hardware std::fma is slow but
// exact). float64 (the gradcheck and reference dtype, which has no micro-kernel) keeps the plain
// multiply-add, which the compiler vectorizes.
template <typename acc_t>
inline acc_t multiply_add(acc_t a, acc_t b, acc_t acc) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return std::fma(a, b, acc);
  } else {
    return acc + a * b;
  }
}

template <typename in_t, typename acc_t>
void reference_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, acc_t alpha, const in_t* A,
                    int64_t lda, const in_t* B, int64_t ldb, acc_t beta, acc_t* C, int64_t ldc) {
  const bool direct = alpha == acc_t(1);
  std::vector<acc_t> chunk(static_cast<size_t>(N)), total(direct ? 0 : static_cast<size_t>(N));
  for (int64_t i = 0; i < M; ++i) {
    acc_t* c = C + i * ldc;
    if (direct) {
      for (int64_t j = 0; j < N; ++j) c[j] = beta == acc_t(0) ? acc_t(0) : beta * c[j];
    } else {
      std::fill(total.begin(), total.end(), acc_t(0));
    }
    acc_t* target = direct ? c : total.data();
    for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
      const int64_t k1 = K - k0 < kChunkK ? K : k0 + kChunkK;
      std::fill(chunk.begin(), chunk.end(), acc_t(0));
      for (int64_t k = k0; k < k1; ++k) {
        // No shortcut for a == 0: 0 * NaN must stay NaN, as in the micro-kernels (a NaN value
        // row behind a zero probability gives NaN outputs, as in nn.MultiheadAttention).
        const acc_t a = static_cast<acc_t>(ta == Trans::No ? A[i * lda + k] : A[k * lda + i]);
        if (tb == Trans::No) {
          const in_t* b = B + k * ldb;
          for (int64_t j = 0; j < N; ++j)
            chunk[j] = multiply_add(a, static_cast<acc_t>(b[j]), chunk[j]);
        } else {
          for (int64_t j = 0; j < N; ++j)
            chunk[j] = multiply_add(a, static_cast<acc_t>(B[j * ldb + k]), chunk[j]);
        }
      }
      for (int64_t j = 0; j < N; ++j) target[j] += chunk[j];
    }
    if (!direct) {
      for (int64_t j = 0; j < N; ++j) {
        c[j] = beta == acc_t(0)   ? alpha * total[j]
               : beta == acc_t(1) ? c[j] + alpha * total[j]
                                  : beta * c[j] + alpha * total[j];
      }
    }
  }
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

// bfloat16 B operands are packed and multiplied in blocks of at most 64 columns (the AMX packing
// of oneDNN refused wider blocks on a Sapphire Rapids machine).
constexpr int64_t kBlockN = 64;

// Room for one packed B block of K rows: cpublas::pack's AMX layout may pad the rows to AMX's
// 32-element K tiles and the columns to the full block, so each block gets that much space.
inline int64_t packed_block_size(int64_t K) { return (K + 31) / 32 * 32 * kBlockN; }

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

// How the 16-bit micro-kernels take their B operand, found by the start-up probe: VNNI pairs
// (consecutive k interleaved: B_vnni[k / 2][n][k % 2] = B[k][n]; bfloat16 on AVX-512),
// cpublas::pack's layout (the matrix unit: AMX, AMX-FP16), or plain row-major (float16 on
// AVX512-FP16, whose kernel converts B rows to fp32 as it loads them).
enum class Layout16 { Vnni, Pack, Plain };

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
      cpublas::pack(kp, nb, nb, nb, dtype16<half_t>(), dtype16<half_t>(), plain, pb);
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
                     int64_t lda, float beta, float* C, int64_t ldc, Scratch& s, BlockAt block_at) {
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
      cpublas::brgemm(M, nb, kp, ld_a, nb, t.ldc, add_C, a, pb, t.c + j0, true);
    }
  }
  finish_target(t, M, N, alpha, beta, C, ldc);
}

template <typename half_t>
void brgemm16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
              int64_t lda, const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
              Layout16 layout) {
  Scratch& s = scratch();
  brgemm16_blocks(ta, M, N, K, alpha, A, lda, beta, C, ldc, s,
                  [&](int64_t k0, int64_t kc, int64_t j0, int64_t nb) {
                    half_t* pb = sized16<half_t>(s.b16, packed_block_size((kc + 1) / 2 * 2));
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
    cpublas::pack(K, nb, nb, nb, dtype16<half_t>(), dtype16<half_t>(), plain, out);
  } else if (K % 2 == 0 && ld % 2 == 0) {
    transpose_words(rows, ld / 2, nb, K / 2, out, nb);
  } else {
    for (int64_t c = 0; c < nb; ++c) {
      const half_t* r = rows + c * ld;
      for (int64_t d = 0; d < K; ++d) out[(d / 2) * 2 * nb + 2 * c + d % 2] = r[d];
    }
  }
}

// What the micro-kernels of this machine can do (detect_support).
struct Support {
  bool f32 = false;                       // float32 micro-kernel ...
  bool bf16 = false;                      // bfloat16 micro-kernel ...
  Layout16 bf16_layout = Layout16::Vnni;  // ... and its B layout
  bool f16 = false;                       // float16 micro-kernel (AVX512-FP16, AMX-FP16) ...
  Layout16 f16_layout = Layout16::Plain;  // ... and its B layout
};

// How far a oneDNN ISA cap (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) leaves the
// micro-kernels. PyTorch's brgemm runs float32 on oneDNN's effective ISA from avx2 up and
// bfloat16 from avx512_core up; below that float32 quietly falls back to cpublas::gemm (a BLAS
// that may split a tile over threads), so a cap under avx2, or one this code cannot read, means
// the portable loops. A cap at avx2 (what an AVX2-only CPU has; scripts/bench --emulate-avx2
// uses it) keeps the float32 micro-kernel. From avx512_core up the 16-bit kernels are probed as
// without a cap: brgemm throws where the cap removed them.
enum class IsaCap { Loops, Avx2, Avx512Core };

IsaCap onednn_isa_cap() {
  const char* env = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (env == nullptr) env = std::getenv("DNNL_MAX_CPU_ISA");
  if (env == nullptr) return IsaCap::Avx512Core;
  std::string cap(env);
  for (char& c : cap) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (cap == "all" || cap == "default") return IsaCap::Avx512Core;
  if (cap.rfind("avx512_core", 0) == 0 || cap.rfind("avx10", 0) == 0) return IsaCap::Avx512Core;
  if (cap.rfind("avx2", 0) == 0) return IsaCap::Avx2;
  return IsaCap::Loops;
}

// A few 16-bit products through the micro-kernel path of this file in one B layout (odd
// shapes, tails, plain and transposed B, the score-block packing), compared with exact results
// (small integers: exact in any order). Tells whether this torch and CPU have the micro-kernel
// at all (brgemm throws without it: bfloat16 needs oneDNN's avx512_core, float16 its
// avx512_core_fp16) and guards the layouts on machines this code could not be tried on (the
// float16 kernel of AVX512-FP16, the matrix units): any mismatch, and that dtype's tiles are
// computed on the float32 micro-kernel instead.
template <typename half_t>
bool micro_kernel16_works(Layout16 layout) {
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{2, 16, 4}, {5, 17, 38}, {3, 64, 64}, {64, 130, 33}};
  try {
    for (const Shape& sh : shapes) {
      std::vector<half_t> a(sh.M * sh.K), at(sh.K * sh.M), b(sh.K * sh.N), bt(sh.N * sh.K);
      for (int64_t i = 0; i < sh.M; ++i) {
        for (int64_t k = 0; k < sh.K; ++k) {
          a[i * sh.K + k] = half_t(static_cast<float>((i * sh.K + k) % 5) - 2.0f);
          at[k * sh.M + i] = a[i * sh.K + k];
        }
      }
      for (int64_t k = 0; k < sh.K; ++k) {
        for (int64_t n = 0; n < sh.N; ++n) {
          b[k * sh.N + n] = half_t(static_cast<float>((k * 3 + n) % 7) - 3.0f);
          bt[n * sh.K + k] = b[k * sh.N + n];
        }
      }
      std::vector<float> c(sh.M * sh.N, 1.0f), want(sh.M * sh.N, 0.0f);
      for (int64_t i = 0; i < sh.M; ++i)
        for (int64_t n = 0; n < sh.N; ++n)
          for (int64_t k = 0; k < sh.K; ++k)
            want[i * sh.N + n] += to_float(a[i * sh.K + k]) * to_float(b[k * sh.N + n]);
      brgemm16(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, a.data(), sh.K, b.data(), sh.N, 0.0f,
               c.data(), sh.N, layout);
      if (c != want) return false;
      std::fill(c.begin(), c.end(), 1.0f);  // B given transposed (a weight matrix)
      brgemm16(Trans::No, Trans::Yes, sh.M, sh.N, sh.K, 1.0f, a.data(), sh.K, bt.data(), sh.K, 0.0f,
               c.data(), sh.N, layout);
      if (c != want) return false;
      std::fill(c.begin(), c.end(), 1.0f);  // A given transposed (P^T dO, dS^T Q)
      brgemm16(Trans::Yes, Trans::No, sh.M, sh.N, sh.K, 1.0f, at.data(), sh.M, b.data(), sh.N, 0.0f,
               c.data(), sh.N, layout);
      if (c != want) return false;
      // The score-block path: B given as rows (K^T), even K, at most one block of columns.
      if (sh.K % 2 == 0 && sh.N <= kBlockN) {
        std::vector<half_t> packed(packed_block_size(sh.K));
        Scratch& s = scratch();
        pack_rows_as_columns(bt.data(), sh.K, sh.N, sh.K, layout, packed.data(), s);
        std::fill(c.begin(), c.end(), 1.0f);
        cpublas::brgemm(sh.M, sh.N, sh.K, sh.K, sh.N, sh.N, false, a.data(), packed.data(),
                        c.data(), true);
        if (c != want) return false;
      }
    }
    cpublas::brgemm_release(true);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

Support detect_support() {
  Support s;
  const IsaCap cap = onednn_isa_cap();
  if (cap == IsaCap::Loops) return s;
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // oneDNN's avx512_core: what its bfloat16 micro-kernel needs (AVX512-BF16 and AMX are used
  // on top where present).
  const bool avx512_core = __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  auto could_pack = [](at::ScalarType dtype) {
    try {
      return cpublas::could_pack(dtype);
    } catch (const std::exception&) {
      return false;
    }
  };
  if (avx512_core && cap == IsaCap::Avx512Core) {
    s.bf16_layout = could_pack(at::kBFloat16) ? Layout16::Pack : Layout16::Vnni;
    s.bf16 = micro_kernel16_works<c10::BFloat16>(s.bf16_layout);
    // On an AVX-512 CPU a torch whose bfloat16 probe fails has no micro-kernels (or a capped
    // oneDNN): float32 brgemm would then be cpublas::gemm, see the top of this file.
    s.f32 = s.bf16;
    // float16: cpublas::pack's layout with AMX-FP16; on AVX512-FP16 alone oneDNN documents no
    // layout for this API, so the probe tries the plain one and then VNNI pairs. Without
    // AVX512-FP16 (which AMX-FP16 CPUs have too) there is no float16 kernel to probe: brgemm
    // would throw, after setting up state whose memory would stay; float16 tiles then stay on
    // the float32 micro-kernel.
    if (s.f32 && __builtin_cpu_supports("avx512fp16")) {
      const bool pack16 = could_pack(at::kHalf);
      for (Layout16 layout : {Layout16::Pack, Layout16::Plain, Layout16::Vnni}) {
        if ((layout == Layout16::Pack) != pack16) continue;
        if (micro_kernel16_works<c10::Half>(layout)) {
          s.f16 = true;
          s.f16_layout = layout;
          break;
        }
      }
    }
  } else {
    s.f32 = avx2;
  }
  return s;
}

// What the micro-kernels can do now: nothing while torch.backends.mkldnn is disabled (checked
// on every call: brgemm checks it too) or when the environment variable MHSA_PORTABLE_GEMM=1
// asks for the portable loops (scripts/sanitize.sh runs the GoogleTest suite both ways: the
// loops let ASan see every tile operand access, the micro-kernel path checks the scratch
// copies and packing here), else what was detected the first time.
bool portable_requested() {
  static const bool requested = [] {
    const char* env = std::getenv("MHSA_PORTABLE_GEMM");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return requested;
}

const Support& support();

// A 16-bit type's micro-kernel on this machine: whether it runs, and its B layout.
struct Kernel16 {
  bool runs;
  Layout16 layout;
};
template <typename half_t>
Kernel16 kernel16(const Support& s) {
  if constexpr (std::is_same_v<half_t, c10::BFloat16>) {
    return {s.bf16, s.bf16_layout};
  } else {
    return {s.f16, s.f16_layout};
  }
}

const Support& support() {
  static const Support none;
  if (portable_requested() || !at::globalContext().userEnabledMkldnn()) return none;
  static const Support detected = detect_support();
  return detected;
}

#endif  // MHSA_USE_BRGEMM

}  // namespace

#ifdef MHSA_USE_BRGEMM
namespace {

// The scores S[i - i0][j - j0] = scale * q_i . k_j on the fixed grid of score blocks (see
// tile_gemm.h), for either 16-bit type on its micro-kernel.
template <typename half_t>
void score_blocks16(const half_t* q, const half_t* k, int64_t ld, int64_t L, int64_t K, float scale,
                    int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                    Layout16 layout) {
  static_assert(kScoreBlock == kBlockN, "a score block's keys are one packed B block");
  if (i1 <= i0 || j1 <= j0) return;
  Scratch& s = scratch();
  half_t* packed = sized16<half_t>(s.b16, packed_block_size(K));
  float* block = sized(s.c, kScoreBlock * kScoreBlock);
  for (int64_t kb = j0 / kScoreBlock * kScoreBlock; kb < j1; kb += kScoreBlock) {
    const int64_t nb = L - kb < kScoreBlock ? L - kb : kScoreBlock;
    pack_rows_as_columns(k + kb * ld, ld, nb, K, layout, packed, s);
    const int64_t c0 = j0 > kb ? j0 : kb, c1 = j1 < kb + nb ? j1 : kb + nb;
    for (int64_t qb = i0 / kScoreBlock * kScoreBlock; qb < i1; qb += kScoreBlock) {
      const int64_t mb = L - qb < kScoreBlock ? L - qb : kScoreBlock;
      // The one call that computes these scores, whichever tile asked for them.
      cpublas::brgemm(mb, nb, K, ld, nb, kScoreBlock, false, q + qb * ld, packed, block, true);
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
void checked_score_blocks(const half_t* q, const half_t* k, int64_t ld, int64_t L, int64_t K,
                          float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                          int64_t lds) {
  const char* name = std::is_same_v<half_t, c10::BFloat16> ? "bfloat16" : "float16";
#ifdef MHSA_USE_BRGEMM
  TORCH_CHECK(score_blocks_available(dtype16<half_t>(), K), "mhsa: ", name,
              " score blocks are not available");
  score_blocks16(q, k, ld, L, K, scale, i0, i1, j0, j1, S, lds, kernel16<half_t>(support()).layout);
#else
  (void)q, (void)k, (void)ld, (void)L, (void)K, (void)scale, (void)i0, (void)i1, (void)j0, (void)j1,
      (void)S, (void)lds;
  TORCH_CHECK(false, "mhsa: ", name, " score blocks are not available in this build");
#endif
}

}  // namespace

void score_blocks(const c10::BFloat16* q, const c10::BFloat16* k, int64_t ld, int64_t L, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds) {
  checked_score_blocks(q, k, ld, L, K, scale, i0, i1, j0, j1, S, lds);
}

void score_blocks(const c10::Half* q, const c10::Half* k, int64_t ld, int64_t L, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds) {
  checked_score_blocks(q, k, ld, L, K, scale, i0, i1, j0, j1, S, lds);
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
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
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
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
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
  block_stride_ = packed_block_size((first_chunk + 1) / 2 * 2);
  col_blocks_ = (N + kBlockN - 1) / kBlockN;
  const int64_t chunks = (K + kChunkK - 1) / kChunkK;
  data_.resize(static_cast<size_t>(chunks * col_blocks_ * block_stride_));  // keeps capacity
  Scratch& s = scratch();
  const Layout16 layout = support().bf16_layout;
  for (int64_t b = 0; b < chunks * col_blocks_; ++b) {
    const int64_t k0 = (b / col_blocks_) * kChunkK, j0 = (b % col_blocks_) * kBlockN;
    const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const int64_t nb = N - j0 < kBlockN ? N - j0 : kBlockN;
    pack_b_block(tb, B, ldb, k0, kc, j0, nb, layout, data_.data() + b * block_stride_, s);
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
  brgemm16_blocks(ta, M, B.N_, K, alpha, A, lda, beta, C, ldc, scratch(),
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
  const Support& s = support();
  if ((s.bf16 && s.bf16_layout == Layout16::Pack) || (s.f16 && s.f16_layout == Layout16::Pack))
    cpublas::brgemm_release(true);
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
  // The bfloat16 probe passes exactly where oneDNN's avx512_core kernels run, float32's too.
  return support().bf16;
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
    // Layout16's order: Vnni, Pack, Plain.
    static const char* const layouts[] = {"vnni", "amx", "plain"};
    thread_local std::string text;
    text = "onednn-brgemm(float32";
    text += s.bf16 ? std::string(",bfloat16-") + layouts[static_cast<int>(s.bf16_layout)]
                   : std::string(";bfloat16-as-float32");
    text += s.f16 ? std::string(",float16-") + layouts[static_cast<int>(s.f16_layout)]
                  : std::string(";float16-as-float32");
    text += ")";
    return text.c_str();
  }
#endif
  return "portable-loops";
}

}  // namespace mhsa::cpu
