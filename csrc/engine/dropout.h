#pragma once
// Dropout with Philox-4x32-10, per instruction set: a counter-based generator, so any tile
// regenerates its own keep bits (backward replays the forward's mask from the seed alone).
#include "engine/per_isa.h"

#include <cstdint>

#include "engine/attention_geometry.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {

// Dropout with Philox-4x32-10, a counter-based generator: element (n, h, i, j) uses counter
// ((n*H + h)*L + i) * ceil(S/4) + j/4 and output word j%4 (i, j, L, S: the DropoutParams
// plane's), so any tile regenerates its own bits.
// kPhiloxLanes counters are evaluated at once, one per 64-bit vector lane; the result depends
// only on (seed, counter), so every ISA copy draws the same dropout masks.
typedef uint64_t vu64 __attribute__((vector_size(kVecBytes)));
constexpr int kPhiloxLanes = kVecBytes / 8;

inline void philox_lanes(vu64 counter, uint64_t key, vu64 out[4]) {
  const uint64_t low = 0xffffffffu;
  vu64 c0 = counter & low, c1 = counter >> 32, c2 = vu64{}, c3 = vu64{};
  uint64_t k0 = key & low, k1 = key >> 32;
  for (int round = 0; round < 10; ++round) {
    const vu64 p0 = c0 * static_cast<uint64_t>(0xD2511F53u);
    const vu64 p1 = c2 * static_cast<uint64_t>(0xCD9E8D57u);
    c0 = (p1 >> 32) ^ c1 ^ k0;
    c1 = p1 & low;
    c2 = (p0 >> 32) ^ c3 ^ k1;
    c3 = p0 & low;
    k0 = (k0 + 0x9E3779B9u) & low;
    k1 = (k1 + 0xBB67AE85u) & low;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// `kept` (or 0 where dropped) for row i of head (n, h), columns j0..j1, written to
// factors[0..). The context path uses kept = 1, a 0/1 mask, and applies 1 / (1 - p) once to
// the whole context (see DropoutParams); the returned weights use kept = 1 / (1 - p).
template <typename acc_t>
void dropout_factors(acc_t* factors, const DropoutParams& d, const AttentionGeometry& g, int64_t n,
                     int64_t h, int64_t i, int64_t j0, int64_t j1, acc_t kept) {
  const acc_t scale = kept;
  // 24-bit uniforms u; keep iff u >= p.
  const uint64_t threshold = static_cast<uint64_t>((d.p < 1.0 ? d.p : 1.0) * 16777216.0);
  const int64_t rows = d.rows > 0 ? d.rows : g.L, cols = d.cols > 0 ? d.cols : g.S;
  const int64_t groups_per_row = (cols + 3) / 4;
  const int64_t row = (n * g.H + h) * rows + d.row_offset + i;
  const uint64_t row_base = static_cast<uint64_t>(row * groups_per_row);
  const int64_t c0 = j0 + d.col_offset, c1 = j1 + d.col_offset;  // columns of the plane
  vu64 lane_offset;
  for (int k = 0; k < kPhiloxLanes; ++k) lane_offset[k] = static_cast<uint64_t>(k);
  for (int64_t group = c0 / 4; group * 4 < c1; group += kPhiloxLanes) {
    vu64 r[4];
    philox_lanes(lane_offset + (row_base + static_cast<uint64_t>(group)), d.seed, r);
    for (int lane = 0; lane < kPhiloxLanes; ++lane) {
      for (int k = 0; k < 4; ++k) {
        const int64_t c = (group + lane) * 4 + k;
        if (c < c0 || c >= c1) continue;
        factors[c - c0] = (r[k][lane] >> 8) >= threshold ? scale : acc_t(0);
      }
    }
  }
}

// Multiplies row i of head (n, h), columns j0..j1, by `kept` or 0 in place; `factors` is
// scratch of at least j1 - j0 elements.
template <typename acc_t>
void dropout_row(acc_t* row, acc_t* factors, const DropoutParams& d, const AttentionGeometry& g,
                 int64_t n, int64_t h, int64_t i, int64_t j0, int64_t j1, acc_t kept) {
  dropout_factors(factors, d, g, n, h, i, j0, j1, kept);
  for (int64_t c = 0; c < j1 - j0; ++c)
    row[c] = factors[c] == acc_t(0) ? acc_t(0) : row[c] * factors[c];
}

}  // namespace mhsa::cpu::MHSA_ISA
