#include "engine/transpose.h"

#include <cstring>

#include "engine/cpu_capability.h"
#include "engine/vector_routines.h"

#ifdef MHSA_USE_BRGEMM
#include <immintrin.h>
#endif

namespace mhsa::cpu {

#ifdef MHSA_USE_BRGEMM
namespace {

// The transpose for same-type elements of kBytes bytes, as bit copies: full kV x kV squares
// inside the 16 x 16 blocks go through square(in_at, ld_in, out_at, ld_out), an SSE2 shuffle
// kernel, and the ragged edges are copied element by element.
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

}  // namespace

// 32-bit words (pairs of 16-bit values) moved by the float32 transpose: its shuffles and copies
// move bits, they never compute with them.
void transpose_words(const void* in, int64_t ld_in, int64_t rows, int64_t cols, void* out,
                     int64_t ld_out) {
  transpose_floats(static_cast<const float*>(in), ld_in, rows, cols, static_cast<float*>(out),
                   ld_out);
}

template <>
void transpose_block<float, float>(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                                   float* out, int64_t ld_out) {
  transpose_floats(in, ld_in, rows, cols, out, ld_out);
}

// 8 x 8 squares of 16-bit words: the element-by-element loop was a large part of a bfloat16
// training step.
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
#endif  // MHSA_USE_BRGEMM

void transpose_floats(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                      int64_t ld_out) {
  static const VectorRoutines routines = MHSA_ISA_COPY(make_vector_routines);
  routines.transpose_floats(in, ld_in, rows, cols, out, ld_out);
}

namespace {
template <typename T>
void plain_transpose(const T* in, int64_t ld_in, int64_t rows, int64_t cols, T* out,
                     int64_t ld_out) {
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t i = 0; i < cols; ++i) out[i * ld_out + k] = in[k * ld_in + i];
}
}  // namespace

void transpose_tile(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                    int64_t ld_out) {
  transpose_floats(in, ld_in, rows, cols, out, ld_out);
}
void transpose_tile(const double* in, int64_t ld_in, int64_t rows, int64_t cols, double* out,
                    int64_t ld_out) {
  plain_transpose(in, ld_in, rows, cols, out, ld_out);
}
void transpose_tile(const c10::BFloat16* in, int64_t ld_in, int64_t rows, int64_t cols,
                    c10::BFloat16* out, int64_t ld_out) {
#ifdef MHSA_USE_BRGEMM
  transpose_halfwords(in, ld_in, rows, cols, out, ld_out);
#else
  plain_transpose(in, ld_in, rows, cols, out, ld_out);
#endif
}
void transpose_tile(const c10::Half* in, int64_t ld_in, int64_t rows, int64_t cols, c10::Half* out,
                    int64_t ld_out) {
#ifdef MHSA_USE_BRGEMM
  transpose_halfwords(in, ld_in, rows, cols, out, ld_out);
#else
  plain_transpose(in, ld_in, rows, cols, out, ld_out);
#endif
}

}  // namespace mhsa::cpu
