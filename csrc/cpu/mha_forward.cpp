// CPU kernel of mhsa::_mha_forward: one packed QKV GEMM, the fused attention (this CPU's copy
// of kernels/attention_forward_kernel.cpp) over (batch, head, query block) tasks in parallel,
// the output projection. No N*H*L*L tensor exists unless the per-head weights are asked for;
// backward gets O(N*L*E) state: qkv, the context and one log-sum-exp per query row.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "checks/checks.h"
#include "cpu/dropout_seed.h"
#include "cpu/fp32_compute.h"
#include "cpu/mask_storage.h"
#include "cpu/parallel_stats.h"
#include "cpu/projection_gemm.h"
#include "cpu/transposed_keys.h"
#include "engine/cpu_capability.h"
#include "kernels/attention_args.h"
#include "kernels/attention_kernels.h"
#include "mha_op_entry.h"

namespace mhsa::cpu {
namespace {

// The computation in x's dtype; `stored_as`: see Fp32Compute.
internal::ForwardOutputs mha_forward_compute(
    const MhaSizes& s, const at::Tensor& x, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const internal::AttentionOptions& options,
    bool need_weights, std::optional<at::ScalarType> stored_as) {
  const int64_t N = s.batch.expect_int(), L = s.seq.expect_int(), E = s.embed.expect_int();
  const int64_t H = options.num_heads, D = E / H;
  const at::Tensor x2d = x.contiguous().view({-1, E});

  // One GEMM for the packed projection; rows follow x's layout.
  at::Tensor qkv =
      projection_gemm(x2d, false, in_proj_weight, true, 1.0, in_proj_bias, x.scalar_type());
  if (stored_as.has_value()) qkv = qkv.to(*stored_as).to(x.scalar_type());
  at::Tensor context = at::empty({x.size(0), x.size(1), E}, x.options());
  at::Tensor lse = at::empty({N, H, L}, x.options().dtype(logsumexp_dtype(x.scalar_type())));
  at::Tensor rng_state = at::zeros({2}, x.options().dtype(at::kLong));
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty({0}, x.options());
  } else if (options.average_attn_weights) {
    // Accumulated over heads in fp32 (fp64 for double) and converted at the end.
    weights = at::zeros({N, L, L}, x.options().dtype(lse.scalar_type()));
  } else {
    weights = at::empty({N, H, L, L}, x.options());
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "mha_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        MaskStorage<acc_t> masks(options.attn_mask, options.key_padding_mask, options.is_causal,
                                 options.window_size, H);
        ForwardArgs<scalar_t> a;
        a.g = self_attention_geometry(N, L, E, H, options.batch_first);
        a.q = qkv.const_data_ptr<scalar_t>();
        a.k = a.q + E;
        a.v = a.q + 2 * E;
        a.context = context.mutable_data_ptr<scalar_t>();
        a.lse = lse.mutable_data_ptr<acc_t>();
        if (need_weights && options.average_attn_weights)
          a.weights_avg = weights.mutable_data_ptr<acc_t>();
        if (need_weights && !options.average_attn_weights)
          a.weights = weights.mutable_data_ptr<scalar_t>();
        a.masks = masks.view();
        a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
        a.tiles = choose_tile_sizes(L);
        if (options.dropout_p > 0.0) {
          a.dropout.enabled = true;
          a.dropout.p = options.dropout_p;
          a.dropout.seed = draw_dropout_seed();
          rng_state[0] = static_cast<int64_t>(a.dropout.seed);
        }
        const at::Tensor keys_t = transpose_keys_once(a, qkv.options());
        const auto& kernels = attention_kernels<scalar_t>();
        const bool heads_inside = need_weights && options.average_attn_weights;
        // A task: a query block against all L keys, two GEMMs of 2*rows*L*D each, per head inside.
        const double task_flops =
            4.0 * std::min(a.tiles.forward_q, L) * L * D * (heads_inside ? H : 1);
        at::parallel_for(0, forward_task_count(a.g, a.tiles, heads_inside),
                         parallel_grain(task_flops), [&](int64_t begin, int64_t end) {
                           record_parallel_tasks("forward attention", at::get_thread_num(),
                                                 end - begin);
                           kernels.forward_tasks(a, need_weights, heads_inside, begin, end);
                         });
      });
  if (need_weights && options.average_attn_weights) weights = weights.to(x.scalar_type());

  // With dropout the kernels left the context unscaled (a 0/1 mask on the probabilities, see
  // DropoutParams): 1 / (1 - p) is applied here, once.
  const double context_scale =
      options.dropout_p > 0.0 ? DropoutParams{true, options.dropout_p, 0}.keep_scale() : 1.0;
  const at::Tensor ctx2d = context.view({-1, E});
  at::Tensor output = projection_gemm(ctx2d, false, out_proj_weight, true, context_scale,
                                      out_proj_bias, x.scalar_type());
  return {output.view(x.sizes()),
          weights,
          qkv.view({x.size(0), x.size(1), 3 * E}),
          context,
          lse,
          rng_state};
}

internal::ForwardOutputs mha_forward_cpu(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                         const std::optional<at::Tensor>& in_proj_bias,
                                         const at::Tensor& out_proj_weight,
                                         const std::optional<at::Tensor>& out_proj_bias,
                                         const internal::AttentionOptions& options,
                                         bool need_weights) {
  const MhaSizes s = check_mha_inputs("_mha_forward", x, in_proj_weight, in_proj_bias,
                                      out_proj_weight, out_proj_bias, options);
  const Fp32Compute c(x.scalar_type());
  auto [output, weights, qkv, context, lse, rng_state] = mha_forward_compute(
      s, c.in(x), c.in(in_proj_weight), c.in(in_proj_bias), c.in(out_proj_weight),
      c.in(out_proj_bias), options, need_weights, c.stored_as());
  return {c.out(output), c.out(weights), c.out(qkv), c.out(context), lse, rng_state};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("_mha_forward", TORCH_FN(mhsa::internal::forward_entry<&mhsa::cpu::mha_forward_cpu>));
}
