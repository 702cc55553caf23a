#pragma once
// The float32 transpose of the compiled-once code (projection operands, the tile GEMMs'
// transposed A, K^T), run by the kernels' own vector transpose (vector_transpose.h) of the
// instruction set cpu_capability() picks: it beat the SSE 4 x 4 kernel, which took 6.5% of a
// float32 training step at L = 128 on Zen 5.
#include <cstdint>

namespace mhsa::cpu {

// out[i][k] (row stride ld_out) = in[k][i] (row stride ld_in) for k < rows, i < cols.
using FloatTranspose = void (*)(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                                float* out, int64_t ld_out);

namespace isa_default {
FloatTranspose make_float_transpose();
}
#if defined(__x86_64__) || defined(__i386__)
namespace isa_avx2 {
FloatTranspose make_float_transpose();
}
namespace isa_avx512 {
FloatTranspose make_float_transpose();
}
#endif

}  // namespace mhsa::cpu
