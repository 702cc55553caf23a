#pragma once
// Plain data passed from the op kernels (compiled once) to the attention kernels (compiled once
// per instruction set, see cpu_capability.h). Nothing here runs vector code, so the same
// struct layouts are shared by every ISA variant without ODR hazards.
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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
  bool any() const {
    return causal || attn_bool || attn_add || kpm_bool || kpm_add || windowed() || key_end;
  }
};

// Dropout on the attention probabilities: the keep decision of element (n, h, i, j) is a pure
// function of (seed, n, h, i, j) (counter-based Philox), so backward regenerates it.
//
// Inside the attention the kept probabilities are multiplied by 1 (a 0/1 mask): the kernels
// compute C = sum_j keep_ij P_ij V_j, and the op kernels apply 1 / (1 - p) once, to the output
// projection (forward) and to the incoming context gradient (backward). So C is exactly V_j
// for a saturated row whose key j is kept, Dsum = dC . C matches dP bitwise there, and the
// softmax gradient of such a row is exactly zero (see dot_chain in attention_tile.h).
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

// Tile sizes. Forward: query blocks of forward_q rows against key blocks of forward_k columns.
// Backward: key blocks of backward_kv rows are the unit of work, each sweeping query blocks of
// backward_q rows. Larger tiles amortize the per-call GEMM overhead (operand copies and packing);
// the fp32 score tile (q x k) should stay in L2 beside the accumulators. See choose_tile_sizes.
struct TileSizes {
  int64_t forward_q = 64, forward_k = 256, backward_q = 64, backward_kv = 128;
};

// Tile sizes for sequence length L (MHSA_TILES="fq,fk,bq,bkv" overrides, for tuning).
TileSizes choose_tile_sizes(int64_t L);

template <typename scalar_t>
struct ForwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  AttentionGeometry g;
  const scalar_t *q, *k, *v;     // at g.q, g.k, g.v
  scalar_t* context;             // at g.out
  acc_t* lse;                    // (N, H, L)
  scalar_t* weights = nullptr;   // (N, H, L, S) per-head weights, or
  acc_t* weights_avg = nullptr;  // (N, L, S) head-averaged weights, accumulated
  MaskView<acc_t> masks;
  DropoutParams dropout;
  acc_t scale;
  TileSizes tiles;
};

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  AttentionGeometry g;
  const scalar_t *q, *k, *v;     // at g.q, g.k, g.v
  const scalar_t* context;       // O, at g.out
  const scalar_t* grad_context;  // dO, at grad_out
  OperandLayout grad_out;
  // Dsum = rowsum(dO * O) reads this gradient instead of dO where the two differ (the SDPA
  // op's dropout: dO is then the gradient of the unscaled context, see DropoutParams).
  const scalar_t* dsum_grad = nullptr;
  const acc_t* lse;                        // (N, H, L)
  acc_t* dsum;                             // (N, H, L) scratch
  const scalar_t* grad_weights = nullptr;  // (N, H, L, S) or (N, L, S), contiguous
  bool grad_weights_averaged = false;
  // dQ (accumulated from zero by the kernels), dK and dV, at the layouts below.
  acc_t *grad_q, *grad_k, *grad_v;
  OperandLayout grad_q_layout, grad_k_layout, grad_v_layout;
  // The order of the dQ sums (see attention_backward_kernel.cpp): for each (n, h, aligned
  // query block) the key block whose turn it is to add its dQ share (-1: none left).
  int64_t* dq_turn;
  int* abort;  // set when a task failed, so no task waits for it forever
  // The input-projection bias gradient is the column sums of dQ, dK, dV, summed per block of
  // rows while it is in cache (nullptr: not requested). Row n * q_blocks + qb of bias_sums_q
  // (H*D columns, zeroed by the caller) gets the final dQ rows of aligned query block qb; row
  // n * kv_blocks + jb of bias_sums_kv (H_kv*D + H_kv*Dv columns) the dK and dV rows of key
  // block jb. The op kernel adds the rows up in a fixed order (column_sums).
  acc_t* bias_sums_q = nullptr;
  acc_t* bias_sums_kv = nullptr;
  MaskView<acc_t> masks;
  DropoutParams dropout;
  acc_t scale;
  TileSizes tiles;
};

// Grain for at::parallel_for over tasks of about `task_flops` floating-point operations each:
// handing a second thread less than ~1 MFLOP costs more than it saves (an OpenMP wake-up and
// barrier), so small problems run on the calling thread.
inline int64_t parallel_grain(double task_flops) {
  constexpr double kMinFlopsPerChunk = 1 << 20;
  const double grain = kMinFlopsPerChunk / (task_flops > 1.0 ? task_flops : 1.0);
  return grain < 1.0 ? 1 : static_cast<int64_t>(grain + 1.0);
}

// Number of tasks the forward attention splits into; the op kernel hands ranges of them to
// threads. Head-averaged weights are accumulated over heads inside one task, so that no two
// threads write the same (N, L, L) entries; otherwise each (n, h, query block) is a task.
inline int64_t forward_task_count(const AttentionGeometry& g, const TileSizes& t,
                                  bool heads_inside) {
  return g.N * (heads_inside ? 1 : g.H) * ((g.L + t.forward_q - 1) / t.forward_q);
}

}  // namespace mhsa::cpu
