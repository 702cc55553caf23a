#pragma once
// Plain data passed from the op kernels (compiled once) to the attention kernels (compiled once
// per instruction set, see cpu_capability.h). Nothing here runs vector code, so the same
// struct layouts are shared by every ISA variant without ODR hazards.
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace mhsa::cpu {

// Rows of x, qkv and context are laid out like the input: row(n, l) = n * L + l with
// batch_first, l * N + n without. Q, K and V of head h are read in place at columns h*D,
// E + h*D and 2E + h*D of qkv; consecutive sequence positions are seq_rows() rows apart.
struct AttentionGeometry {
  int64_t N, L, E, H, D;
  bool batch_first;
  int64_t row(int64_t n, int64_t l) const { return batch_first ? n * L + l : l * N + n; }
  int64_t seq_rows() const { return batch_first ? 1 : N; }
};

// The masks of one call as raw pointers: bool masks (true = may not attend) or acc_t values
// added to the scores. attn_mask is (L, L) or (N*H, L, L); key_padding_mask is (N, L).
template <typename acc_t>
struct MaskView {
  const bool* attn_bool = nullptr;
  const acc_t* attn_add = nullptr;
  bool attn_per_head = false;
  const bool* kpm_bool = nullptr;
  const acc_t* kpm_add = nullptr;
  bool causal = false;
  // Sliding window: query i sees key j only if i - window_left <= j <= i + window_right
  // (-1: unbounded on that side). Applied on top of every other mask; tiles outside the band
  // are never computed.
  int64_t window_left = -1, window_right = -1;
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
  const scalar_t* qkv;
  scalar_t* context;
  acc_t* lse;                    // (N, H, L)
  scalar_t* weights = nullptr;   // (N, H, L, L) per-head weights, or
  acc_t* weights_avg = nullptr;  // (N, L, L) head-averaged weights, accumulated
  MaskView<acc_t> masks;
  DropoutParams dropout;
  acc_t scale;
  TileSizes tiles;
};

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  AttentionGeometry g;
  const scalar_t* qkv;
  const scalar_t* context;                 // O, rows like x, E columns
  const scalar_t* grad_context;            // dO, rows like x, E columns
  const acc_t* lse;                        // (N, H, L)
  acc_t* dsum;                             // (N, H, L) scratch
  const scalar_t* grad_weights = nullptr;  // (N, H, L, L) or (N, L, L), contiguous
  bool grad_weights_averaged = false;
  acc_t* grad_qkv;  // rows like x, 3E columns; dQ accumulates into its Q columns
  // The order of the dQ sums (see attention_backward_kernel.cpp): for each (n, h, aligned
  // query block) the key block whose turn it is to add its dQ share (-1: none left).
  int64_t* dq_turn;
  int* abort;  // set when a task failed, so no task waits for it forever
  // The input-projection bias gradient is the column sums of grad_qkv. The kernels sum each
  // block of rows while it is in cache, instead of a pass over grad_qkv afterwards (nullptr:
  // not requested). Row n * q_blocks + qb of bias_sums_q (E columns, zeroed by the caller)
  // gets the sums of the final dQ rows of aligned query block qb, from the key block that adds
  // last to it; row n * kv_blocks + jb of bias_sums_kv (2E columns) the sums of the dK and dV
  // rows of key block jb. The op kernel adds the rows up in a fixed order (column_sums).
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
