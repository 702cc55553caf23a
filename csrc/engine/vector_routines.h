#pragma once
// Vector routines of the kernels' instruction set that the compiled-once code borrows (one table
// per instruction set, vector_routines.cpp; cpu_capability() picks one): the float32 transpose
// (an SSE 4 x 4 kernel took 6.5% of a float32 training step at L = 128 on Zen 5), and the
// rounding of the projections' float32 result tiles to bfloat16 (an element loop before).
#include <cstdint>

namespace mhsa::cpu {

struct VectorRoutines {
  // out[i][k] (row stride ld_out) = in[k][i] (row stride ld_in) for k < rows, i < cols: the
  // projections' weights, the tile GEMMs' transposed A, K^T (vector_transpose.h).
  void (*transpose_floats)(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                           int64_t ld_out);
  // out[r][c] (row stride ld_out, bfloat16 bits) = in[r][c] (row stride ld_in), r < rows, c < cols,
  // rounded as c10 rounds (to nearest even, every NaN as 0x7FC0: the bits of Tensor.to).
  void (*narrow_rows_bf16)(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                           uint16_t* out, int64_t ld_out);
};

namespace isa_default {
VectorRoutines make_vector_routines();
}
#if defined(__x86_64__) || defined(__i386__)
namespace isa_avx2 {
VectorRoutines make_vector_routines();
}
namespace isa_avx512 {
VectorRoutines make_vector_routines();
}
#endif

}  // namespace mhsa::cpu
