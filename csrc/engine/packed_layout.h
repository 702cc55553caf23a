#pragma once
// The shape of one packed 16-bit B block in each layout the 16-bit micro-kernels take, as pure
// arithmetic: tests/cpp/test_packed_layout.cpp checks it on every CPU, so a machine without a
// matrix unit still checks the rules of one (AMX packing refuses most leading dimensions).
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace mhsa::cpu {

// How the 16-bit micro-kernels take their B operand: VNNI pairs (consecutive k interleaved:
// B_vnni[k / 2][n][k % 2] = B[k][n]; bfloat16 on AVX-512), cpublas::pack's layout (the matrix
// unit: AMX, AMX-FP16), or plain row-major (float16 on AVX512-FP16).
enum class Layout16 { Vnni, Pack, Plain };

inline const char* layout16_name(Layout16 layout) {
  switch (layout) {
    case Layout16::Vnni: return "vnni";
    case Layout16::Pack: return "amx";
    default: return "plain";
  }
}

// B operands are packed and multiplied in blocks of at most this many columns: AMX packing
// refuses wider ones.
constexpr int64_t kBlockN = 64;

// cpublas::pack's rule on AMX (oneDNN's transform, found on a Sapphire Rapids Xeon: see
// docs/performance-notes.md): the packed leading dimension must be a multiple of 16, at least N
// and at most 64.
inline bool amx_pack_accepts(int64_t K, int64_t N, int64_t ld_out) {
  return K > 0 && N > 0 && ld_out % 16 == 0 && ld_out >= N && ld_out <= kBlockN;
}

// cpublas::pack's signature: K x N row-major (row stride ld_in) in, packed (ld_out) out. Tests
// pass stand-ins of this type to feed the probe another CPU's packing rules.
using PackFunction = void (*)(int64_t K, int64_t N, int64_t ld_in, int64_t ld_out,
                              c10::ScalarType dtype, const void* in, void* out);

struct PackedBlockShape {
  int64_t k_rows;    // reduction rows stored: kc rounded up to even (VNNI pairs), zero-filled
  int64_t ld;        // packed leading dimension: cpublas::pack's ld_out and brgemm's ld_b
  int64_t elements;  // storage to reserve for the block
};

inline int64_t round_up(int64_t v, int64_t multiple) {
  return (v + multiple - 1) / multiple * multiple;
}

// The block of kc reduction rows and nb <= kBlockN columns in `layout`. The matrix unit's
// layout pads the columns to 16 (amx_pack_accepts) and may pad the rows to its 32-deep K tiles,
// so its storage covers both.
inline PackedBlockShape packed_block_shape(Layout16 layout, int64_t kc, int64_t nb) {
  const int64_t k_rows = round_up(kc, 2);
  if (layout == Layout16::Pack) {
    const int64_t ld = round_up(nb, 16);
    return {k_rows, ld, round_up(k_rows, 32) * ld};
  }
  return {k_rows, nb, k_rows * nb};
}

}  // namespace mhsa::cpu
