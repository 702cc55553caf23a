#pragma once
// Score tiles S = scale * Q_i K_j^T + masks, per instruction set: from dot_tile's chain, or for
// 16-bit inputs whose micro-kernel runs from the fixed grid of score blocks (score_blocks.h).
#include "engine/per_isa.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <type_traits>

#include "engine/attention_geometry.h"
#include "engine/dot_tile.h"
#include "engine/masks.h"
#include "engine/score_blocks.h"

namespace mhsa::cpu::MHSA_ISA {

// Whether the scores of this call come from the bfloat16 micro-kernel on the fixed block grid
// (score_blocks, tile_gemm.h) instead of dot_tile: 16-bit inputs where their kernel runs.
// Either way every score is the same bits in forward and backward (the grid's blocks are
// identical calls; dot_tile's chain does not depend on the tile). dP = dO V^T is on dot_tile,
// the chain of Dsum = dO . O (dsum_rows), except for bfloat16 with its micro-kernel (dp_tile).
template <typename scalar_t>
inline bool scores_on_grid(const AttentionGeometry& g) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    return score_blocks_available(c10::CppTypeToScalarType<scalar_t>::value, g.D);
  } else {
    return false;
  }
}

// S = scale * Q_i K_j^T on the grid (see scores_on_grid).
template <typename scalar_t, typename acc_t>
inline void grid_scores(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                        const AttentionGeometry& g, acc_t scale, int64_t n, int64_t h, int64_t i0,
                        int64_t i1, int64_t j0, int64_t j1) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    score_blocks(ScoreOperand<scalar_t>{q + g.q.at(n, 0, h), g.q.seq, g.L},
                 ScoreOperand<scalar_t>{k + g.k.at(n, 0, g.kv_head(h)), g.k.seq, g.S}, g.D, scale,
                 i0, i1, j0, j1, S, ld);
  }
}

// Scores of a (query block, key block) tile, S = scale * Q_i K_j^T + masks (row stride ld), with
// K_j already packed by pack_for_dot (on the grid the packed copy is not used, see
// pack_keys_for_scores).
template <typename scalar_t, typename acc_t>
inline void score_tile_prepacked(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                                 const AttentionGeometry& g, const MaskView<acc_t>& masks,
                                 acc_t scale, int64_t n, int64_t h, int64_t i0, int64_t i1,
                                 int64_t j0, int64_t j1, const float* packed_k) {
  if (scores_on_grid<scalar_t>(g)) {
    grid_scores(S, ld, q, k, g, scale, n, h, i0, i1, j0, j1);
  } else {
    const scalar_t* qi = q + g.q.at(n, i0, h);
    const scalar_t* kj = k + g.k.at(n, j0, g.kv_head(h));
    dot_tile_prepacked(i1 - i0, j1 - j0, g.D, scale, qi, g.q.seq, kj, g.k.seq, packed_k, S, ld);
  }
  if (masks.any()) apply_masks(S, ld, masks, g, n, h, i0, i1, j0, j1);
}

// pack_for_dot for the keys of score_tile_prepacked: nothing to do when the scores come from
// the grid.
template <typename scalar_t>
inline void pack_keys_for_scores(const AttentionGeometry& g, const scalar_t* k, int64_t ldk,
                                 int64_t N, float* packed) {
  if (!scores_on_grid<scalar_t>(g)) pack_for_dot(k, ldk, N, g.D, packed);
}

// score_tile_prepacked, packing K_j into `packed` (scratch of dot_packed_size(j1 - j0, D)
// floats) first: bitwise the same scores.
template <typename scalar_t, typename acc_t>
inline void score_tile(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                       const AttentionGeometry& g, const MaskView<acc_t>& masks, acc_t scale,
                       int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                       float* packed) {
  pack_keys_for_scores(g, k + g.k.at(n, j0, g.kv_head(h)), g.k.seq, j1 - j0, packed);
  score_tile_prepacked(S, ld, q, k, g, masks, scale, n, h, i0, i1, j0, j1, packed);
}

}  // namespace mhsa::cpu::MHSA_ISA
