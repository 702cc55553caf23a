// CPU kernel of mhsa::_mha_backward: output-projection gradients, the fused attention backward
// (attention_backward_kernel.cpp, the copy for this CPU's instruction set) writing dQ, dK, dV
// straight into one QKV gradient buffer, then the input-projection gradients as large GEMMs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

#include "checks/checks.h"
#include "cpu/fp32_compute.h"
#include "cpu/input_bias_sums.h"
#include "cpu/mask_storage.h"
#include "cpu/parallel_stats.h"
#include "cpu/projection_backward.h"
#include "cpu/projection_gemm.h"
#include "cpu/thread_team.h"
#include "engine/cpu_capability.h"
#include "kernels/attention_args.h"
#include "kernels/attention_kernels.h"
#include "mha_op_entry.h"

namespace mhsa::cpu {
namespace {

// The computation in x's dtype, from checked inputs.
internal::BackwardOutputs mha_backward_compute(
    const MhaSizes& s, const at::Tensor& grad_output,
    const std::optional<at::Tensor>& grad_attn_weights, const at::Tensor& x,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const internal::AttentionOptions& options, std::array<bool, 5> output_mask) {
  const int64_t N = s.batch.expect_int(), L = s.seq.expect_int(), E = s.embed.expect_int();
  const int64_t H = options.num_heads, D = E / H;

  const at::Tensor ctx2d = context.contiguous().view({-1, E});
  const auto dtype = x.scalar_type();
  // The saved context is unscaled under dropout (see mha_forward_cpu). Named tensors, not a
  // structured binding: the dispatch lambda below captures them. The peak memory of backward
  // is reached in the input projection below, so what is done with before then is released:
  // grad_output's contiguous copy (when autograd hands over an expanded gradient) here, and
  // grad_ctx after the attention kernels.
  OutputProjectionGrads out_grads =
      output_projection_backward(grad_output.contiguous().view({-1, E}), ctx2d, out_proj_weight,
                                 options.dropout_p, output_mask, dtype);
  const at::Tensor grad_out_w = out_grads.grad_out_proj_weight;
  const at::Tensor grad_out_b = out_grads.grad_out_proj_bias;
  at::Tensor grad_ctx = std::move(out_grads.grad_context);
  if (!grad_ctx.defined())
    return {at::Tensor(), at::Tensor(), at::Tensor(), grad_out_w, grad_out_b};

  const at::Tensor qkv_c = qkv.contiguous();
  const at::Tensor lse_c = logsumexp.contiguous();
  const auto acc_type = logsumexp_dtype(x.scalar_type());
  at::Tensor dsum = at::empty({N, H, L}, x.options().dtype(acc_type));
  at::Tensor grad_qkv = at::empty({x.size(0) * x.size(1), 3 * E}, x.options().dtype(acc_type));
  at::Tensor grad_w;
  if (grad_attn_weights.has_value() && grad_attn_weights->defined()) {
    grad_w = grad_attn_weights->contiguous();
  }
  const TileSizes tiles = choose_tile_sizes(L);
  InputBiasSums bias_sums;
  if (output_mask[2]) {
    bias_sums = InputBiasSums(N * ((L + tiles.backward_q - 1) / tiles.backward_q),
                              N * ((L + tiles.backward_kv - 1) / tiles.backward_kv), E,
                              x.options().dtype(acc_type));
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "mha_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto& kernels = attention_kernels<scalar_t>();
        MaskStorage<acc_t> masks(options.attn_mask, options.key_padding_mask, options.is_causal,
                                 options.window_size, H);
        BackwardArgs<scalar_t> a;
        a.g = self_attention_geometry(N, L, E, H, options.batch_first);
        a.q = qkv_c.const_data_ptr<scalar_t>();
        a.k = a.q + E;
        a.v = a.q + 2 * E;
        a.context = ctx2d.const_data_ptr<scalar_t>();
        a.grad_context = grad_ctx.const_data_ptr<scalar_t>();
        a.grad_out = a.g.out;
        a.lse = lse_c.const_data_ptr<acc_t>();
        a.dsum = dsum.mutable_data_ptr<acc_t>();
        if (grad_w.defined()) {
          a.grad_weights = grad_w.const_data_ptr<scalar_t>();
          a.grad_weights_averaged = options.average_attn_weights;
        }
        a.grad_q = grad_qkv.mutable_data_ptr<acc_t>();
        a.grad_k = a.grad_q + E;
        a.grad_v = a.grad_q + 2 * E;
        a.grad_q_layout = a.g.q;
        a.grad_k_layout = a.g.k;
        a.grad_v_layout = a.g.v;
        a.masks = masks.view();
        a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
        a.tiles = tiles;
        if (bias_sums.defined()) {
          a.bias_sums_q = bias_sums.q.mutable_data_ptr<acc_t>();
          a.bias_sums_kv = bias_sums.kv.mutable_data_ptr<acc_t>();
        }
        if (options.dropout_p > 0.0) {
          a.dropout.enabled = true;
          a.dropout.p = options.dropout_p;
          a.dropout.seed = static_cast<uint64_t>(rng_state[0].item<int64_t>());
        }
        // The dQ turn order (see attention_backward_kernel.cpp): no per-chunk dQ copies, the work
        // on offer grows with N*H*key blocks, the bits do not depend on the thread count.
        const int64_t tasks = kernels.backward_task_count(a.g, a.tiles);
        std::vector<int64_t> dq_turn(static_cast<size_t>(kernels.dq_turn_count(a.g, a.tiles)));
        int abort = 0;
        int64_t next_task = 0;
        a.dq_turn = dq_turn.data();
        a.abort = &abort;
        a.next_task = &next_task;
        kernels.prepare_dq_order(a);

        const int64_t row_grain = parallel_grain(4.0 * E);
        at::parallel_for(0, N * L, row_grain, [&](int64_t b, int64_t e) {
          record_parallel_tasks("backward dsum rows", at::get_thread_num(), e - b);
          kernels.dsum_rows(a, b, e);
        });
        if (grad_w.defined()) {
          const double flops = 2.0 * std::min(a.tiles.backward_q, L) * L * D;
          at::parallel_for(0, kernels.weights_term_task_count(a.g, a.tiles), parallel_grain(flops),
                           [&](int64_t b, int64_t e) { kernels.weights_term_tasks(a, b, e); });
        }
        // A task: one key block against the queries, five GEMMs of 2*rows*cols*D per query block.
        const double task_flops =
            10.0 * static_cast<double>(std::min(a.tiles.backward_kv, L)) * L * D;
        run_on_team("backward attention", tasks, task_flops, a.abort,
                    [&](int64_t thread, int64_t team) { kernels.backward_tasks(a, thread, team); });
      });
  grad_ctx.reset();
  dsum.reset();
  InputProjectionGrads in_grads =
      input_projection_backward(grad_qkv, std::move(bias_sums), x.contiguous().view({-1, E}),
                                in_proj_weight, output_mask, dtype);
  if (in_grads.grad_x.defined()) in_grads.grad_x = in_grads.grad_x.view(x.sizes());
  return {in_grads.grad_x, in_grads.grad_in_proj_weight, in_grads.grad_in_proj_bias, grad_out_w,
          grad_out_b};
}

internal::BackwardOutputs mha_backward_cpu(const at::Tensor& grad_output,
                                           const std::optional<at::Tensor>& grad_attn_weights,
                                           const at::Tensor& x, const at::Tensor& in_proj_weight,
                                           const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                                           const at::Tensor& context, const at::Tensor& logsumexp,
                                           const at::Tensor& rng_state,
                                           const internal::AttentionOptions& options,
                                           std::array<bool, 5> output_mask) {
  const MhaSizes s = check_mha_inputs("_mha_backward", x, in_proj_weight, std::nullopt,
                                      out_proj_weight, std::nullopt, options);
  check_mha_backward_inputs(s, grad_output, grad_attn_weights, x, qkv, context, logsumexp,
                            rng_state, options.average_attn_weights);
  const Fp32Compute c(x.scalar_type());
  auto [grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b] = mha_backward_compute(
      s, c.in(grad_output), c.in(grad_attn_weights), c.in(x), c.in(in_proj_weight),
      c.in(out_proj_weight), c.in(qkv), c.in(context), logsumexp, rng_state, options, output_mask);
  return {c.out(grad_x), c.out(grad_in_w), c.out(grad_in_b), c.out(grad_out_w), c.out(grad_out_b)};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("_mha_backward", TORCH_FN(mhsa::internal::backward_entry<&mhsa::cpu::mha_backward_cpu>));
}
