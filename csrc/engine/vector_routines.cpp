// One copy per instruction set of the vector routines the compiled-once code borrows (see
// vector_routines.h).
#include "engine/vector_routines.h"

#include "engine/per_isa.h"

#include <cstring>

#include "engine/vector_math.h"
#include "engine/vector_transpose.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

void float_transpose(const float* in, int64_t ld_in, int64_t rows, int64_t cols, float* out,
                     int64_t ld_out) {
  transpose_rows(in, ld_in, rows, cols, out, ld_out);
}

typedef uint32_t vuint __attribute__((vector_size(kVecBytes)));
typedef uint16_t vword __attribute__((vector_size(kVecBytes / 2)));

// c10's float -> bfloat16: round to nearest even; every NaN becomes 0x7FC0.
inline uint32_t bfloat16_bits(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
inline vuint bfloat16_bits(vuint bits) {
  const vuint rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7fffffffu) > 0x7f800000u ? vuint{} + 0x7fc0u : rounded;
}

void narrow_rows_bf16(const float* in, int64_t ld_in, int64_t rows, int64_t cols, uint16_t* out,
                      int64_t ld_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * ld_in;
    uint16_t* dst = out + r * ld_out;
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) {
      vuint bits;
      std::memcpy(&bits, row + c, sizeof(bits));
      const vword words = __builtin_convertvector(bfloat16_bits(bits), vword);
      std::memcpy(dst + c, &words, sizeof(words));
    }
    for (; c < cols; ++c) {
      uint32_t bits;
      std::memcpy(&bits, row + c, sizeof(bits));
      dst[c] = static_cast<uint16_t>(bfloat16_bits(bits));
    }
  }
}

}  // namespace

VectorRoutines make_vector_routines() { return {&float_transpose, &narrow_rows_bf16}; }

}  // namespace mhsa::cpu::MHSA_ISA
