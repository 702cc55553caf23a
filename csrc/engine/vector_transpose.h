#pragma once
// Transposes of tiles in the kernels' own instruction set: float32 through kLanes x kLanes blocks
// of vector shuffles (log2(kLanes) stages of two-source shuffles), other types through
// transpose_tile (compiled once, transpose.cpp). The per-tile Q_i^T and dO_i^T of the backward
// were a large part of its own time on the 4 x 4 SSE kernel. Bit copies either way.
#include "engine/per_isa.h"

#include <cstdint>
#include <type_traits>

#include "engine/transpose_tile.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {

// One stage of the block transpose: rows a and b (H rows apart) exchange H-lane halves of every
// 2H-lane group; first gets the low halves of a and b, second the high halves. The stages
// H = kLanes / 2, ..., 1 transpose a kLanes x kLanes block.
template <int H>
inline void exchange_halves(vfloat a, vfloat b, vfloat& first, vfloat& second) {
  vint low, high;
  for (int k = 0; k < kLanes; ++k) {
    const int group = k / (2 * H) * (2 * H), p = k % (2 * H);
    low[k] = p < H ? group + p : kLanes + group + p - H;
    high[k] = p < H ? group + H + p : kLanes + group + p;
  }
  first = __builtin_shuffle(a, b, low);
  second = __builtin_shuffle(a, b, high);
}

template <int H>
inline void transpose_stage(vfloat (&r)[kLanes]) {
  for (int i = 0; i < kLanes; ++i) {
    if (i & H) continue;
    vfloat first, second;
    exchange_halves<H>(r[i], r[i + H], first, second);
    r[i] = first;
    r[i + H] = second;
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
    for (int64_t k0 = 0; k0 < full_rows; k0 += kLanes) {
      for (int64_t i0 = 0; i0 < full_cols; i0 += kLanes) {
        vfloat r[kLanes];
        for (int k = 0; k < kLanes; ++k) r[k] = load(in + (k0 + k) * ld_in + i0);
        if constexpr (kLanes >= 16) transpose_stage<8>(r);
        if constexpr (kLanes >= 8) transpose_stage<4>(r);
        transpose_stage<2>(r);
        transpose_stage<1>(r);
        for (int i = 0; i < kLanes; ++i) store(out + (i0 + i) * ld_out + k0, r[i]);
      }
    }
    // The ragged edges element by element: columns past the whole blocks, then rows past them.
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t first = k < full_rows ? full_cols : 0;
      for (int64_t i = first; i < cols; ++i) out[i * ld_out + k] = in[k * ld_in + i];
    }
  }
}

}  // namespace mhsa::cpu::MHSA_ISA
