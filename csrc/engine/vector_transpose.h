#pragma once
// Transposes of tiles in the kernels' own instruction set: float32 through kLanes x kLanes blocks
// of vector shuffles (each one instruction with an immediate on x86), other types through
// transpose_tile (compiled once, transpose.cpp). The per-tile Q_i^T and dO_i^T of the backward were
// a large part of its own time on the 4 x 4 SSE kernel. Bit copies either way.
#include "engine/per_isa.h"

#include <cstdint>
#include <type_traits>

#include "engine/transpose_tile.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {

// The shuffles of transpose_lane_block: patterns x86 has one instruction with an immediate for
// (generic two-source permutes each held an index vector, and with 16 rows they spilled to the
// stack). Lane k of the result takes lane index[k] of a (< kLanes) or of b (kLanes + ...); m is
// the first lane of k's 128-bit group g (4 lanes), p its place there.
enum class LanePattern { kUnpackLow, kUnpackHigh, kPairsLow, kPairsHigh, kGroupsEven, kGroupsOdd };

template <LanePattern P>
inline vfloat lane_shuffle(vfloat a, vfloat b) {
  vint index;
  for (int k = 0; k < kLanes; ++k) {
    const int g = k / 4, m = 4 * g, p = k % 4, half = kLanes >= 16 ? 2 : 1;
    switch (P) {
      case LanePattern::kUnpackLow:  // a0 b0 a1 b1 per group (unpcklps)
        index[k] = (p % 2 ? kLanes : 0) + m + p / 2;
        break;
      case LanePattern::kUnpackHigh:  // a2 b2 a3 b3 per group (unpckhps)
        index[k] = (p % 2 ? kLanes : 0) + m + 2 + p / 2;
        break;
      case LanePattern::kPairsLow:  // a0 a1 b0 b1 per group (shufps 0x44)
        index[k] = (p < 2 ? 0 : kLanes) + m + p % 2;
        break;
      case LanePattern::kPairsHigh:  // a2 a3 b2 b3 per group (shufps 0xEE)
        index[k] = (p < 2 ? 0 : kLanes) + m + 2 + p % 2;
        break;
      case LanePattern::kGroupsEven:  // groups 0, 2, .. of a, then of b (vshuff32x4 0x88)
        index[k] = (g < half ? 0 : kLanes) + 8 * (g % half) + p;
        break;
      case LanePattern::kGroupsOdd:  // groups 1, 3, .. of a, then of b (vshuff32x4 0xDD)
        index[k] = (g < half ? 0 : kLanes) + 8 * (g % half) + 4 + p;
        break;
    }
  }
  return __builtin_shuffle(a, b, index);
}

// One kLanes x kLanes block: 4 x 4 transposes within 128-bit groups (unpacks, then pairs), then
// (8 and 16 lanes) whole groups moved between rows.
inline void transpose_lane_block(const float* in, int64_t ld_in, float* out, int64_t ld_out) {
  vfloat r[kLanes], t[kLanes];
  for (int k = 0; k < kLanes; ++k) r[k] = load(in + k * ld_in);
  for (int k = 0; k < kLanes; k += 2) {
    t[k] = lane_shuffle<LanePattern::kUnpackLow>(r[k], r[k + 1]);
    t[k + 1] = lane_shuffle<LanePattern::kUnpackHigh>(r[k], r[k + 1]);
  }
  for (int k = 0; k < kLanes; k += 4) {  // r[k + c]: column c + 4g of rows k..k+3 in group g
    r[k] = lane_shuffle<LanePattern::kPairsLow>(t[k], t[k + 2]);
    r[k + 1] = lane_shuffle<LanePattern::kPairsHigh>(t[k], t[k + 2]);
    r[k + 2] = lane_shuffle<LanePattern::kPairsLow>(t[k + 1], t[k + 3]);
    r[k + 3] = lane_shuffle<LanePattern::kPairsHigh>(t[k + 1], t[k + 3]);
  }
  if constexpr (kLanes == 4) {
    for (int c = 0; c < 4; ++c) store(out + c * ld_out, r[c]);
  } else if constexpr (kLanes == 8) {
    for (int c = 0; c < 4; ++c) {
      store(out + c * ld_out, lane_shuffle<LanePattern::kGroupsEven>(r[c], r[4 + c]));
      store(out + (c + 4) * ld_out, lane_shuffle<LanePattern::kGroupsOdd>(r[c], r[4 + c]));
    }
  } else {  // 16 lanes
    for (int c = 0; c < 4; ++c) {
      t[c] = lane_shuffle<LanePattern::kGroupsEven>(r[c], r[4 + c]);
      t[4 + c] = lane_shuffle<LanePattern::kGroupsOdd>(r[c], r[4 + c]);
      t[8 + c] = lane_shuffle<LanePattern::kGroupsEven>(r[8 + c], r[12 + c]);
      t[12 + c] = lane_shuffle<LanePattern::kGroupsOdd>(r[8 + c], r[12 + c]);
    }
    for (int c = 0; c < 4; ++c) {
      store(out + c * ld_out, lane_shuffle<LanePattern::kGroupsEven>(t[c], t[8 + c]));
      store(out + (c + 8) * ld_out, lane_shuffle<LanePattern::kGroupsOdd>(t[c], t[8 + c]));
      store(out + (c + 4) * ld_out, lane_shuffle<LanePattern::kGroupsEven>(t[4 + c], t[12 + c]));
      store(out + (c + 12) * ld_out, lane_shuffle<LanePattern::kGroupsOdd>(t[4 + c], t[12 + c]));
    }
  }
}

// out[i][k] (row stride ld_out) = in[k][i] (row stride ld_in) for k < rows, i < cols.
template <typename T>
inline void transpose_rows(const T* in, int64_t ld_in, int64_t rows, int64_t cols, T* out,
                           int64_t ld_out) {
  if constexpr (!std::is_same_v<T, float>) {
    transpose_tile(in, ld_in, rows, cols, out, ld_out);
  } else {
    const int64_t full_rows = rows - rows % kLanes, full_cols = cols - cols % kLanes;
    // Blocks along the rows of out (the writes stream; reads are cheaper to scatter).
    for (int64_t i0 = 0; i0 < full_cols; i0 += kLanes) {
      for (int64_t k0 = 0; k0 < full_rows; k0 += kLanes)
        transpose_lane_block(in + k0 * ld_in + i0, ld_in, out + i0 * ld_out + k0, ld_out);
    }
    // The ragged edges element by element: columns past the whole blocks, then rows past them.
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t first = k < full_rows ? full_cols : 0;
      for (int64_t i = first; i < cols; ++i) out[i * ld_out + k] = in[k * ld_in + i];
    }
  }
}

}  // namespace mhsa::cpu::MHSA_ISA
