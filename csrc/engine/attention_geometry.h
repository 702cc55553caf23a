#pragma once
// What one attention call looks like to the tile engine: where each operand row is, which keys
// each query may see, and the dropout stream. Plain data shared by the op kernels (compiled
// once) and every instruction-set copy of the kernels, without ODR hazards.
#include <cstdint>

namespace mhsa::cpu {

// Where the D (or Dv) contiguous values of one operand row start: head h at sequence position p
// of batch n is at base + n * batch + p * seq + h * head elements. Every operand (Q, K, V, the
// output, their gradients) has its own layout, so the kernels read the self-attention op's
// packed QKV rows and SDPA's (N, H, L, D) tensors in place alike.
struct OperandLayout {
  int64_t batch = 0, seq = 0, head = 0;
  int64_t at(int64_t n, int64_t p, int64_t h) const { return n * batch + p * seq + h * head; }
};

// L queries attend to S keys; H query heads share H_kv key/value heads (grouped-query
// attention: query head h reads key/value head h / (H / H_kv)). Q and K rows have D values,
// V and output rows Dv.
struct AttentionGeometry {
  int64_t N, L, S, H, H_kv, D, Dv;
  OperandLayout q, k, v, out;
  int64_t kv_head(int64_t h) const { return h / (H / H_kv); }
};

// The self-attention ops' geometry: Q, K and V of head h at columns h*D, E + h*D and 2E + h*D
// of the packed projection qkv (rows like x: row(n, l) = n * L + l with batch_first, l * N + n
// without), the output (context) at column h*D of E-column rows laid out the same way.
inline AttentionGeometry self_attention_geometry(int64_t N, int64_t L, int64_t E, int64_t H,
                                                 bool batch_first) {
  const int64_t D = E / H;
  const int64_t batch_rows = batch_first ? L : 1, seq_rows = batch_first ? 1 : N;
  const OperandLayout qkv{batch_rows * 3 * E, seq_rows * 3 * E, D};
  const OperandLayout out{batch_rows * E, seq_rows * E, D};
  return AttentionGeometry{N, L, L, H, H, D, D, qkv, qkv, qkv, out};
}

// The masks of one call as raw pointers: bool masks (true = may not attend) or acc_t values
// added to the scores. attn_mask's row i of head (n, h) starts at attn_layout.at(n, i, h) and
// has S contiguous entries (stride 0 where it broadcasts); key_padding_mask is (N, S).
template <typename acc_t>
struct MaskView {
  const bool* attn_bool = nullptr;
  const acc_t* attn_add = nullptr;
  OperandLayout attn_layout;
  const bool* kpm_bool = nullptr;
  const acc_t* kpm_add = nullptr;
  bool causal = false;
  // Sliding window: query i sees key j only if i - window_left <= j <= i + window_right
  // (-1: unbounded on that side). Applied on top of every other mask; tiles outside the band
  // are never computed.
  int64_t window_left = -1, window_right = -1;
  // The causal mask and the window compare key j with query position i + diagonal: a block of
  // a longer sequence (the ring's) whose first query sits `diagonal` positions after its first
  // key. 0 is SDPA's top-left alignment.
  int64_t diagonal = 0;
  // Optional (N,) count of leading keys that may be visible in batch n: keys j >= key_end[n]
  // are masked (a right-padded key_padding_mask), and tiles made only of them are skipped.
  const int64_t* key_end = nullptr;
  bool windowed() const { return window_left >= 0 || window_right >= 0; }
  bool additive() const { return attn_add || kpm_add; }  // masks that add to the scaled scores
  bool any() const {
    return causal || attn_bool || attn_add || kpm_bool || kpm_add || windowed() || key_end;
  }
};

// Dropout on the attention probabilities: the keep bit of (n, h, i, j) is a pure function of
// (seed, n, h, i, j) (counter-based Philox), so backward regenerates it. The kernels apply a
// 0/1 mask, O = sum_j keep_ij P_ij V_j, and the op kernels apply 1 / (1 - p) once, outside
// (forward: to the output projection; backward: to the incoming dO). So a saturated row whose
// key j is kept has O exactly V_j, Dsum = dO . O matches dP bitwise, and its dS is exactly 0.
struct DropoutParams {
  bool enabled = false;
  double p = 0.0;
  uint64_t seed = 0;
  // The keep bit of (n, h, i, j) is drawn at query row_offset + i and key col_offset + j of a
  // (rows x cols) plane per head: a block of a longer sequence (the ring's) draws the bits of
  // its place in the whole. rows, cols <= 0: the call's own L and S.
  int64_t rows = 0, cols = 0, row_offset = 0, col_offset = 0;
  // 1 / (1 - p), or 0 for p = 1 (everything dropped).
  double keep_scale() const { return p >= 1.0 ? 0.0 : 1.0 / (1.0 - p); }
};

}  // namespace mhsa::cpu
