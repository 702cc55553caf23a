#pragma once
// float32 result rows rounded to bfloat16 (round to nearest even, NaN as c10's 0x7FC0: the bits
// of Tensor.to) by the kernels' instruction set: the projections' 16-bit outputs are written tile
// by tile from a float32 scratch tile, and the compiled-once loop converted one element at a time.
#include <cstdint>

namespace mhsa::cpu {

// out[r][c] (row stride ld_out, bfloat16 bits) = in[r][c] (row stride ld_in) for r < rows, c <
// cols.
using NarrowRowsBf16 = void (*)(const float* in, int64_t ld_in, int64_t rows, int64_t cols,
                                uint16_t* out, int64_t ld_out);

namespace isa_default {
NarrowRowsBf16 make_narrow_rows_bf16();
}
#if defined(__x86_64__) || defined(__i386__)
namespace isa_avx2 {
NarrowRowsBf16 make_narrow_rows_bf16();
}
namespace isa_avx512 {
NarrowRowsBf16 make_narrow_rows_bf16();
}
#endif

}  // namespace mhsa::cpu
