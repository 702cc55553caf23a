// Fused CPU backward of multi-head self-attention, FlashAttention-2 order.
//
// The probabilities are recomputed tile by tile as exp(score - lse) from Q, K and the saved
// log-sum-exp; the softmax backward needs only Dsum_i = rowsum(dO_i * O_i) per query row
// (which equals rowsum(P * dP), also under dropout). Tasks are (n, h, key block): each owns its
// dK and dV rows; dQ contributions of different key blocks go to per-thread fp32/fp64 partial
// buffers that are summed at the end, so a single long sequence still keeps every core busy.
// The projection gradients are plain large GEMMs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/attention_tile.h"

namespace mhsa::cpu {
namespace {

// Backward tiles: key blocks of kBlockKV rows are the unit of work; query blocks of kBlockQ.
constexpr int64_t kBlockKV = 128;

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  AttentionGeometry g;
  const scalar_t* qkv;
  const scalar_t* grad_context;  // dO, rows like x, E columns
  const acc_t* lse;              // (N, H, L)
  acc_t* dsum;                   // (N, H, L)
  const scalar_t* grad_weights = nullptr;  // (N, H, L, L) or (N, L, L), contiguous
  bool grad_weights_averaged = false;
  acc_t* grad_qkv;               // rows like x, 3E columns
  acc_t* grad_q_partials;        // (threads, N, H, L, D)
  const TileMasks<acc_t>* masks;
  AttentionDropout dropout;
  acc_t scale;
};

// Probabilities of a tile from the saved log-sum-exp (the exact softmax of the forward pass).
template <typename scalar_t, typename acc_t>
void probabilities_tile(acc_t* S, int64_t ld, const BackwardArgs<scalar_t>& a, int64_t n, int64_t h,
                        int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const AttentionGeometry& g = a.g;
  score_tile(S, ld, a.qkv, g, *a.masks, a.scale, n, h, i0, i1, j0, j1);
  const acc_t* lse = a.lse + (n * g.H + h) * g.L + i0;
  for (int64_t r = 0; r < i1 - i0; ++r) {
    acc_t* srow = S + r * ld;
    const acc_t row_lse = lse[r];
    for (int64_t c = 0; c < j1 - j0; ++c) srow[c] = std::exp(srow[c] - row_lse);
  }
}

// Incoming gradient of the returned weights for one tile row: the per-head entry, or the
// averaged one divided by H (the weights returned were the mean over heads).
template <typename scalar_t, typename acc_t>
inline acc_t grad_weight(const BackwardArgs<scalar_t>& a, int64_t n, int64_t h, int64_t i,
                         int64_t j) {
  const AttentionGeometry& g = a.g;
  if (a.grad_weights_averaged) {
    return static_cast<acc_t>(a.grad_weights[(n * g.L + i) * g.L + j]) / static_cast<acc_t>(g.H);
  }
  return static_cast<acc_t>(a.grad_weights[((n * g.H + h) * g.L + i) * g.L + j]);
}

// When the returned weights W = dropout(P) received a gradient, Dsum_i also gets
// rowsum(W * dW): one more sweep over the keys of each query block.
template <typename scalar_t>
void add_weights_term_to_dsum(const BackwardArgs<scalar_t>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t q_blocks = (g.L + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, g.N * g.H * q_blocks, 1, [&](int64_t begin, int64_t end) {
    TileScratch<scalar_t, acc_t> s(kBlockQ, kBlockK, g.D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t qb = t % q_blocks, h = (t / q_blocks) % g.H, n = t / (q_blocks * g.H);
      const int64_t i0 = qb * kBlockQ, i1 = std::min(i0 + kBlockQ, g.L);
      const int64_t kv_end = visible_keys(g, a.masks->causal, i1);
      for (int64_t j0 = 0; j0 < kv_end; j0 += kBlockK) {
        const int64_t j1 = std::min(j0 + kBlockK, kv_end);
        acc_t* S = s.scores.data();
        probabilities_tile(S, kBlockK, a, n, h, i0, i1, j0, j1);
        for (int64_t r = 0; r < i1 - i0; ++r) {
          acc_t* srow = S + r * kBlockK;
          if (a.dropout.enabled) a.dropout.apply_row(srow, g, n, h, i0 + r, j0, j1);
          acc_t sum = 0;
          for (int64_t c = 0; c < j1 - j0; ++c)
            sum += srow[c] * grad_weight<scalar_t, acc_t>(a, n, h, i0 + r, j0 + c);
          a.dsum[(n * g.H + h) * g.L + i0 + r] += sum;
        }
      }
    }
  });
}

// dK and dV of key rows j0..j1 of head (n, h), and this key block's share of dQ, added to
// grad_q (this chunk's (N, H, L, D) partial buffer).
template <typename scalar_t>
void attention_backward_block(const BackwardArgs<scalar_t>& a,
                              TileScratch<scalar_t, at::opmath_type<scalar_t>>& s,
                              std::vector<at::opmath_type<scalar_t>>& grad_k,
                              std::vector<at::opmath_type<scalar_t>>& grad_v,
                              at::opmath_type<scalar_t>* grad_q, int64_t n, int64_t h, int64_t j0,
                              int64_t j1) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t D = g.D, cols = j1 - j0, ld = kBlockKV;
  const int64_t ld_seq = g.seq_rows() * 3 * g.E, ld_ctx = g.seq_rows() * g.E;
  const scalar_t* k = a.qkv + g.row(n, j0) * 3 * g.E + g.E + h * D;
  const scalar_t* v = k + g.E;
  std::fill(grad_k.begin(), grad_k.end(), acc_t(0));
  std::fill(grad_v.begin(), grad_v.end(), acc_t(0));
  acc_t* P = s.scores.data();     // probabilities
  acc_t* dP = s.aux.data();       // gradient of the probabilities, then of the scores
  std::vector<acc_t>& dropped = s.acc;  // P after dropout (sized rows * ld by the caller)

  // Queries before this key block cannot see it under a causal mask.
  const int64_t q_start = a.masks->causal ? (j0 / kBlockQ) * kBlockQ : 0;
  for (int64_t i0 = q_start; i0 < g.L; i0 += kBlockQ) {
    const int64_t i1 = std::min(i0 + kBlockQ, g.L), rows = i1 - i0;
    probabilities_tile(P, ld, a, n, h, i0, i1, j0, j1);
    const scalar_t* q = a.qkv + g.row(n, i0) * 3 * g.E + h * D;
    const scalar_t* dO = a.grad_context + g.row(n, i0) * g.E + h * D;
    const acc_t* Pd = P;
    if (a.dropout.enabled) {
      for (int64_t r = 0; r < rows; ++r) {
        acc_t* drow = dropped.data() + r * ld;
        std::copy(P + r * ld, P + r * ld + cols, drow);
        a.dropout.apply_row(drow, g, n, h, i0 + r, j0, j1);
      }
      Pd = dropped.data();
    }
    // dV_j += dropout(P)^T dO_i
    tile_gemm(Trans::Yes, Trans::No, cols, D, rows, acc_t(1), s.as_input(Pd, rows * ld), ld, dO,
              ld_ctx, acc_t(1), grad_v.data(), D);
    // dP = dO_i V_j^T (+ the gradient of the returned weights), through dropout
    tile_gemm(Trans::No, Trans::Yes, rows, cols, D, acc_t(1), dO, ld_ctx, v, ld_seq, acc_t(0), dP, ld);
    const acc_t* dsum = a.dsum + (n * g.H + h) * g.L + i0;
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* dprow = dP + r * ld;
      const acc_t* prow = P + r * ld;
      if (a.grad_weights != nullptr) {
        for (int64_t c = 0; c < cols; ++c)
          dprow[c] += grad_weight<scalar_t, acc_t>(a, n, h, i0 + r, j0 + c);
      }
      if (a.dropout.enabled) {
        // dropout(P) = P * Z, so d/dP = dP~ * Z = dP~ * dropout(P) / P where P > 0; apply the
        // same regenerated factors instead.
        a.dropout.apply_row(dprow, g, n, h, i0 + r, j0, j1);
      }
      // dS = P * (dP - Dsum_i); zero wherever P is zero (masked or fully masked rows).
      for (int64_t c = 0; c < cols; ++c) dprow[c] = prow[c] * (dprow[c] - dsum[r]);
    }
    const scalar_t* dS = s.as_input(dP, rows * ld);
    // dK_j += scale * dS^T Q_i ; dQ_i += scale * dS K_j
    tile_gemm(Trans::Yes, Trans::No, cols, D, rows, a.scale, dS, ld, q, ld_seq, acc_t(1),
              grad_k.data(), D);
    tile_gemm(Trans::No, Trans::No, rows, D, cols, a.scale, dS, ld, k, ld_seq, acc_t(1),
              grad_q + ((n * g.H + h) * g.L + i0) * D, D);
  }
  for (int64_t c = 0; c < cols; ++c) {
    acc_t* out = a.grad_qkv + g.row(n, j0 + c) * 3 * g.E + g.E + h * D;
    std::copy(grad_k.data() + c * D, grad_k.data() + (c + 1) * D, out);
    std::copy(grad_v.data() + c * D, grad_v.data() + (c + 1) * D, out + g.E);
  }
}

template <typename scalar_t>
void run_attention_backward(const BackwardArgs<scalar_t>& a, at::Tensor& grad_q_partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  const int64_t kv_blocks = (g.L + kBlockKV - 1) / kBlockKV;
  const int64_t tasks = g.N * g.H * kv_blocks;
  // Fixed chunks, each with its own dQ partial buffer: no two chunks ever add into the same
  // buffer, whatever thread runs them (no reliance on thread ids).
  const int64_t chunks = grad_q_partials.size(0);
  acc_t* partials = grad_q_partials.mutable_data_ptr<acc_t>();
  const int64_t partial_size = g.N * g.H * g.L * g.D;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    TileScratch<scalar_t, acc_t> s(kBlockQ, kBlockKV, kBlockKV);  // acc holds dropout(P)
    std::vector<acc_t> grad_k(kBlockKV * g.D), grad_v(kBlockKV * g.D);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t t = chunk * tasks / chunks; t < (chunk + 1) * tasks / chunks; ++t) {
        const int64_t jb = t % kv_blocks, h = (t / kv_blocks) % g.H, n = t / (kv_blocks * g.H);
        const int64_t j0 = jb * kBlockKV, j1 = std::min(j0 + kBlockKV, g.L);
        attention_backward_block(a, s, grad_k, grad_v, partials + chunk * partial_size, n, h,
                                 j0, j1);
      }
    }
  });
  // dQ = sum of the partials, written into columns h*D.. of grad_qkv.
  at::parallel_for(0, g.N * g.L, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.L, i = t % g.L;
      acc_t* out = a.grad_qkv + g.row(n, i) * 3 * g.E;
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t d = 0; d < g.D; ++d) {
          acc_t sum = 0;
          for (int64_t c = 0; c < chunks; ++c)
            sum += partials[c * partial_size + ((n * g.H + h) * g.L + i) * g.D + d];
          out[h * g.D + d] = sum;
        }
      }
    }
  });
}

// Dsum_i = rowsum(dO_i * O_i) per head.
template <typename scalar_t>
void compute_dsum(const BackwardArgs<scalar_t>& a, const scalar_t* context) {
  using acc_t = at::opmath_type<scalar_t>;
  const AttentionGeometry& g = a.g;
  at::parallel_for(0, g.N * g.L, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.L, i = t % g.L, row = g.row(n, i);
      const scalar_t* o = context + row * g.E;
      const scalar_t* dO = a.grad_context + row * g.E;
      for (int64_t h = 0; h < g.H; ++h) {
        acc_t sum = 0;
        for (int64_t d = h * g.D; d < (h + 1) * g.D; ++d)
          sum += static_cast<acc_t>(o[d]) * static_cast<acc_t>(dO[d]);
        a.dsum[(n * g.H + h) * g.L + i] = sum;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool average_attn_weights, std::array<bool, 5> output_mask) {
  const MhaSizes s = check_mha_inputs("mha_backward", x, in_proj_weight, std::nullopt,
                                      out_proj_weight, std::nullopt, num_heads, batch_first,
                                      attn_mask, key_padding_mask, dropout_p);
  check_mha_backward_inputs(s, grad_output, grad_attn_weights, x, qkv, context, logsumexp,
                            rng_state, average_attn_weights);
  const int64_t N = s.batch.expect_int(), L = s.seq.expect_int(), E = s.embed.expect_int();
  const int64_t H = num_heads, D = E / H;

  const at::Tensor grad_out2d = grad_output.contiguous().view({-1, E});
  const at::Tensor ctx2d = context.contiguous().view({-1, E});
  at::Tensor grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b;
  if (output_mask[3]) grad_out_w = grad_out2d.t().mm(ctx2d);
  if (output_mask[4]) grad_out_b = grad_out2d.sum(0);
  if (!(output_mask[0] || output_mask[1] || output_mask[2])) {
    return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
  }

  const at::Tensor grad_ctx = grad_out2d.mm(out_proj_weight);  // [rows, E], contiguous
  const at::Tensor qkv_c = qkv.contiguous();
  const auto acc_type = logsumexp_dtype(x.scalar_type());
  at::Tensor dsum = at::empty({N, H, L}, x.options().dtype(acc_type));
  at::Tensor grad_qkv = at::empty({x.size(0) * x.size(1), 3 * E}, x.options().dtype(acc_type));
  const int64_t kv_blocks = (L + kBlockKV - 1) / kBlockKV;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N * H * kv_blocks));
  at::Tensor grad_q_partials = at::zeros({chunks, N, H, L, D}, x.options().dtype(acc_type));
  at::Tensor grad_w;
  if (grad_attn_weights.has_value() && grad_attn_weights->defined()) {
    grad_w = grad_attn_weights->contiguous();
  }

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "mha_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TileMasks<acc_t> masks(attn_mask, key_padding_mask, is_causal);
    BackwardArgs<scalar_t> a;
    a.g = AttentionGeometry{N, L, E, H, D, batch_first};
    a.qkv = qkv_c.const_data_ptr<scalar_t>();
    a.grad_context = grad_ctx.const_data_ptr<scalar_t>();
    a.lse = logsumexp.contiguous().const_data_ptr<acc_t>();
    a.dsum = dsum.mutable_data_ptr<acc_t>();
    if (grad_w.defined()) {
      a.grad_weights = grad_w.const_data_ptr<scalar_t>();
      a.grad_weights_averaged = average_attn_weights;
    }
    a.grad_qkv = grad_qkv.mutable_data_ptr<acc_t>();
    a.masks = &masks;
    a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
    if (dropout_p > 0.0) {
      a.dropout.enabled = true;
      a.dropout.p = dropout_p;
      a.dropout.seed = static_cast<uint64_t>(rng_state[0].item<int64_t>());
    }
    compute_dsum(a, ctx2d.const_data_ptr<scalar_t>());
    if (grad_w.defined()) add_weights_term_to_dsum(a);
    run_attention_backward(a, grad_q_partials);
  });

  const at::Tensor x2d = x.contiguous().view({-1, E});
  const at::Tensor grad_qkv_in = grad_qkv.to(x.scalar_type());
  if (output_mask[0]) grad_x = grad_qkv_in.mm(in_proj_weight).view(x.sizes());
  if (output_mask[1]) grad_in_w = grad_qkv_in.t().mm(x2d);
  if (output_mask[2]) grad_in_b = grad_qkv.sum(0).to(x.scalar_type());
  return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("mha_backward", TORCH_FN(mhsa::cpu::mha_backward_cpu));
}
