// One copy per instruction set of the float32 -> bfloat16 row rounding (see narrow_rows.h).
#include "engine/narrow_rows.h"

#include "engine/per_isa.h"

#include <cstring>

namespace mhsa::cpu::MHSA_ISA {
namespace {

void narrow_rows_bf16(const float* in, int64_t ld_in, int64_t rows, int64_t cols, uint16_t* out,
                      int64_t ld_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = in + r * ld_in;
    uint16_t* dst = out + r * ld_out;
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t bits;
      std::memcpy(&bits, row + c, sizeof(bits));
      const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
      dst[c] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
    }
  }
}

}  // namespace

NarrowRowsBf16 make_narrow_rows_bf16() { return &narrow_rows_bf16; }

}  // namespace mhsa::cpu::MHSA_ISA
