#pragma once
// The masks inside a score tile, and the key and query ranges a block can see at all (tiles
// outside are skipped, forward and backward: their probabilities are exactly zero), per
// instruction set.
#include "engine/per_isa.h"

#include <cstdint>
#include <limits>

#include "engine/attention_geometry.h"

namespace mhsa::cpu::MHSA_ISA {

// Masks inside a score tile S (rows i0..i1 of queries, columns j0..j1 of keys, row stride ld)
// of batch n, head h.
template <typename acc_t>
void apply_masks(acc_t* S, int64_t ld, const MaskView<acc_t>& m, const AttentionGeometry& g,
                 int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t cols = j1 - j0;
  for (int64_t i = i0; i < i1; ++i) {
    acc_t* s = S + (i - i0) * ld;
    if (m.attn_bool) {
      const bool* mask = m.attn_bool + m.attn_layout.at(n, i, h) + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] = mask[c] ? neg_inf : s[c];
    } else if (m.attn_add) {
      const acc_t* mask = m.attn_add + m.attn_layout.at(n, i, h) + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] += mask[c];
    }
    if (m.kpm_bool) {
      const bool* mask = m.kpm_bool + n * g.S + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] = mask[c] ? neg_inf : s[c];
    } else if (m.kpm_add) {
      const acc_t* mask = m.kpm_add + n * g.S + j0;
      for (int64_t c = 0; c < cols; ++c) s[c] += mask[c];
    }
    const int64_t p = i + m.diagonal;  // the query's position on the keys' axis
    if (m.causal) {
      for (int64_t c = (p + 1 - j0 > 0 ? p + 1 - j0 : 0); c < cols; ++c) s[c] = neg_inf;
    }
    if (m.window_left >= 0) {  // keys j < p - left
      const int64_t first = p - m.window_left - j0;
      for (int64_t c = 0; c < (first < cols ? first : cols); ++c) s[c] = neg_inf;
    }
    if (m.window_right >= 0) {  // keys j > p + right
      const int64_t last = p + m.window_right - j0;
      for (int64_t c = (last + 1 > 0 ? last + 1 : 0); c < cols; ++c) s[c] = neg_inf;
    }
    if (m.key_end != nullptr) {  // keys j >= key_end[n]
      const int64_t end = m.key_end[n] - j0;
      for (int64_t c = (end > 0 ? end : 0); c < cols; ++c) s[c] = neg_inf;
    }
  }
}

// A half-open range of sequence positions.
struct PositionRange {
  int64_t begin, end;
  bool empty() const { return end <= begin; }
};

// The keys that some query of i0..i1 (batch n) may see under the causal mask, the sliding
// window and the padding limit: tiles outside are skipped, forward and backward (exact: their
// probabilities are zero); inside, apply_masks masks per element.
template <typename acc_t>
inline PositionRange visible_key_range(const AttentionGeometry& g, const MaskView<acc_t>& m,
                                       int64_t n, int64_t i0, int64_t i1) {
  int64_t begin = 0, end = g.S;
  const int64_t p0 = i0 + m.diagonal, p1 = i1 + m.diagonal;  // positions on the keys' axis
  if (m.causal && p1 < end) end = p1;
  if (m.window_right >= 0 && p1 + m.window_right < end) end = p1 + m.window_right;
  if (m.window_left >= 0 && p0 - m.window_left > begin) begin = p0 - m.window_left;
  if (m.key_end != nullptr && m.key_end[n] < end) end = m.key_end[n];
  return {begin, end > begin ? end : begin};
}

// The queries that may see some key of j0..j1 (batch n): the backward's query sweep of a key
// block.
template <typename acc_t>
inline PositionRange visible_query_range(const AttentionGeometry& g, const MaskView<acc_t>& m,
                                         int64_t n, int64_t j0, int64_t j1) {
  if (m.key_end != nullptr && j0 >= m.key_end[n]) return {0, 0};
  int64_t begin = 0, end = g.L;
  const int64_t d = m.diagonal;  // query i sits at key position i + d
  if (m.causal && j0 - d > begin) begin = j0 - d;
  if (m.window_right >= 0 && j0 - m.window_right - d > begin) begin = j0 - m.window_right - d;
  if (m.window_left >= 0 && j1 + m.window_left - d < end) end = j1 + m.window_left - d;
  return {begin, end > begin ? end : begin};
}

}  // namespace mhsa::cpu::MHSA_ISA
