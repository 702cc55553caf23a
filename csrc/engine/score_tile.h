#pragma once
// Score tiles S = scale * Q_i K_j^T + masks, per instruction set: float32 on the tile GEMM where
// it sums as dot_tile's chain does, 16-bit inputs whose micro-kernel runs from the fixed grid of
// score blocks (score_blocks.h), and the rest from dot_tile's chain.
#include "engine/per_isa.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <type_traits>

#include "engine/attention_geometry.h"
#include "engine/dot_tile.h"
#include "engine/masks.h"
#include "engine/score_blocks.h"
#include "engine/small_tile.h"
#include "engine/tile_gemm.h"
#include "engine/vector_transpose.h"

namespace mhsa::cpu::MHSA_ISA {

// Whether the scores of this call come from the 16-bit micro-kernel on the fixed grid of score
// blocks rather than from dot_tile: 16-bit inputs where their kernel runs. Either way every
// score is the same bits in forward and backward (the grid's blocks are identical calls; the
// dot chain does not depend on the tile).
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
                        int64_t i1, int64_t j0, int64_t j1, ScoreKeyCache* key_cache) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    score_blocks(ScoreOperand<scalar_t>{q + g.q.at(n, 0, h), g.q.seq, g.L},
                 ScoreOperand<scalar_t>{k + g.k.at(n, 0, g.kv_head(h)), g.k.seq, g.S}, g.D, scale,
                 i0, i1, j0, j1, S, ld, key_cache);
  }
}

// Whether float32 scores come from the tile GEMM, from K_j transposed once per key block, rather
// than from dot_tile: where every tile GEMM element is one fused chain whatever the tile
// (tile_gemm_f32_chain_order), which gives dot_tile's bits at the micro-kernel's rate.
template <typename scalar_t>
inline bool scores_on_tile_gemm() {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return tile_gemm_f32_chain_order();
  } else {
    return false;
  }
}

// The keys of score_tile (N rows from k, row stride ldk) made ready once per key block: K_j^T
// (K x N, row stride N) for the tile GEMM, dot_pack's panels for dot_tile, nothing on the grid.
template <typename scalar_t>
inline void score_pack(const AttentionGeometry& g, const scalar_t* k, int64_t ldk, int64_t N,
                       float* pack) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (scores_on_tile_gemm<scalar_t>()) return transpose_rows(k, ldk, N, g.D, pack, N);
  }
  if (!scores_on_grid<scalar_t>(g)) dot_pack(k, ldk, N, g.D, pack);
}

// Where key c0 of a key block starts in the pack score_pack made of the block's N keys; score_tile
// then reads keys c0.. with the pack's row stride N. c0 a multiple of kDotPanel (dot_tile's
// panels); unused on the grid, which reads the keys themselves.
template <typename scalar_t>
inline const float* score_pack_from(const float* pack, int64_t c0, int64_t D) {
  return scores_on_tile_gemm<scalar_t>() ? pack + c0 : pack + c0 * D;
}

// The scores of a (query block, key block) tile, S = scale * Q_i K_j^T + masks (row stride ld),
// K_j read from the pack score_pack made of it (row stride ld_pack: K_j^T for the tile GEMM),
// unused on the grid, where the key blocks are packed through key_cache (if given: once per task
// run). Where the caller passes defer_scale and the tile GEMM runs without additive masks, S is
// left unscaled and *defer_scale says so: the caller multiplies by the scale in its own pass over
// S (scale_row_max, scale_row: the GEMM alpha's roundings, one pass fewer).
template <typename scalar_t, typename acc_t>
inline void score_tile(acc_t* S, int64_t ld, const scalar_t* q, const scalar_t* k,
                       const AttentionGeometry& g, const MaskView<acc_t>& masks, acc_t scale,
                       int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                       const float* key_pack, int64_t ld_pack, bool* defer_scale = nullptr,
                       ScoreKeyCache* key_cache = nullptr) {
  const scalar_t* qi = q + g.q.at(n, i0, h);
  // Masks that set -inf commute with the scale (-inf * scale = -inf); additive ones do not.
  const bool on_grid = scores_on_grid<scalar_t>(g);
  const bool defer =
      defer_scale != nullptr && !masks.additive() && (on_grid || scores_on_tile_gemm<scalar_t>());
  if (defer_scale != nullptr) *defer_scale = defer;
  if (on_grid) {
    // Unscaled, the grid's whole blocks go straight into S (score_blocks).
    grid_scores(S, ld, q, k, g, defer ? acc_t(1) : scale, n, h, i0, i1, j0, j1, key_cache);
  } else if (scores_on_tile_gemm<scalar_t>()) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const float alpha = defer ? 1.0f : scale;
      if (i1 - i0 <= kSmallTileRows) {
        small_tile_gemm(i1 - i0, j1 - j0, g.D, alpha, qi, g.q.seq, key_pack, ld_pack, false, S, ld);
      } else {
        tile_gemm(Trans::No, Trans::No, i1 - i0, j1 - j0, g.D, alpha, qi, g.q.seq, key_pack,
                  ld_pack, 0.0f, S, ld);
      }
    }
  } else {
    const scalar_t* kj = k + g.k.at(n, j0, g.kv_head(h));
    dot_tile(i1 - i0, j1 - j0, g.D, scale, qi, g.q.seq, kj, g.k.seq, key_pack, S, ld);
  }
  if (masks.any()) apply_masks(S, ld, masks, g, n, h, i0, i1, j0, j1);
}

}  // namespace mhsa::cpu::MHSA_ISA
