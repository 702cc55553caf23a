#pragma once
// The arguments of the attention kernels' tasks (compiled once per instruction set), filled by
// the op kernels (compiled once), and how the work is cut into tasks. Plain data: the struct
// layouts are shared by every instruction-set copy without ODR hazards.
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "engine/attention_geometry.h"

namespace mhsa::cpu {

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
  const scalar_t *q, *k, *v;      // at g.q, g.k, g.v
  const float* keys_t = nullptr;  // K^T, (N, H_kv, D, S), or nullptr (cpu/transposed_keys.h)
  scalar_t* context;              // at g.out
  acc_t* lse;                     // (N, H, L)
  scalar_t* weights = nullptr;    // (N, H, L, S) per-head weights, or
  acc_t* weights_avg = nullptr;   // (N, L, S) head-averaged weights, accumulated
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
  // Where set (zeroed by the caller), the team's threads claim tasks from this counter in
  // increasing order, each the next one free, instead of dealing them round-robin: tasks differ
  // in size (causal masks, windows, padding), and a fixed deal left threads idle.
  int64_t* next_task = nullptr;
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
