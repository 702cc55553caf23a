#pragma once
// Exact transposes for the tile GEMMs' operand copies: out[i][k] (row stride ld_out) =
// in[k][i] (row stride ld_in) for k < rows, i < cols, by 16 x 16 blocks so that both sides stay
// in L1 (a plain loop writes a column of `out` at a time, one cache line per element).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "engine/brgemm_build.h"
#include "engine/transpose_tile.h"

namespace mhsa::cpu {

// The float transpose of the compiled-once code (the projections' transposed weight column tiles,
// the tile GEMMs' transposed A, K^T): the vector transpose of the kernels' instruction set
// (vector_routines.h).
void transpose_floats(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                      int64_t ld_out);

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(c10::Half v) { return static_cast<float>(v); }

// Any element type to any: a conversion through float, or a copy between equal 16-bit types.
template <typename in_t, typename out_t>
void transpose_block(const in_t* in, int64_t ld_in, int64_t rows, int64_t cols, out_t* out,
                     int64_t ld_out) {
  constexpr int64_t kB = 16;
  for (int64_t i0 = 0; i0 < cols; i0 += kB) {
    const int64_t i1 = i0 + kB < cols ? i0 + kB : cols;
    for (int64_t k0 = 0; k0 < rows; k0 += kB) {
      const int64_t k1 = k0 + kB < rows ? k0 + kB : rows;
      for (int64_t i = i0; i < i1; ++i) {
        out_t* row = out + i * ld_out;
        for (int64_t k = k0; k < k1; ++k) {
          if constexpr (std::is_same_v<in_t, out_t>) {
            row[k] = in[k * ld_in + i];  // 16-bit to 16-bit: a copy, no round trip
          } else {
            row[k] = static_cast<out_t>(to_float(in[k * ld_in + i]));
          }
        }
      }
    }
  }
}

#ifdef MHSA_USE_BRGEMM
// Same-type transposes as bit copies through shuffles (no arithmetic: every bit pattern
// survives), for the micro-kernel build (x86-64 only, where SSE2 always exists).
// 32-bit words (strides in words): floats, or pairs of 16-bit values moved as one word (by the
// float32 transpose of the kernels' instruction set, vector_routines.h).
void transpose_words(const void* in, int64_t ld_in, int64_t rows, int64_t cols, void* out,
                     int64_t ld_out);
// 16-bit words: the transposed operands of the bfloat16 and float16 tile GEMMs.
void transpose_halfwords(const void* in, int64_t ld_in, int64_t rows, int64_t cols, void* out,
                         int64_t ld_out);

template <>
void transpose_block<float, float>(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                                   float* out, int64_t ld_out);
template <>
void transpose_block<c10::BFloat16, c10::BFloat16>(const c10::BFloat16* in, int64_t ld_in,
                                                   int64_t rows, int64_t cols, c10::BFloat16* out,
                                                   int64_t ld_out);
template <>
void transpose_block<c10::Half, c10::Half>(const c10::Half* in, int64_t ld_in, int64_t rows,
                                           int64_t cols, c10::Half* out, int64_t ld_out);
#endif

}  // namespace mhsa::cpu
