#pragma once
// Building blocks shared by the fused forward and backward CPU kernels: where each head's
// Q, K, V live inside the packed QKV buffer, the masks applied inside a score tile, and the
// counter-based dropout that backward regenerates instead of storing a mask.
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/tile_gemm.h"

namespace mhsa::cpu {

// Tile sizes: a query block of kBlockQ rows against a key block of kBlockK columns keeps the
// fp32 score tile (64 x 256 x 4 B = 64 KiB) and one head's output accumulator in L2.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 256;

// Rows of x, qkv and context are laid out like the input: row(n, l) = n * L + l with
// batch_first, l * N + n without. Q, K and V of head h are read in place at columns h*D,
// E + h*D and 2E + h*D of qkv; consecutive sequence positions are seq_rows() rows apart.
struct AttentionGeometry {
  int64_t N, L, E, H, D;
  bool batch_first;
  int64_t row(int64_t n, int64_t l) const { return batch_first ? n * L + l : l * N + n; }
  int64_t seq_rows() const { return batch_first ? 1 : N; }
};

// The masks of one call, converted once: bool masks stay bool (true = may not attend), float
// masks become acc_t values added to the scores. attn_mask is (L, L) or (N*H, L, L),
// key_padding_mask (N, L).
template <typename acc_t>
struct TileMasks {
  at::Tensor attn_storage, kpm_storage;  // keep converted copies alive
  const bool* attn_bool = nullptr;
  const acc_t* attn_add = nullptr;
  bool attn_per_head = false;
  const bool* kpm_bool = nullptr;
  const acc_t* kpm_add = nullptr;
  bool causal = false;

  TileMasks(const std::optional<at::Tensor>& attn_mask,
            const std::optional<at::Tensor>& key_padding_mask, bool is_causal) {
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    causal = is_causal;
    if (attn_mask.has_value() && attn_mask->defined()) {
      attn_per_head = attn_mask->dim() == 3;
      if (attn_mask->scalar_type() == at::kBool) {
        attn_storage = attn_mask->contiguous();
        attn_bool = attn_storage.data_ptr<bool>();
      } else {
        attn_storage = attn_mask->to(acc_type).contiguous();
        attn_add = attn_storage.data_ptr<acc_t>();
      }
    }
    if (key_padding_mask.has_value() && key_padding_mask->defined()) {
      if (key_padding_mask->scalar_type() == at::kBool) {
        kpm_storage = key_padding_mask->contiguous();
        kpm_bool = kpm_storage.data_ptr<bool>();
      } else {
        kpm_storage = key_padding_mask->to(acc_type).contiguous();
        kpm_add = kpm_storage.data_ptr<acc_t>();
      }
    }
  }

  bool any() const { return causal || attn_bool || attn_add || kpm_bool || kpm_add; }

  // Applies every mask to the score tile S (rows i0..i1 of queries, columns j0..j1 of keys,
  // row stride ld) of batch n, head h.
  void apply(acc_t* S, int64_t ld, const AttentionGeometry& g, int64_t n, int64_t h,
             int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
    const int64_t cols = j1 - j0;
    const int64_t attn_offset = attn_per_head ? (n * g.H + h) * g.L * g.L : 0;
    for (int64_t i = i0; i < i1; ++i) {
      acc_t* s = S + (i - i0) * ld;
      if (attn_bool) {
        const bool* m = attn_bool + attn_offset + i * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) s[c] = m[c] ? neg_inf : s[c];
      } else if (attn_add) {
        const acc_t* m = attn_add + attn_offset + i * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) s[c] += m[c];
      }
      if (kpm_bool) {
        const bool* m = kpm_bool + n * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) s[c] = m[c] ? neg_inf : s[c];
      } else if (kpm_add) {
        const acc_t* m = kpm_add + n * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) s[c] += m[c];
      }
      if (causal) {
        for (int64_t c = std::max<int64_t>(i + 1 - j0, 0); c < cols; ++c) s[c] = neg_inf;
      }
    }
  }
};

// Dropout on the attention probabilities with a counter-based generator (Philox-4x32-10):
// the keep decision of element (n, h, i, j) is a pure function of (seed, n, h, i, j), so the
// backward pass regenerates it and no L x L mask is ever stored.
struct AttentionDropout {
  bool enabled = false;
  double p = 0.0;
  uint64_t seed = 0;

  static inline void philox_round(uint32_t c[4], uint32_t k0, uint32_t k1) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
  }

  static inline void philox(uint64_t counter, uint64_t key, uint32_t out[4]) {
    uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0, 0};
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int r = 0; r < 10; ++r) {
      philox_round(c, k0, k1);
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int i = 0; i < 4; ++i) out[i] = c[i];
  }

  // Multiplies row i of head (n, h), columns j0..j1, by keep / (1 - p) in place.
  template <typename acc_t>
  void apply_row(acc_t* row, const AttentionGeometry& g, int64_t n, int64_t h, int64_t i,
                 int64_t j0, int64_t j1) const {
    const acc_t scale = p >= 1.0 ? acc_t(0) : static_cast<acc_t>(1.0 / (1.0 - p));
    // 24-bit uniforms: keep iff u >= p.
    const uint32_t threshold = static_cast<uint32_t>(std::min(p, 1.0) * 16777216.0);
    const int64_t groups_per_row = (g.L + 3) / 4;
    const uint64_t row_base = static_cast<uint64_t>(((n * g.H + h) * g.L + i) * groups_per_row);
    int64_t j = j0;
    while (j < j1) {
      const int64_t group = j / 4;
      uint32_t r[4];
      philox(row_base + static_cast<uint64_t>(group), seed, r);
      const int64_t end = std::min(j1, (group + 1) * 4);
      for (; j < end; ++j) {
        const bool keep = (r[j & 3] >> 8) >= threshold;
        row[j - j0] = keep ? row[j - j0] * scale : acc_t(0);
      }
    }
  }
};

// Per-thread scratch for one query block against key blocks.
template <typename scalar_t, typename acc_t>
struct TileScratch {
  std::vector<acc_t> scores, aux, acc, row_max, row_sum;
  std::vector<scalar_t> cast;  // bfloat16 copy of a probability tile for the next GEMM
  TileScratch(int64_t rows, int64_t cols, int64_t head_dim)
      : scores(rows * cols), aux(rows * cols), acc(rows * head_dim), row_max(rows),
        row_sum(rows), cast(std::is_same_v<scalar_t, acc_t> ? 0 : rows * cols) {}

  // Returns the tile as GEMM input: itself when no conversion is needed.
  const scalar_t* as_input(const acc_t* tile, int64_t count) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return tile;
    } else {
      for (int64_t k = 0; k < count; ++k) cast[k] = static_cast<scalar_t>(tile[k]);
      return cast.data();
    }
  }
};

// Scores of a (query block, key block) tile: S = scale * Q_i K_j^T + masks, row stride ld.
template <typename scalar_t, typename acc_t>
inline void score_tile(acc_t* S, int64_t ld, const scalar_t* qkv, const AttentionGeometry& g,
                       const TileMasks<acc_t>& masks, acc_t scale, int64_t n, int64_t h,
                       int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int64_t ld_seq = g.seq_rows() * 3 * g.E;
  const scalar_t* q = qkv + g.row(n, i0) * 3 * g.E + h * g.D;
  const scalar_t* k = qkv + g.row(n, j0) * 3 * g.E + g.E + h * g.D;
  tile_gemm(Trans::No, Trans::Yes, i1 - i0, j1 - j0, g.D, scale, q, ld_seq, k, ld_seq, acc_t(0),
            S, ld);
  if (masks.any()) masks.apply(S, ld, g, n, h, i0, i1, j0, j1);
}

// Number of keys a query block can see: all of them, or up to the diagonal when causal.
inline int64_t visible_keys(const AttentionGeometry& g, bool causal, int64_t i1) {
  return causal ? std::min(g.L, i1) : g.L;
}

}  // namespace mhsa::cpu
