// Fused CPU forward of multi-head self-attention.
//
// One packed QKV GEMM, then attention tile by tile with an online softmax (FlashAttention-2
// order), reading each head's Q, K and V in place from the QKV buffer and writing its output
// straight into its columns of the context buffer, then the output projection. No tensor of
// N*H*L*L elements exists unless the caller asks for the per-head weights. Backward gets the
// QKV buffer, the context and one log-sum-exp per query row: enough to recompute any
// probability exactly as exp(score - lse) without storing the L x L matrix.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>

#include "checks.h"
#include "cpu/attention_tile.h"

namespace mhsa::cpu {
namespace {

template <typename scalar_t>
struct ForwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  AttentionGeometry g;
  const scalar_t* qkv;
  scalar_t* context;
  acc_t* lse;                   // (N, H, L)
  scalar_t* weights = nullptr;  // (N, H, L, L) per-head weights, or
  acc_t* weights_avg = nullptr; // (N, L, L) head-averaged weights, accumulated
  const TileMasks<acc_t>* masks;
  AttentionDropout dropout;
  acc_t scale;
};

// Online softmax over the key blocks for queries i0..i1 of head (n, h): writes the context
// rows and the log-sum-exp. A row that can see no key (all masked) gets a zero output and
// lse = +inf, so every probability recomputed from it is exp(-inf) = 0, never NaN.
template <typename scalar_t>
void attention_rows(const ForwardArgs<scalar_t>& a, TileScratch<scalar_t, at::opmath_type<scalar_t>>& s,
                    int64_t n, int64_t h, int64_t i0, int64_t i1) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const AttentionGeometry& g = a.g;
  const int64_t rows = i1 - i0, D = g.D;
  const int64_t ld_seq = g.seq_rows() * 3 * g.E;
  acc_t* S = s.scores.data();
  acc_t* O = s.acc.data();
  acc_t* m = s.row_max.data();
  acc_t* l = s.row_sum.data();
  std::fill(O, O + rows * D, acc_t(0));
  std::fill(m, m + rows, neg_inf);
  std::fill(l, l + rows, acc_t(0));

  const int64_t kv_end = visible_keys(g, a.masks->causal, i1);
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBlockK) {
    const int64_t j1 = std::min(j0 + kBlockK, kv_end), cols = j1 - j0;
    score_tile(S, kBlockK, a.qkv, g, *a.masks, a.scale, n, h, i0, i1, j0, j1);
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* srow = S + r * kBlockK;
      acc_t tile_max = neg_inf;
      for (int64_t c = 0; c < cols; ++c) tile_max = std::max(tile_max, srow[c]);
      const acc_t m_new = std::max(m[r], tile_max);
      if (m_new == neg_inf) {  // nothing visible yet in this row
        std::fill(srow, srow + cols, acc_t(0));
        continue;
      }
      const acc_t alpha = std::exp(m[r] - m_new);
      acc_t sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const acc_t p = std::exp(srow[c] - m_new);
        srow[c] = p;
        sum += p;
      }
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
      if (alpha != acc_t(1)) {
        acc_t* o = O + r * D;
        for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
      }
      // The normalizer l uses the probabilities before dropout, the output after it.
      if (a.dropout.enabled) a.dropout.apply_row(srow, g, n, h, i0 + r, j0, j1);
    }
    const scalar_t* P = s.as_input(S, rows * kBlockK);
    const scalar_t* v = a.qkv + g.row(n, j0) * 3 * g.E + 2 * g.E + h * D;
    tile_gemm(Trans::No, Trans::No, rows, D, cols, acc_t(1), P, kBlockK, v, ld_seq, acc_t(1), O, D);
  }

  const int64_t ld_ctx = g.seq_rows() * g.E;
  scalar_t* ctx = a.context + g.row(n, i0) * g.E + h * D;
  acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool empty = l[r] == acc_t(0);
    const acc_t inv = empty ? acc_t(0) : acc_t(1) / l[r];
    const acc_t* o = O + r * D;
    scalar_t* out = ctx + r * ld_ctx;
    for (int64_t d = 0; d < D; ++d) out[d] = static_cast<scalar_t>(o[d] * inv);
    lse[r] = empty ? std::numeric_limits<acc_t>::infinity() : m[r] + std::log(l[r]);
  }
}

// Second sweep when the caller wants the weights: the probabilities (after dropout, as
// nn.MultiheadAttention returns them) recomputed from the final log-sum-exp.
template <typename scalar_t>
void attention_weights_rows(const ForwardArgs<scalar_t>& a,
                            TileScratch<scalar_t, at::opmath_type<scalar_t>>& s, int64_t n,
                            int64_t h, int64_t i0, int64_t i1) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t rows = i1 - i0;
  acc_t* S = s.scores.data();
  const acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  const acc_t inv_heads = acc_t(1) / static_cast<acc_t>(g.H);
  const int64_t kv_end = visible_keys(g, a.masks->causal, i1);
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBlockK) {
    const int64_t j1 = std::min(j0 + kBlockK, kv_end), cols = j1 - j0;
    score_tile(S, kBlockK, a.qkv, g, *a.masks, a.scale, n, h, i0, i1, j0, j1);
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* srow = S + r * kBlockK;
      const acc_t row_lse = lse[r];
      for (int64_t c = 0; c < cols; ++c) srow[c] = std::exp(srow[c] - row_lse);
      if (a.dropout.enabled) a.dropout.apply_row(srow, g, n, h, i0 + r, j0, j1);
      const int64_t i = i0 + r;
      if (a.weights != nullptr) {
        scalar_t* w = a.weights + ((n * g.H + h) * g.L + i) * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) w[c] = static_cast<scalar_t>(srow[c]);
      } else {
        acc_t* w = a.weights_avg + (n * g.L + i) * g.L + j0;
        for (int64_t c = 0; c < cols; ++c) w[c] += srow[c] * inv_heads;
      }
    }
  }
  if (a.weights != nullptr && kv_end < g.L) {  // keys past the causal diagonal
    for (int64_t i = i0; i < i1; ++i) {
      scalar_t* w = a.weights + ((n * g.H + h) * g.L + i) * g.L;
      std::fill(w + visible_keys(g, a.masks->causal, i + 1), w + g.L, scalar_t(0));
    }
  }
}

uint64_t draw_dropout_seed() {
  // Seeded from torch's default CPU generator so torch.manual_seed reproduces a run.
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

template <typename scalar_t>
void run_attention(ForwardArgs<scalar_t>& a, bool need_weights, bool average_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t q_blocks = (g.L + kBlockQ - 1) / kBlockQ;
  // Head-averaged weights are accumulated over heads in one task, so that no two threads
  // write the same (N, L, L) entries: tasks are (n, query block) with the heads inside.
  // Otherwise each (n, h, query block) is a task.
  const bool heads_inside = need_weights && average_weights;
  const int64_t head_tasks = heads_inside ? 1 : g.H;
  const int64_t tasks = g.N * head_tasks * q_blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    TileScratch<scalar_t, acc_t> scratch(kBlockQ, kBlockK, g.D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t qb = t % q_blocks;
      const int64_t ht = (t / q_blocks) % head_tasks;
      const int64_t n = t / (q_blocks * head_tasks);
      const int64_t i0 = qb * kBlockQ, i1 = std::min(i0 + kBlockQ, g.L);
      const int64_t h_begin = heads_inside ? 0 : ht, h_end = heads_inside ? g.H : ht + 1;
      for (int64_t h = h_begin; h < h_end; ++h) {
        attention_rows(a, scratch, n, h, i0, i1);
        if (need_weights) attention_weights_rows(a, scratch, n, h, i0, i1);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mha_forward_cpu(const at::Tensor& x, const at::Tensor& in_proj_weight,
                const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
                const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                bool batch_first, const std::optional<at::Tensor>& attn_mask,
                const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                double dropout_p, bool need_weights, bool average_attn_weights) {
  const MhaSizes s = check_mha_inputs("mha_forward", x, in_proj_weight, in_proj_bias,
                                      out_proj_weight, out_proj_bias, num_heads, batch_first,
                                      attn_mask, key_padding_mask, dropout_p);
  const int64_t N = s.batch.expect_int(), L = s.seq.expect_int(), E = s.embed.expect_int();
  const int64_t H = num_heads, D = E / H;
  const at::Tensor x2d = x.contiguous().view({-1, E});

  // One GEMM for the packed projection; rows follow x's layout.
  at::Tensor qkv = (in_proj_bias.has_value() && in_proj_bias->defined())
                       ? at::addmm(*in_proj_bias, x2d, in_proj_weight.t())
                       : at::mm(x2d, in_proj_weight.t());
  at::Tensor context = at::empty({x.size(0), x.size(1), E}, x.options());
  at::Tensor lse = at::empty({N, H, L}, x.options().dtype(logsumexp_dtype(x.scalar_type())));
  at::Tensor rng_state = at::zeros({2}, x.options().dtype(at::kLong));
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty({0}, x.options());
  } else if (average_attn_weights) {
    weights = at::zeros({N, L, L}, x.options().dtype(lse.scalar_type()));
  } else {
    weights = at::empty({N, H, L, L}, x.options());
  }

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "mha_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TileMasks<acc_t> masks(attn_mask, key_padding_mask, is_causal);
    ForwardArgs<scalar_t> a;
    a.g = AttentionGeometry{N, L, E, H, D, batch_first};
    a.qkv = qkv.const_data_ptr<scalar_t>();
    a.context = context.mutable_data_ptr<scalar_t>();
    a.lse = lse.mutable_data_ptr<acc_t>();
    if (need_weights && average_attn_weights) a.weights_avg = weights.mutable_data_ptr<acc_t>();
    if (need_weights && !average_attn_weights) a.weights = weights.mutable_data_ptr<scalar_t>();
    a.masks = &masks;
    a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
    if (dropout_p > 0.0) {
      a.dropout.enabled = true;
      a.dropout.p = dropout_p;
      a.dropout.seed = draw_dropout_seed();
      rng_state[0] = static_cast<int64_t>(a.dropout.seed);
    }
    run_attention(a, need_weights, average_attn_weights);
  });
  if (need_weights && average_attn_weights) weights = weights.to(x.scalar_type());

  const at::Tensor ctx2d = context.view({-1, E});
  at::Tensor output = (out_proj_bias.has_value() && out_proj_bias->defined())
                          ? at::addmm(*out_proj_bias, ctx2d, out_proj_weight.t())
                          : at::mm(ctx2d, out_proj_weight.t());
  return {output.view(x.sizes()), weights, qkv.view({x.size(0), x.size(1), 3 * E}), context,
          lse, rng_state};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("mha_forward", TORCH_FN(mhsa::cpu::mha_forward_cpu));
}
