#pragma once
// Transposes of tiles for the attention kernels, out[i][k] (row stride ld_out) = in[k][i] (row
// stride ld_in) for k < rows, i < cols: bit copies, compiled once in transpose.cpp, so that the
// kernels' instruction-set copies include no inline code of transpose.h (see per_isa.h).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace mhsa::cpu {

void transpose_tile(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                    int64_t ld_out);
void transpose_tile(const double* in, int64_t ld_in, int64_t rows, int64_t cols, double* out,
                    int64_t ld_out);
void transpose_tile(const c10::BFloat16* in, int64_t ld_in, int64_t rows, int64_t cols,
                    c10::BFloat16* out, int64_t ld_out);
void transpose_tile(const c10::Half* in, int64_t ld_in, int64_t rows, int64_t cols, c10::Half* out,
                    int64_t ld_out);

}  // namespace mhsa::cpu
