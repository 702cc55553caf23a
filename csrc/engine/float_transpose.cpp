// One copy per instruction set of the float32 transpose (see float_transpose.h).
#include "engine/float_transpose.h"

#include "engine/per_isa.h"
#include "engine/vector_transpose.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

void float_transpose(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                     int64_t ld_out) {
  transpose_rows(in, ld_in, rows, cols, out, ld_out);
}

}  // namespace

FloatTranspose make_float_transpose() { return &float_transpose; }

}  // namespace mhsa::cpu::MHSA_ISA
