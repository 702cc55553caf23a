#pragma once
// The order in which the backward's key blocks add their shares of dQ, per instruction set:
// straight into the fp32 gradient, in key-block order, whatever thread computes them (see
// attention_backward_kernel.cpp), so the bits do not depend on the thread count.
#include "engine/per_isa.h"

#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>

#include "engine/attention_geometry.h"
#include "engine/buffer.h"
#include "engine/masks.h"
#include "kernels/attention_args.h"

namespace mhsa::cpu::MHSA_ISA {

// The aligned query blocks [qb * block_q, (qb + 1) * block_q) that key block jb of batch n
// touches: those overlapping visible_query_range (the same test decides the dQ turn order).
template <typename acc_t>
inline PositionRange touched_query_blocks(const AttentionGeometry& g, const MaskView<acc_t>& m,
                                          const TileSizes& t, int64_t n, int64_t jb) {
  const int64_t j0 = jb * t.backward_kv, j1 = j0 + t.backward_kv < g.S ? j0 + t.backward_kv : g.S;
  const PositionRange q = visible_query_range(g, m, n, j0, j1);
  if (q.empty()) return {0, 0};
  return {q.begin / t.backward_q, (q.end + t.backward_q - 1) / t.backward_q};
}

inline int64_t key_block_count(const AttentionGeometry& g, const TileSizes& t) {
  return (g.S + t.backward_kv - 1) / t.backward_kv;
}
inline int64_t query_block_count(const AttentionGeometry& g, const TileSizes& t) {
  return (g.L + t.backward_q - 1) / t.backward_q;
}

inline int64_t dq_turn_count(const AttentionGeometry& g, const TileSizes& t) {
  return g.N * g.H * query_block_count(g, t);
}

// The dQ shares of the key blocks are added straight into the fp32 gradient in key-block order,
// whatever thread computes them: each (n, h, aligned query block) has a turn counter naming the
// key block that adds next. A task waits only for that one GEMM, so neighbouring key blocks
// pipeline; the bits do not depend on the thread count, and no per-thread dQ copies exist.
// prepare_dq_order: the first key block to touch each query block (the key blocks touching a
// query block are consecutive: the visible ranges only move forward with the key block).
template <typename scalar_t>
void prepare_dq_order(const BackwardArgs<scalar_t>& a) {
  const AttentionGeometry& g = a.g;
  const int64_t q_blocks = query_block_count(g, a.tiles), kv_blocks = key_block_count(g, a.tiles);
  for (int64_t n = 0; n < g.N; ++n) {
    int64_t* turn = a.dq_turn + n * g.H * q_blocks;
    fill(turn, q_blocks, int64_t(-1));
    for (int64_t jb = kv_blocks - 1; jb >= 0; --jb) {
      const PositionRange qbs = touched_query_blocks(g, a.masks, a.tiles, n, jb);
      for (int64_t qb = qbs.begin; qb < qbs.end; ++qb) turn[qb] = jb;
    }
    for (int64_t h = 1; h < g.H; ++h) {
      for (int64_t qb = 0; qb < q_blocks; ++qb) turn[h * q_blocks + qb] = turn[qb];
    }
  }
}

// Waits until it is key block jb's turn to add to this query block's dQ (see prepare_dq_order).
// Returns false if another task failed (then nothing more will be added).
inline bool wait_for_turn(const int64_t* turn, int64_t jb, const int* abort) {
  int64_t spins = 0;
  while (__atomic_load_n(turn, __ATOMIC_ACQUIRE) != jb) {
    if (__atomic_load_n(abort, __ATOMIC_RELAXED) != 0) return false;
    if (++spins < 1024) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    } else {
      sched_yield();  // an oversubscribed machine: let the thread we wait for run
    }
  }
  return true;
}

}  // namespace mhsa::cpu::MHSA_ISA
