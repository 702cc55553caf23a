// Attention backward, FlashAttention-2 order, compiled once per instruction set. The
// probabilities are recomputed tile by tile as exp(score - lse) from Q, K and the saved
// log-sum-exp; the softmax backward needs only Dsum_i = rowsum(dO_i * O_i) per query row (equal
// to rowsum(P * dP), also under dropout). A task is (n, key/value head, key block): it owns its
// dK and dV rows, accumulated over the query heads of its group, and adds its share of dQ.
#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "engine/buffer.h"
#include "engine/conversions.h"
#include "engine/dot_tile.h"
#include "engine/dropout.h"
#include "engine/masks.h"
#include "engine/score_tile.h"
#include "engine/tile_gemm.h"
#include "engine/transpose_tile.h"
#include "engine/vector_math.h"
#include "kernels/attention_kernels.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

template <typename scalar_t>
struct BackwardScratch {
  using acc_t = at::opmath_type<scalar_t>;
  Buffer<acc_t> probs, dropped, grad;  // P, dropout(P), dP then dS
  Buffer<acc_t> keep;                  // the dropout factors of the tile
  Buffer<scalar_t> cast;
  // dK_j^T and dV_j^T (D and Dv rows of backward_kv): accumulated transposed, so that their
  // products read Q_i^T and dO_i^T (rows x D) instead of transposing P and dS (rows x keys).
  Buffer<acc_t> grad_k, grad_v;
  Buffer<scalar_t> q_t, grad_out_t;    // Q_i^T and dO_i^T of the tile
  Buffer<float> key_pack, value_pack;  // K_j and V_j of the key block (score_pack, dp_tile)
  PackedB16 value_pack16;              // V_j^T for the bfloat16 micro-kernel (dp_on_tile_gemm)
  BackwardScratch(const TileSizes& t, const AttentionGeometry& g)
      : probs(t.backward_q * t.backward_kv),
        dropped(t.backward_q * t.backward_kv),
        grad(t.backward_q * t.backward_kv),
        keep(t.backward_q * t.backward_kv),
        cast(std::is_same_v<scalar_t, acc_t> ? 0 : t.backward_q * t.backward_kv),
        grad_k(t.backward_kv * g.D),
        grad_v(t.backward_kv * g.Dv),
        q_t(t.backward_q * g.D),
        grad_out_t(t.backward_q * g.Dv),
        key_pack(dot_pack_size(t.backward_kv, g.D)),
        value_pack(dot_pack_size(t.backward_kv, g.Dv)) {}
};

// Probabilities of a tile from the saved log-sum-exp (the exact softmax of the forward pass:
// the scores are bitwise the forward's, see dot_tile.h), K_j read from key_pack.
template <typename scalar_t, typename acc_t>
void probabilities_tile(acc_t* S, int64_t ld, const BackwardArgs<scalar_t>& a, int64_t n, int64_t h,
                        int64_t i0, int64_t i1, int64_t j0, int64_t j1, const float* key_pack) {
  const AttentionGeometry& g = a.g;
  bool scale_deferred = false;
  score_tile(S, ld, a.q, a.k, g, a.masks, a.scale, n, h, i0, i1, j0, j1, key_pack, j1 - j0,
             &scale_deferred);
  const acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  for (int64_t r = 0; r < i1 - i0; ++r) {
    if (scale_deferred) scale_row(S + r * ld, j1 - j0, a.scale);
    exp_shift_sum(S + r * ld, j1 - j0, lse[r]);
  }
}

// Row i of the incoming gradient of the returned weights for head (n, h): the per-head row, or
// the averaged row, which reaches every head divided by H (see grad_weights_scale).
template <typename scalar_t>
inline const scalar_t* grad_weights_row(const BackwardArgs<scalar_t>& a, int64_t n, int64_t h,
                                        int64_t i) {
  const AttentionGeometry& g = a.g;
  if (a.grad_weights_averaged) return a.grad_weights + (n * g.L + i) * g.S;
  return a.grad_weights + ((n * g.H + h) * g.L + i) * g.S;
}
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline acc_t grad_weights_scale(const BackwardArgs<scalar_t>& a) {
  return a.grad_weights_averaged ? acc_t(1) / static_cast<acc_t>(a.g.H) : acc_t(1);
}

// Whether dP = dO_i V_j^T (and Dsum with it) runs on the tile GEMM from V_j^T, made once per
// key block, rather than on dot_tile's chain: float32 where the tile GEMM sums as that chain
// does (see score_tile.h), bfloat16 on its micro-kernel (faster training: see
// docs/performance-notes.md).
template <typename scalar_t>
inline bool dp_on_tile_gemm() {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return tile_gemm_bf16_packs_b();
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    return tile_gemm_f32_chain_order();
  } else {
    return false;
  }
}

// sum_c p[c] * dw[c] in kSumLanes running partial sums (independent chains the compiler
// vectorizes, where one running sum would wait on each add), combined in a fixed order: the
// same bits for any thread count.
template <typename scalar_t, typename acc_t>
inline acc_t weighted_row_sum(const acc_t* p, const scalar_t* dw, int64_t n) {
  constexpr int kSumLanes = 16;
  acc_t part[kSumLanes] = {};
  int64_t c = 0;
  for (; c + kSumLanes <= n; c += kSumLanes) {
    for (int k = 0; k < kSumLanes; ++k) part[k] += p[c + k] * to_acc(dw[c + k]);
  }
  for (int k = 0; c < n; ++c, ++k) part[k] += p[c] * to_acc(dw[c]);
  acc_t sum = 0;
  for (int k = 0; k < kSumLanes; ++k) sum += part[k];
  return sum;
}

template <typename scalar_t>
void dsum_rows(const BackwardArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kRows = 64;
  const AttentionGeometry& g = a.g;
  const bool on_tile_gemm = dp_on_tile_gemm<scalar_t>();
  Buffer<scalar_t> context_t(on_tile_gemm ? g.Dv * kRows : 0);
  Buffer<acc_t> products(on_tile_gemm ? kRows * kRows : 0);
  const scalar_t* dO = a.dsum_grad != nullptr ? a.dsum_grad : a.grad_context;
  for (int64_t t = begin; t < end;) {
    const int64_t n = t / g.L, i0 = t % g.L;
    int64_t rows = g.L - i0 < end - t ? g.L - i0 : end - t;
    rows = rows < kRows ? rows : kRows;
    // Dsum is computed the way dP = dO V^T is (dp_tile): a row whose output is exactly one value
    // row V_j gets Dsum == dP_ij bitwise, so its dS is exactly zero. On the tile GEMM: the
    // diagonal of dO_i O_i^T (each element's bits do not depend on its place in the tile).
    for (int64_t h = 0; h < g.H; ++h) {
      for (int64_t r = 0; r < rows; ++r)  // dQ accumulates from zero
        fill(a.grad_q + a.grad_q_layout.at(n, i0 + r, h), g.D, acc_t(0));
      const scalar_t* dO_i = dO + a.grad_out.at(n, i0, h);
      const scalar_t* O_i = a.context + g.out.at(n, i0, h);
      acc_t* dsum = a.dsum + (n * g.H + h) * g.L + i0;
      if (on_tile_gemm) {
        transpose_tile(O_i, g.out.seq, rows, g.Dv, context_t.data(), rows);
        tile_gemm(Trans::No, Trans::No, rows, rows, g.Dv, acc_t(1), dO_i, a.grad_out.seq,
                  context_t.data(), rows, acc_t(0), products.data(), rows);
        for (int64_t r = 0; r < rows; ++r) dsum[r] = products[r * rows + r];
      } else {
        for (int64_t r = 0; r < rows; ++r)
          dsum[r] = dot_chain(dO_i + r * a.grad_out.seq, O_i + r * g.out.seq, g.Dv);
      }
    }
    t += rows;
  }
  tile_gemm_release();
}

int64_t weights_term_task_count(const AttentionGeometry& g, const TileSizes& t) {
  return g.N * g.H * ((g.L + t.backward_q - 1) / t.backward_q);
}

// When the returned weights W = dropout(P) received a gradient dW, Dsum_i also gets
// rowsum(W * dW): one more sweep over the keys of each query block.
template <typename scalar_t>
void weights_term_tasks(const BackwardArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_q = a.tiles.backward_q, block_kv = a.tiles.backward_kv;
  const int64_t q_blocks = (g.L + block_q - 1) / block_q;
  Buffer<acc_t> S(block_q * block_kv), factors(block_kv);
  Buffer<float> key_pack(dot_pack_size(block_kv, g.D));
  const acc_t keep_scale = static_cast<acc_t>(a.dropout.keep_scale());
  const acc_t dw_scale = grad_weights_scale(a);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % q_blocks, h = (t / q_blocks) % g.H, n = t / (q_blocks * g.H);
    const int64_t i0 = qb * block_q, i1 = i0 + block_q < g.L ? i0 + block_q : g.L;
    const PositionRange keys = visible_key_range(g, a.masks, n, i0, i1);
    for (int64_t j0 = keys.begin; j0 < keys.end; j0 += block_kv) {
      const int64_t j1 = j0 + block_kv < keys.end ? j0 + block_kv : keys.end;
      score_pack(g, a.k + g.k.at(n, j0, g.kv_head(h)), g.k.seq, j1 - j0, key_pack.data());
      probabilities_tile(S.data(), block_kv, a, n, h, i0, i1, j0, j1, key_pack.data());
      for (int64_t r = 0; r < i1 - i0; ++r) {
        acc_t* srow = S.data() + r * block_kv;
        if (a.dropout.enabled)
          dropout_row(srow, factors.data(), a.dropout, g, n, h, i0 + r, j0, j1, keep_scale);
        const scalar_t* dw = grad_weights_row(a, n, h, i0 + r) + j0;
        a.dsum[(n * g.H + h) * g.L + i0 + r] += dw_scale * weighted_row_sum(srow, dw, j1 - j0);
      }
    }
  }
  tile_gemm_release();  // the scores may have come from the bfloat16 micro-kernel
}

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

int64_t key_block_count(const AttentionGeometry& g, const TileSizes& t) {
  return (g.S + t.backward_kv - 1) / t.backward_kv;
}
int64_t query_block_count(const AttentionGeometry& g, const TileSizes& t) {
  return (g.L + t.backward_q - 1) / t.backward_q;
}

int64_t dq_turn_count(const AttentionGeometry& g, const TileSizes& t) {
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

// out[d] = sum over the columns c < cols of m[d * ld + c], d < D, columns summed in order (the
// rows of the transposed matrix, as sum_rows sums them).
template <typename acc_t>
inline void sum_columns(const acc_t* m, int64_t ld, int64_t D, int64_t cols, acc_t* out) {
  for (int64_t d = 0; d < D; ++d) {
    acc_t sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += m[d * ld + c];
    out[d] = sum;
  }
}

// out[d] = sum over the rows r of m[r * ld + d], d < D, rows summed in order.
template <typename acc_t>
inline void sum_rows(const acc_t* m, int64_t ld, int64_t rows, int64_t D, acc_t* out) {
  fill(out, D, acc_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* row = m + r * ld;
    for (int64_t d = 0; d < D; ++d) out[d] += row[d];
  }
}

// V_j of the key block, made ready once for dp_tile: V_j^T for the tile GEMM (packed for the
// bfloat16 micro-kernel), or dot_pack's panels for dot_tile.
template <typename scalar_t>
inline void pack_values_for_dp(bool on_tile_gemm, BackwardScratch<scalar_t>& s, const scalar_t* v,
                               int64_t ld, int64_t cols, int64_t D) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (on_tile_gemm) return s.value_pack16.pack(Trans::Yes, v, ld, D, cols);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (on_tile_gemm) return transpose_tile(v, ld, cols, D, s.value_pack.data(), cols);
  }
  dot_pack(v, ld, cols, D, s.value_pack.data());
}

// dP[rows, cols] (row stride ldp) = dO_i V_j^T from the V_j that pack_values_for_dp packed.
template <typename scalar_t, typename acc_t>
inline void dp_tile(bool on_tile_gemm, BackwardScratch<scalar_t>& s, int64_t rows, int64_t cols,
                    int64_t Dv, const scalar_t* dO, int64_t ld_dO, const scalar_t* v, int64_t ldv,
                    acc_t* dP, int64_t ldp) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (on_tile_gemm)
      return tile_gemm(Trans::No, rows, Dv, 1.0f, dO, ld_dO, s.value_pack16, 0.0f, dP, ldp);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (on_tile_gemm)
      return tile_gemm(Trans::No, Trans::No, rows, cols, Dv, 1.0f, dO, ld_dO, s.value_pack.data(),
                       cols, 0.0f, dP, ldp);
  }
  dot_tile(rows, cols, Dv, acc_t(1), dO, ld_dO, v, ldv, s.value_pack.data(), dP, ldp);
}

// The share of query head h (batch n) in dK and dV of key rows j0..j1 (added to s.grad_k and
// s.grad_v), and this key block's share of h's dQ, added to grad_q in key-block order. With
// dropout, dO is the gradient of the 0/1-masked O = sum_j keep_ij P_ij V_j (see DropoutParams):
// dV_j = sum_i keep_ij P_ij dO_i and dP_ij = keep_ij (dO_i . V_j + dW_ij / (1 - p)).
template <typename scalar_t>
void attention_backward_head(const BackwardArgs<scalar_t>& a, BackwardScratch<scalar_t>& s,
                             int64_t n, int64_t h, int64_t jb, bool dp_on_gemm) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_q = a.tiles.backward_q, block_kv = a.tiles.backward_kv;
  const int64_t j0 = jb * block_kv, j1 = j0 + block_kv < g.S ? j0 + block_kv : g.S;
  const int64_t D = g.D, Dv = g.Dv, cols = j1 - j0, ld = block_kv;
  const int64_t kv_blocks = key_block_count(g, a.tiles);
  const int64_t q_blocks = query_block_count(g, a.tiles);
  int64_t* turns = a.dq_turn + (n * g.H + h) * q_blocks;
  const scalar_t* k = a.k + g.k.at(n, j0, g.kv_head(h));
  const scalar_t* v = a.v + g.v.at(n, j0, g.kv_head(h));
  acc_t* grad_k = s.grad_k.data();
  acc_t* grad_v = s.grad_v.data();
  acc_t* P = s.probs.data();
  acc_t* dP = s.grad.data();
  const acc_t keep_scale = static_cast<acc_t>(a.dropout.keep_scale());
  // What the incoming gradient of the returned weights is multiplied by on its way into dP.
  const acc_t weights_grad_scale =
      (a.dropout.enabled ? keep_scale : acc_t(1)) * grad_weights_scale(a);

  // Only the queries that can see this key block (causal mask, sliding window, padding), by
  // aligned query blocks (the units of the dQ turn order), clipped to those queries.
  const PositionRange queries = visible_query_range(g, a.masks, n, j0, j1);
  const PositionRange touched = touched_query_blocks(g, a.masks, a.tiles, n, jb);
  const PositionRange next_touched = jb + 1 < kv_blocks
                                         ? touched_query_blocks(g, a.masks, a.tiles, n, jb + 1)
                                         : PositionRange{0, 0};
  for (int64_t qb = touched.begin; qb < touched.end; ++qb) {
    const int64_t i0 = qb * block_q > queries.begin ? qb * block_q : queries.begin;
    const int64_t i1 = (qb + 1) * block_q < queries.end ? (qb + 1) * block_q : queries.end;
    const int64_t rows = i1 - i0;
    probabilities_tile(P, ld, a, n, h, i0, i1, j0, j1, s.key_pack.data());
    const scalar_t* q = a.q + g.q.at(n, i0, h);
    const scalar_t* dO = a.grad_context + a.grad_out.at(n, i0, h);
    // The 0/1 dropout mask is generated once per tile and used twice: for the masked P and
    // for the gradient flowing back through it.
    const acc_t* Pd = P;
    acc_t* keep = s.keep.data();
    if (a.dropout.enabled) {
      acc_t* dropped = s.dropped.data();
      for (int64_t r = 0; r < rows; ++r) {
        dropout_factors(keep + r * ld, a.dropout, g, n, h, i0 + r, j0, j1, acc_t(1));
        for (int64_t c = 0; c < cols; ++c) {
          dropped[r * ld + c] = keep[r * ld + c] == acc_t(0) ? acc_t(0) : P[r * ld + c];
        }
      }
      Pd = dropped;
    }
    // dV_j^T += dO_i^T (keep * P)
    transpose_tile(dO, a.grad_out.seq, rows, Dv, s.grad_out_t.data(), rows);
    tile_gemm(Trans::No, Trans::No, Dv, cols, rows, acc_t(1), s.grad_out_t.data(), rows,
              as_gemm_input(Pd, rows * ld, s.cast.data()), ld, acc_t(1), grad_v, ld);
    // dP = dO_i V_j^T (+ the gradient of the returned weights), back through dropout
    dp_tile(dp_on_gemm, s, rows, cols, Dv, dO, a.grad_out.seq, v, g.v.seq, dP, ld);
    const acc_t* dsum = a.dsum + (n * g.H + h) * g.L + i0;
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* dprow = dP + r * ld;
      const acc_t* prow = P + r * ld;
      if (a.grad_weights != nullptr) {
        const scalar_t* dw = grad_weights_row(a, n, h, i0 + r) + j0;
        for (int64_t c = 0; c < cols; ++c) dprow[c] += weights_grad_scale * to_acc(dw[c]);
      }
      if (a.dropout.enabled) {
        const acc_t* f = keep + r * ld;
        for (int64_t c = 0; c < cols; ++c) dprow[c] = f[c] == acc_t(0) ? acc_t(0) : dprow[c];
      }
      // dS = P * (dP - Dsum_i): zero wherever P is zero (masked keys, fully masked rows). Stored
      // times the softmax scale, which both of its GEMMs below apply (a GEMM with alpha != 1
      // costs the tile GEMMs an extra pass over their output).
      const acc_t row_dsum = dsum[r];
      for (int64_t c = 0; c < cols; ++c) dprow[c] = a.scale * (prow[c] * (dprow[c] - row_dsum));
    }
    const scalar_t* dS = as_gemm_input(dP, rows * ld, s.cast.data());
    // dK_j^T += scale * Q_i^T dS ; dQ_i += scale * dS K_j (the scale is inside dS)
    transpose_tile(q, g.q.seq, rows, D, s.q_t.data(), rows);
    tile_gemm(Trans::No, Trans::No, D, cols, rows, acc_t(1), s.q_t.data(), rows, dS, ld, acc_t(1),
              grad_k, ld);
    // dQ_i += scale * dS K_j, in key-block order: wait for this key block's turn, add, pass
    // the turn to the next key block (if it touches this query block; none is left if not).
    if (!wait_for_turn(turns + qb, jb, a.abort)) return;
    tile_gemm(Trans::No, Trans::No, rows, D, cols, acc_t(1), dS, ld, k, g.k.seq, acc_t(1),
              a.grad_q + a.grad_q_layout.at(n, i0, h), a.grad_q_layout.seq);
    const bool next_adds = qb >= next_touched.begin && qb < next_touched.end;
    if (!next_adds && a.bias_sums_q != nullptr) {
      // The last share of dQ for this query block: its rows (all of the aligned block, some
      // of which earlier key blocks may have been the only ones to reach) are final.
      const int64_t b0 = qb * block_q, b1 = b0 + block_q < g.L ? b0 + block_q : g.L;
      sum_rows(a.grad_q + a.grad_q_layout.at(n, b0, h), a.grad_q_layout.seq, b1 - b0, D,
               a.bias_sums_q + (n * q_blocks + qb) * g.H * D + h * D);
    }
    __atomic_store_n(turns + qb, next_adds ? jb + 1 : int64_t(-1), __ATOMIC_RELEASE);
  }
}

// dK and dV of key rows j0..j1 of key/value head (n, hk): the shares of the query heads that
// read it, each adding its share of dQ (see attention_backward_head).
template <typename scalar_t>
void attention_backward_block(const BackwardArgs<scalar_t>& a, BackwardScratch<scalar_t>& s,
                              int64_t n, int64_t hk, int64_t jb) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_kv = a.tiles.backward_kv;
  const int64_t j0 = jb * block_kv, j1 = j0 + block_kv < g.S ? j0 + block_kv : g.S;
  const int64_t D = g.D, Dv = g.Dv, cols = j1 - j0;
  const scalar_t* k = a.k + g.k.at(n, j0, hk);
  const scalar_t* v = a.v + g.v.at(n, j0, hk);
  acc_t* grad_k = s.grad_k.data();  // dK_j^T, D x block_kv
  acc_t* grad_v = s.grad_v.data();  // dV_j^T, Dv x block_kv
  fill(grad_k, D * block_kv, acc_t(0));
  fill(grad_v, Dv * block_kv, acc_t(0));
  // K_j^T and V_j^T are packed once and serve every query block of every head of the group.
  score_pack(g, k, g.k.seq, cols, s.key_pack.data());
  const bool dp_on_gemm = dp_on_tile_gemm<scalar_t>();
  pack_values_for_dp(dp_on_gemm, s, v, g.v.seq, cols, Dv);
  const int64_t group = g.H / g.H_kv;
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    attention_backward_head(a, s, n, h, jb, dp_on_gemm);
    if (__atomic_load_n(a.abort, __ATOMIC_RELAXED) != 0) return;
  }
  if (a.bias_sums_kv != nullptr) {
    const int64_t width = g.H_kv * (D + Dv), kv_blocks = key_block_count(g, a.tiles);
    acc_t* sums = a.bias_sums_kv + (n * kv_blocks + jb) * width;
    sum_columns(grad_k, block_kv, D, cols, sums + hk * D);
    sum_columns(grad_v, block_kv, Dv, cols, sums + g.H_kv * D + hk * Dv);
  }
  transpose_tile(grad_k, block_kv, D, cols, a.grad_k + a.grad_k_layout.at(n, j0, hk),
                 a.grad_k_layout.seq);
  transpose_tile(grad_v, block_kv, Dv, cols, a.grad_v + a.grad_v_layout.at(n, j0, hk),
                 a.grad_v_layout.seq);
}

int64_t backward_task_count(const AttentionGeometry& g, const TileSizes& t) {
  return g.N * g.H_kv * key_block_count(g, t);
}

// Tasks in increasing order (t = (n * H_kv + hk) * kv_blocks + jb), claimed from a.next_task or
// dealt thread, thread + threads, ...: a task only ever waits for one with a smaller index, which
// is claimed before it, so the smallest unfinished task can always proceed (no deadlock).
template <typename scalar_t>
void backward_tasks(const BackwardArgs<scalar_t>& a, int64_t thread, int64_t threads) {
  const AttentionGeometry& g = a.g;
  const int64_t kv_blocks = key_block_count(g, a.tiles);
  const int64_t tasks = backward_task_count(g, a.tiles);
  BackwardScratch<scalar_t> scratch(a.tiles, g);
  auto next = [&](int64_t t) {
    return a.next_task != nullptr ? __atomic_fetch_add(a.next_task, 1, __ATOMIC_RELAXED)
                                  : t + threads;
  };
  for (int64_t t = a.next_task != nullptr ? next(0) : thread; t < tasks; t = next(t)) {
    const int64_t jb = t % kv_blocks, hk = (t / kv_blocks) % g.H_kv, n = t / (kv_blocks * g.H_kv);
    attention_backward_block(a, scratch, n, hk, jb);
    if (__atomic_load_n(a.abort, __ATOMIC_RELAXED) != 0) break;
  }
  tile_gemm_release();
}

}  // namespace

template <typename scalar_t>
void add_backward_kernels(AttentionKernels<scalar_t>& kernels) {
  kernels.dsum_rows = &dsum_rows<scalar_t>;
  kernels.weights_term_tasks = &weights_term_tasks<scalar_t>;
  kernels.weights_term_task_count = &weights_term_task_count;
  kernels.prepare_dq_order = &prepare_dq_order<scalar_t>;
  kernels.dq_turn_count = &dq_turn_count;
  kernels.backward_tasks = &backward_tasks<scalar_t>;
  kernels.backward_task_count = &backward_task_count;
}

template void add_backward_kernels<float>(AttentionKernels<float>&);
template void add_backward_kernels<double>(AttentionKernels<double>&);
template void add_backward_kernels<c10::BFloat16>(AttentionKernels<c10::BFloat16>&);
template void add_backward_kernels<c10::Half>(AttentionKernels<c10::Half>&);

}  // namespace mhsa::cpu::MHSA_ISA
