// Attention backward, FlashAttention-2 order, compiled once per instruction set. The
// probabilities are recomputed tile by tile as exp(score - lse) from Q, K and the saved
// log-sum-exp; the softmax backward needs only Dsum_i = rowsum(dO_i * O_i) per query row (equal
// to rowsum(P * dP), also under dropout). A task is (n, key/value head, key block): it owns its
// dK and dV rows, accumulated over the query heads of its group, and adds its share of dQ.
#include <algorithm>

#include "engine/buffer.h"
#include "engine/conversions.h"
#include "engine/dot_tile.h"
#include "engine/dropout.h"
#include "engine/masks.h"
#include "engine/score_tile.h"
#include "engine/tile_gemm.h"
#include "engine/vector_math.h"
#include "engine/vector_transpose.h"
#include "kernels/attention_kernels.h"
#include "kernels/dq_turn_order.h"

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
  ScoreKeyCache key_cache;             // 16-bit scores: the head's packed key blocks
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
                        int64_t i0, int64_t i1, int64_t j0, int64_t j1, const float* key_pack,
                        int64_t ld_pack, ScoreKeyCache* key_cache) {
  const AttentionGeometry& g = a.g;
  bool scale_deferred = false;
  score_tile(S, ld, a.q, a.k, g, a.masks, a.scale, n, h, i0, i1, j0, j1, key_pack, ld_pack,
             &scale_deferred, key_cache);
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

// Dsum of rows (at most kRows) as each row's own fused multiply-add chain over k from zero, with
// kLanes rows in the lanes of a vector, read from dO_i^T and O_i^T (Dv rows, row stride ld): the
// bits of dP's micro-kernel where tile_gemm_f32_chain_order() holds, as the diagonal of
// dO_i O_i^T on it was, without that GEMM's rows - 1 unused products per row.
inline void dsum_chains(const float* grad_out_t, const float* context_t, int64_t ld, int64_t rows,
                        int64_t Dv, float* dsum) {
  for (int64_t r0 = 0; r0 < rows; r0 += kLanes) {
    vfloat acc{};
    for (int64_t k = 0; k < Dv; ++k)
      acc = fused_multiply_add(load(grad_out_t + k * ld + r0), load(context_t + k * ld + r0), acc);
    if (rows - r0 >= kLanes) {
      store(dsum + r0, acc);
    } else {
      store_tail(dsum + r0, rows - r0, acc);
    }
  }
}

template <typename scalar_t>
void dsum_rows(const BackwardArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kRows = 64;
  const AttentionGeometry& g = a.g;
  const bool on_tile_gemm = dp_on_tile_gemm<scalar_t>();
  constexpr bool is_float = std::is_same_v<scalar_t, float>;
  static_assert(kRows % kLanes == 0, "dsum_chains reads whole vectors of the transposed rows");
  // On the tile GEMM: O_i^T; float32 also dO_i^T (both kRows columns, zeroed once: a last partial
  // vector of dsum_chains reads columns past rows), 16 bits the products dO_i O_i^T.
  const int64_t transposed_size = on_tile_gemm ? g.Dv * kRows : 0;
  Buffer<scalar_t> context_t(transposed_size), grad_out_t(is_float ? transposed_size : 0);
  Buffer<acc_t> products(on_tile_gemm && !is_float ? kRows * kRows : 0);
  if constexpr (is_float) {
    fill(context_t.data(), transposed_size, 0.0f);
    fill(grad_out_t.data(), transposed_size, 0.0f);
  }
  const scalar_t* dO = a.dsum_grad != nullptr ? a.dsum_grad : a.grad_context;
  for (int64_t t = begin; t < end;) {
    const int64_t n = t / g.L, i0 = t % g.L;
    int64_t rows = g.L - i0 < end - t ? g.L - i0 : end - t;
    rows = rows < kRows ? rows : kRows;
    // Dsum is computed the way dP = dO V^T is (dp_tile): a row whose output is exactly one value
    // row V_j gets Dsum == dP_ij bitwise, so its dS is exactly zero. On the tile GEMM: the
    // micro-kernel's own chains in float32 (dsum_chains), the diagonal of dO_i O_i^T in 16 bits
    // (each element's bits do not depend on its place in the tile).
    for (int64_t h = 0; h < g.H; ++h) {
      for (int64_t r = 0; r < rows; ++r)  // dQ accumulates from zero
        fill(a.grad_q + a.grad_q_layout.at(n, i0 + r, h), g.D, acc_t(0));
      const scalar_t* dO_i = dO + a.grad_out.at(n, i0, h);
      const scalar_t* O_i = a.context + g.out.at(n, i0, h);
      acc_t* dsum = a.dsum + (n * g.H + h) * g.L + i0;
      if (!on_tile_gemm) {
        for (int64_t r = 0; r < rows; ++r)
          dsum[r] = dot_chain(dO_i + r * a.grad_out.seq, O_i + r * g.out.seq, g.Dv);
      } else if constexpr (is_float) {
        transpose_rows(dO_i, a.grad_out.seq, rows, g.Dv, grad_out_t.data(), kRows);
        transpose_rows(O_i, g.out.seq, rows, g.Dv, context_t.data(), kRows);
        dsum_chains(grad_out_t.data(), context_t.data(), kRows, rows, g.Dv, dsum);
      } else {
        transpose_rows(O_i, g.out.seq, rows, g.Dv, context_t.data(), rows);
        tile_gemm(Trans::No, Trans::No, rows, rows, g.Dv, acc_t(1), dO_i, a.grad_out.seq,
                  context_t.data(), rows, acc_t(0), products.data(), rows);
        for (int64_t r = 0; r < rows; ++r) dsum[r] = products[r * rows + r];
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
  ScoreKeyCache key_cache;
  const acc_t keep_scale = static_cast<acc_t>(a.dropout.keep_scale());
  const acc_t dw_scale = grad_weights_scale(a);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % q_blocks, h = (t / q_blocks) % g.H, n = t / (q_blocks * g.H);
    const int64_t i0 = qb * block_q, i1 = i0 + block_q < g.L ? i0 + block_q : g.L;
    const PositionRange keys = visible_key_range(g, a.masks, n, i0, i1);
    for (int64_t j0 = keys.begin; j0 < keys.end; j0 += block_kv) {
      const int64_t j1 = j0 + block_kv < keys.end ? j0 + block_kv : keys.end;
      score_pack(g, a.k + g.k.at(n, j0, g.kv_head(h)), g.k.seq, j1 - j0, key_pack.data());
      probabilities_tile(S.data(), block_kv, a, n, h, i0, i1, j0, j1, key_pack.data(), j1 - j0,
                         &key_cache);
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

// The backward tiles of a key block start their columns at multiples of kColumnStep (see
// attention_backward_head): whole panels of dot_pack, whole pairs of 16-bit keys.
constexpr int64_t kColumnStep = 32;
static_assert(kColumnStep % kDotPanel == 0 && kColumnStep % 2 == 0);

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
    if (on_tile_gemm) return transpose_rows(v, ld, cols, D, s.value_pack.data(), cols);
  }
  dot_pack(v, ld, cols, D, s.value_pack.data());
}

// Columns c0..c1 of dP[rows, cols] (row stride ldp) = dO_i V_j^T, from the V_j (cols rows) that
// pack_values_for_dp packed; c0 a multiple of kColumnStep. The bfloat16 micro-kernel's packed
// V_j^T gives all columns.
template <typename scalar_t, typename acc_t>
inline void dp_tile(bool on_tile_gemm, BackwardScratch<scalar_t>& s, int64_t rows, int64_t cols,
                    int64_t c0, int64_t c1, int64_t Dv, const scalar_t* dO, int64_t ld_dO,
                    const scalar_t* v, int64_t ldv, acc_t* dP, int64_t ldp) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (on_tile_gemm)
      return tile_gemm(Trans::No, rows, Dv, 1.0f, dO, ld_dO, s.value_pack16, 0.0f, dP, ldp);
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    if (on_tile_gemm)
      return tile_gemm(Trans::No, Trans::No, rows, c1 - c0, Dv, 1.0f, dO, ld_dO,
                       s.value_pack.data() + c0, cols, 0.0f, dP + c0, ldp);
  }
  dot_tile(rows, c1 - c0, Dv, acc_t(1), dO, ld_dO, v + c0 * ldv, ldv, s.value_pack.data() + c0 * Dv,
           dP + c0, ldp);
}

// Columns c0..c1 (of the key block's cols, from key j0) of one (query rows i0..i1, key block) tile
// of head h: P and dS = scale * P * (dP - Dsum) into s.probs and s.grad (row stride backward_kv),
// dV_j^T and dK_j^T updated. Returns dS as dQ's GEMM reads it (from column c0, row stride
// backward_kv): dQ is the caller's, which waits for its turn. With dropout, dO is the
// gradient of the 0/1-masked O = sum_j keep_ij P_ij V_j (see DropoutParams): dV_j = sum_i keep_ij
// P_ij dO_i and dP_ij = keep_ij (dO_i . V_j + dW_ij / (1 - p)).
template <typename scalar_t>
const scalar_t* backward_tile(const BackwardArgs<scalar_t>& a, BackwardScratch<scalar_t>& s,
                              int64_t n, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t c0,
                              int64_t c1, int64_t cols, bool dp_on_gemm) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t D = g.D, Dv = g.Dv, ld = a.tiles.backward_kv, rows = i1 - i0, width = c1 - c0;
  const int64_t ja = j0 + c0, jz = j0 + c1;  // the keys of the columns
  acc_t* P = s.probs.data();
  acc_t* dP = s.grad.data();
  const acc_t keep_scale = static_cast<acc_t>(a.dropout.keep_scale());
  // What the incoming gradient of the returned weights is multiplied by on its way into dP.
  const acc_t weights_grad_scale =
      (a.dropout.enabled ? keep_scale : acc_t(1)) * grad_weights_scale(a);
  probabilities_tile(P + c0, ld, a, n, h, i0, i1, ja, jz,
                     score_pack_from<scalar_t>(s.key_pack.data(), c0, D), cols, &s.key_cache);
  const scalar_t* q = a.q + g.q.at(n, i0, h);
  const scalar_t* dO = a.grad_context + a.grad_out.at(n, i0, h);
  // The 0/1 dropout mask is generated once per tile and used twice: for the masked P and
  // for the gradient flowing back through it.
  const acc_t* Pd = P;
  acc_t* keep = s.keep.data();
  if (a.dropout.enabled) {
    acc_t* dropped = s.dropped.data();
    for (int64_t r = 0; r < rows; ++r) {
      dropout_factors(keep + r * ld + c0, a.dropout, g, n, h, i0 + r, ja, jz, acc_t(1));
      for (int64_t c = c0; c < c1; ++c) {
        dropped[r * ld + c] = keep[r * ld + c] == acc_t(0) ? acc_t(0) : P[r * ld + c];
      }
    }
    Pd = dropped;
  }
  // dV_j^T += dO_i^T (keep * P)
  transpose_rows(dO, a.grad_out.seq, rows, Dv, s.grad_out_t.data(), rows);
  tile_gemm(Trans::No, Trans::No, Dv, width, rows, acc_t(1), s.grad_out_t.data(), rows,
            as_gemm_input(Pd + c0, (rows - 1) * ld + width, s.cast.data()), ld, acc_t(1),
            s.grad_v.data() + c0, ld);
  // dP = dO_i V_j^T (+ the gradient of the returned weights), back through dropout
  const scalar_t* v = a.v + g.v.at(n, j0, g.kv_head(h));
  dp_tile(dp_on_gemm, s, rows, cols, c0, c1, Dv, dO, a.grad_out.seq, v, g.v.seq, dP, ld);
  const acc_t* dsum = a.dsum + (n * g.H + h) * g.L + i0;
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* dprow = dP + r * ld;
    const acc_t* prow = P + r * ld;
    if (a.grad_weights != nullptr) {
      const scalar_t* dw = grad_weights_row(a, n, h, i0 + r) + j0;
      for (int64_t c = c0; c < c1; ++c) dprow[c] += weights_grad_scale * to_acc(dw[c]);
    }
    if (a.dropout.enabled) {
      const acc_t* f = keep + r * ld;
      for (int64_t c = c0; c < c1; ++c) dprow[c] = f[c] == acc_t(0) ? acc_t(0) : dprow[c];
    }
    // dS = P * (dP - Dsum_i): zero wherever P is zero (masked keys, fully masked rows). Stored
    // times the softmax scale, which both of its GEMMs apply (a GEMM with alpha != 1 costs the
    // tile GEMMs an extra pass over their output).
    const acc_t row_dsum = dsum[r];
    for (int64_t c = c0; c < c1; ++c) dprow[c] = a.scale * (prow[c] * (dprow[c] - row_dsum));
  }
  // dK_j^T += scale * Q_i^T dS (the scale is inside dS)
  const scalar_t* dS = as_gemm_input(dP + c0, (rows - 1) * ld + width, s.cast.data());
  transpose_rows(q, g.q.seq, rows, D, s.q_t.data(), rows);
  tile_gemm(Trans::No, Trans::No, D, width, rows, acc_t(1), s.q_t.data(), rows, dS, ld, acc_t(1),
            s.grad_k.data() + c0, ld);
  return dS;
}

// The share of query head h (batch n) in dK and dV of key rows j0..j1 (added to s.grad_k and
// s.grad_v, see backward_tile), and this key block's share of h's dQ, added to grad_q in key-block
// order.
template <typename scalar_t>
void attention_backward_head(const BackwardArgs<scalar_t>& a, BackwardScratch<scalar_t>& s,
                             int64_t n, int64_t h, int64_t jb, bool dp_on_gemm) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_q = a.tiles.backward_q, block_kv = a.tiles.backward_kv;
  const int64_t j0 = jb * block_kv, j1 = j0 + block_kv < g.S ? j0 + block_kv : g.S;
  const int64_t D = g.D, cols = j1 - j0, ld = block_kv;
  const int64_t kv_blocks = key_block_count(g, a.tiles);
  const int64_t q_blocks = query_block_count(g, a.tiles);
  int64_t* turns = a.dq_turn + (n * g.H + h) * q_blocks;
  const scalar_t* k = a.k + g.k.at(n, j0, g.kv_head(h));

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
    // Only the key columns c0..c1 that some of these queries can see (the causal diagonal, the
    // window's edges, padding), widened to whole steps of kColumnStep: the rest of the tile has
    // P = 0 and dS = 0 exactly and adds nothing to any gradient.
    const PositionRange seen = visible_key_range(g, a.masks, n, i0, i1);
    int64_t c0 = seen.begin > j0 ? seen.begin - j0 : 0;
    int64_t c1 = seen.end < j1 ? seen.end - j0 : cols;
    c0 -= c0 % kColumnStep;
    c1 = std::min(cols, (c1 + kColumnStep - 1) / kColumnStep * kColumnStep);
    const scalar_t* dS =
        c1 > c0 ? backward_tile(a, s, n, h, i0, i1, j0, c0, c1, cols, dp_on_gemm) : nullptr;
    // dQ_i += scale * dS K_j, in key-block order: wait for this key block's turn, add, pass
    // the turn to the next key block (if it touches this query block; none is left if not).
    if (!wait_for_turn(turns + qb, jb, a.abort)) return;
    if (dS != nullptr) {
      tile_gemm(Trans::No, Trans::No, rows, D, c1 - c0, acc_t(1), dS, ld, k + c0 * g.k.seq, g.k.seq,
                acc_t(1), a.grad_q + a.grad_q_layout.at(n, i0, h), a.grad_q_layout.seq);
    }
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
  transpose_rows(grad_k, block_kv, D, cols, a.grad_k + a.grad_k_layout.at(n, j0, hk),
                 a.grad_k_layout.seq);
  transpose_rows(grad_v, block_kv, Dv, cols, a.grad_v + a.grad_v_layout.at(n, j0, hk),
                 a.grad_v_layout.seq);
}

int64_t backward_task_count(const AttentionGeometry& g, const TileSizes& t) {
  return g.N * g.H_kv * key_block_count(g, t);
}

// Tasks in increasing order, key block major (t = (jb * N + n) * H_kv + hk), claimed from
// a.next_task or dealt round-robin: a task only waits for a smaller key block of its own head,
// claimed before it, so the smallest unfinished task can always proceed (no deadlock). Key block
// major: threads take one key block of several heads, whose dQ turns are independent, before
// neighbouring key blocks of one head, which wait for each other on every query block.
template <typename scalar_t>
void backward_tasks(const BackwardArgs<scalar_t>& a, int64_t thread, int64_t threads) {
  const AttentionGeometry& g = a.g;
  const int64_t tasks = backward_task_count(g, a.tiles);
  BackwardScratch<scalar_t> scratch(a.tiles, g);
  auto next = [&](int64_t t) {
    return a.next_task != nullptr ? __atomic_fetch_add(a.next_task, 1, __ATOMIC_RELAXED)
                                  : t + threads;
  };
  for (int64_t t = a.next_task != nullptr ? next(0) : thread; t < tasks; t = next(t)) {
    const int64_t jb = t / (g.N * g.H_kv), hk = t % g.H_kv, n = (t / g.H_kv) % g.N;
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
