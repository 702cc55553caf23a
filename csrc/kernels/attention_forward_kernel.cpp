// Attention forward, compiled once per instruction set (see attention_kernels.h): online softmax
// over key tiles (FlashAttention-2 order) for one (batch, head, query block) task at a time.
// Each task reads Q, K and V in place (AttentionGeometry's layouts), writes its output rows and
// one log-sum-exp per query row: enough for backward to recompute any probability as
// exp(score - lse) without an L x S matrix.
#include <algorithm>

#include "engine/buffer.h"
#include "engine/conversions.h"
#include "engine/dot_tile.h"
#include "engine/dropout.h"
#include "engine/masks.h"
#include "engine/score_tile.h"
#include "engine/small_tile.h"
#include "engine/tile_gemm.h"
#include "engine/vector_math.h"
#include "kernels/attention_kernels.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

template <typename scalar_t>
struct ForwardScratch {
  using acc_t = at::opmath_type<scalar_t>;
  Buffer<acc_t> scores, out, row_max, row_sum, dropout;
  Buffer<scalar_t> cast;
  Buffer<float> key_pack;   // K_j of one key block, made ready by score_pack (without a.keys_t)
  ScoreKeyCache key_cache;  // 16-bit scores: the head's packed key blocks (score_blocks)
  // Only when the weights are returned: the first sweep's exp(score - running max), after the
  // dropout mask, for all keys of the task's rows (rows x S), and the running max each key
  // block was shifted by (rows x key blocks). See attention_weights_rows.
  Buffer<acc_t> kept, kept_shift;
  // bfloat16: the head's V_j packed for the value products, once per key block and task run
  // rather than once per query block (the same bits as packing per product).
  const void* value_head = nullptr;
  Buffer<PackedB16> value_packs;
  Buffer<int64_t> value_pack_rows;  // the keys each pack holds (-1: none)
  // Sized for the call's rows and keys where they are fewer than a tile's (one-token calls in
  // generation: a full tile would be 256 KiB of fresh pages per call).
  ForwardScratch(const TileSizes& t, const AttentionGeometry& g, bool need_weights, bool packs_keys)
      : scores(rows(t, g) * t.forward_k),
        out(rows(t, g) * g.Dv),
        row_max(rows(t, g)),
        row_sum(rows(t, g)),
        dropout(t.forward_k),
        cast(std::is_same_v<scalar_t, acc_t> ? 0 : rows(t, g) * t.forward_k),
        key_pack(packs_keys ? dot_pack_size(std::min(t.forward_k, g.S), g.D) : 0),
        kept(need_weights ? rows(t, g) * g.S : 0),
        kept_shift(need_weights ? rows(t, g) * key_blocks(t, g.S) : 0),
        value_packs(packs_values() ? key_blocks(t, g.S) : 0),
        value_pack_rows(packs_values() ? key_blocks(t, g.S) : 0) {}

  static bool packs_values() {
    return std::is_same_v<scalar_t, c10::BFloat16> && tile_gemm_bf16_packs_b();
  }

  static int64_t rows(const TileSizes& t, const AttentionGeometry& g) {
    return std::min(t.forward_q, g.L);
  }

  static int64_t key_blocks(const TileSizes& t, int64_t S) {
    return (S + t.forward_k - 1) / t.forward_k;
  }
};

// O (rows x Dv) += P V_j, P the tile's probabilities (row stride forward_k) over keys j0..j0+cols:
// a few float32 rows on the vector loops (no micro-kernel built per shape), bfloat16 from V_j
// packed once per key block and task run, else the tile GEMM (which packs V_j itself).
template <typename scalar_t>
void add_value_product(const ForwardArgs<scalar_t>& a, ForwardScratch<scalar_t>& s, int64_t n,
                       int64_t h, int64_t j0, int64_t rows, int64_t cols, const scalar_t* P,
                       at::opmath_type<scalar_t>* O) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_k = a.tiles.forward_k;
  const scalar_t* v = a.v + g.v.at(n, j0, g.kv_head(h));
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (rows <= kSmallTileRows && scores_on_tile_gemm<scalar_t>())
      return small_tile_gemm(rows, g.Dv, cols, 1.0f, P, block_k, v, g.v.seq, true, O, g.Dv);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (ForwardScratch<scalar_t>::packs_values() && j0 % block_k == 0) {
      const scalar_t* head = a.v + g.v.at(n, 0, g.kv_head(h));
      if (s.value_head != head) {  // another head: none of the packs holds its values
        s.value_head = head;
        fill(s.value_pack_rows.data(), ForwardScratch<scalar_t>::key_blocks(a.tiles, g.S),
             int64_t(-1));
      }
      const int64_t b = j0 / block_k;
      if (s.value_pack_rows[b] != cols) {
        s.value_packs[b].pack(Trans::No, v, g.v.seq, cols, g.Dv);
        s.value_pack_rows[b] = cols;
      }
      return tile_gemm(Trans::No, rows, cols, 1.0f, P, block_k, s.value_packs[b], 1.0f, O, g.Dv);
    }
  }
  tile_gemm(Trans::No, Trans::No, rows, g.Dv, cols, acc_t(1), P, block_k, v, g.v.seq, acc_t(1), O,
            g.Dv);
}

// Online softmax over the key blocks for queries i0..i1 of head (n, h): writes the context
// rows and the log-sum-exp. A row that can see no key (all masked) gets a zero output and
// lse = +inf, so every probability recomputed from it is exp(-inf) = 0, never NaN.
// With keep_for_weights, each block's exp(score - running max) is also kept in s.kept.
template <typename scalar_t>
void attention_rows(const ForwardArgs<scalar_t>& a, ForwardScratch<scalar_t>& s, int64_t n,
                    int64_t h, int64_t i0, int64_t i1, bool keep_for_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const AttentionGeometry& g = a.g;
  const int64_t rows = i1 - i0, Dv = g.Dv, block_k = a.tiles.forward_k;
  acc_t* S = s.scores.data();
  acc_t* O = s.out.data();
  acc_t* m = s.row_max.data();
  acc_t* l = s.row_sum.data();
  fill(O, rows * Dv, acc_t(0));
  fill(m, rows, neg_inf);
  fill(l, rows, acc_t(0));

  const int64_t key_blocks = ForwardScratch<scalar_t>::key_blocks(a.tiles, g.S);
  const PositionRange keys = visible_key_range(g, a.masks, n, i0, i1);
  for (int64_t j0 = keys.begin; j0 < keys.end; j0 += block_k) {
    const int64_t j1 = j0 + block_k < keys.end ? j0 + block_k : keys.end, cols = j1 - j0;
    // K_j as the scores read it: from the call's K^T where the op made one, else packed here.
    const float* keys = s.key_pack.data();
    int64_t ld_keys = cols;
    if (a.keys_t != nullptr) {
      keys = a.keys_t + (n * g.H_kv + g.kv_head(h)) * g.D * g.S + j0;
      ld_keys = g.S;
    } else {
      score_pack(g, a.k + g.k.at(n, j0, g.kv_head(h)), g.k.seq, cols, s.key_pack.data());
    }
    bool scale_deferred = false;
    score_tile(S, block_k, a.q, a.k, g, a.masks, a.scale, n, h, i0, i1, j0, j1, keys, ld_keys,
               &scale_deferred, &s.key_cache);
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* srow = S + r * block_k;
      const acc_t tile_max =
          scale_deferred ? scale_row_max(srow, cols, a.scale) : row_max(srow, cols);
      const acc_t m_new = (m[r] > tile_max || m[r] != m[r]) ? m[r] : tile_max;  // NaN sticks
      if (m_new == neg_inf) {  // nothing visible yet in this row
        fill(srow, cols, acc_t(0));
      } else {
        const acc_t alpha = std::exp(m[r] - m_new);
        l[r] = l[r] * alpha + exp_shift_sum(srow, cols, m_new);
        m[r] = m_new;
        if (alpha != acc_t(1)) {
          acc_t* out_row = O + r * Dv;
          for (int64_t d = 0; d < Dv; ++d) out_row[d] *= alpha;
        }
        // The normalizer l uses the probabilities before dropout, the output after it (kept
        // entries times 1: the op kernel applies 1 / (1 - p) to the whole context).
        if (a.dropout.enabled)
          dropout_row(srow, s.dropout.data(), a.dropout, g, n, h, i0 + r, j0, j1, acc_t(1));
      }
      if (keep_for_weights) {
        std::copy(srow, srow + cols, s.kept.data() + r * g.S + j0);
        s.kept_shift[r * key_blocks + j0 / block_k] = m_new;
      }
      // 16-bit inputs: the row as the value product reads it, converted while it is in cache
      // (and only its visible columns).
      if constexpr (!std::is_same_v<scalar_t, acc_t>) {
        scalar_t* prow = s.cast.data() + r * block_k;
        for (int64_t c = 0; c < cols; ++c) prow[c] = from_acc<scalar_t>(srow[c]);
      }
    }
    const scalar_t* P = nullptr;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      P = S;
    } else {
      P = s.cast.data();
    }
    add_value_product(a, s, n, h, j0, rows, cols, P, O);
  }

  scalar_t* ctx = a.context + g.out.at(n, i0, h);
  acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool empty = l[r] == acc_t(0);
    const acc_t inv = empty ? acc_t(0) : acc_t(1) / l[r];
    const acc_t* out_row = O + r * Dv;
    scalar_t* out = ctx + r * g.out.seq;
    for (int64_t d = 0; d < Dv; ++d) out[d] = from_acc<scalar_t>(out_row[d] * inv);
    lse[r] = empty ? std::numeric_limits<acc_t>::infinity() : m[r] + std::log(l[r]);
  }
}

// The weights (after dropout, as nn.MultiheadAttention returns them) from what the first sweep
// kept, instead of computing the scores a second time: a block shifted by its running max m_b
// becomes exp(s - lse) = exp(s - m_b) * exp(m_b - lse). The factor is at most 1 (m_b <= max
// <= lse), 0 for a block that saw nothing yet (m_b = -inf) and for an empty row (lse = +inf).
template <typename scalar_t>
void attention_weights_rows(const ForwardArgs<scalar_t>& a, ForwardScratch<scalar_t>& s, int64_t n,
                            int64_t h, int64_t i0, int64_t i1) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t block_k = a.tiles.forward_k;
  const int64_t key_blocks = ForwardScratch<scalar_t>::key_blocks(a.tiles, g.S);
  const acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  const acc_t keep_scale = a.dropout.enabled ? static_cast<acc_t>(a.dropout.keep_scale()) : 1;
  // Averaged weights are accumulated over the heads, each scaled by 1 / H.
  const acc_t weight_scale = a.weights != nullptr ? keep_scale : keep_scale / g.H;
  const PositionRange keys = visible_key_range(g, a.masks, n, i0, i1);
  for (int64_t r = 0; r < i1 - i0; ++r) {
    const int64_t i = i0 + r;
    const acc_t* kept = s.kept.data() + r * g.S;
    const acc_t* shift = s.kept_shift.data() + r * key_blocks;
    scalar_t* w = a.weights != nullptr ? a.weights + ((n * g.H + h) * g.L + i) * g.S : nullptr;
    acc_t* w_avg = a.weights != nullptr ? nullptr : a.weights_avg + (n * g.L + i) * g.S;
    for (int64_t j0 = keys.begin; j0 < keys.end; j0 += block_k) {
      const int64_t j1 = j0 + block_k < keys.end ? j0 + block_k : keys.end;
      const acc_t factor = std::exp(shift[j0 / block_k] - lse[r]) * weight_scale;
      if (w != nullptr) {
        for (int64_t j = j0; j < j1; ++j) w[j] = from_acc<scalar_t>(kept[j] * factor);
      } else {
        for (int64_t j = j0; j < j1; ++j) w_avg[j] += kept[j] * factor;
      }
    }
    if (w != nullptr) {  // keys no query of the block can see: zero
      const scalar_t zero = from_acc<scalar_t>(acc_t(0));
      fill(w, keys.begin, zero);
      fill(w + keys.end, g.S - keys.end, zero);
    }
  }
}

template <typename scalar_t>
void forward_tasks(const ForwardArgs<scalar_t>& a, bool need_weights, bool heads_inside,
                   int64_t begin, int64_t end) {
  const AttentionGeometry& g = a.g;
  const int64_t block_q = a.tiles.forward_q;
  const int64_t q_blocks = (g.L + block_q - 1) / block_q;
  const int64_t head_tasks = heads_inside ? 1 : g.H;
  ForwardScratch<scalar_t> scratch(a.tiles, g, need_weights, a.keys_t == nullptr);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t qb = t % q_blocks;
    const int64_t ht = (t / q_blocks) % head_tasks;
    const int64_t n = t / (q_blocks * head_tasks);
    const int64_t i0 = qb * block_q, i1 = i0 + block_q < g.L ? i0 + block_q : g.L;
    const int64_t h_begin = heads_inside ? 0 : ht, h_end = heads_inside ? g.H : ht + 1;
    for (int64_t h = h_begin; h < h_end; ++h) {
      attention_rows(a, scratch, n, h, i0, i1, need_weights);
      if (need_weights) attention_weights_rows(a, scratch, n, h, i0, i1);
    }
  }
  tile_gemm_release();
}

}  // namespace

// Defined in attention_backward_kernel.cpp (same ISA).
template <typename scalar_t>
void add_backward_kernels(AttentionKernels<scalar_t>& kernels);

template <typename scalar_t>
AttentionKernels<scalar_t> make_attention_kernels() {
  AttentionKernels<scalar_t> kernels{};
  kernels.forward_tasks = &forward_tasks<scalar_t>;
  add_backward_kernels(kernels);
  return kernels;
}

template AttentionKernels<float> make_attention_kernels<float>();
template AttentionKernels<double> make_attention_kernels<double>();
template AttentionKernels<c10::BFloat16> make_attention_kernels<c10::BFloat16>();
template AttentionKernels<c10::Half> make_attention_kernels<c10::Half>();

}  // namespace mhsa::cpu::MHSA_ISA
