// CPU kernels of _attention_block_forward and _attention_block_backward: the fused attention
// (attention_forward_kernel.cpp, attention_backward_kernel.cpp) on already-projected query, key
// and value tensors, read in place through their strides. This is scaled_dot_product_attention's
// engine, and the ring's: a block returns its log-sum-exp, and its backward takes the whole
// attention's output and log-sum-exp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention_block_entry.h"
#include "checks/attention_block_checks.h"
#include "cpu/dropout_seed.h"
#include "cpu/fp32_compute.h"
#include "cpu/mask_storage.h"
#include "cpu/parallel_stats.h"
#include "cpu/thread_team.h"
#include "cpu/transposed_keys.h"
#include "engine/cpu_capability.h"
#include "kernels/attention_args.h"
#include "kernels/attention_kernels.h"

namespace mhsa::cpu {
namespace {

using internal::BlockOptions;

// The kernels read rows of D contiguous values; any other stride of the last dim is copied.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

OperandLayout layout_of(const at::Tensor& t) {  // (N, heads, length, dim)
  return OperandLayout{t.stride(0), t.stride(2), t.stride(1)};
}

// (N, H, L, dim) as a view of (N, L, H, dim) memory: each position's heads side by side, the
// layout an output projection reads (as PyTorch's CPU flash attention returns it).
at::Tensor empty_heads_last(int64_t N, int64_t H, int64_t L, int64_t dim,
                            const at::TensorOptions& tensor_options) {
  return at::empty({N, L, H, dim}, tensor_options).permute({0, 2, 1, 3});
}

double softmax_scale(const BlockOptions& options, int64_t D) {
  return options.scale.has_value() ? *options.scale : 1.0 / std::sqrt(static_cast<double>(D));
}

void set_dropout(DropoutParams& d, const BlockOptions& options, uint64_t seed) {
  if (options.dropout_p <= 0.0) return;
  d.enabled = true;
  d.p = options.dropout_p;
  d.seed = seed;
  d.rows = options.dropout_plane[0];
  d.cols = options.dropout_plane[1];
  d.row_offset = options.dropout_plane[2];
  d.col_offset = options.dropout_plane[3];
}

internal::BlockForwardOutputs block_forward_compute(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options, bool need_weights,
    bool average_attn_weights, const std::optional<at::Tensor>& shared_rng_state) {
  const at::Tensor q = rows_contiguous(query), k = rows_contiguous(key), v = rows_contiguous(value);
  const int64_t N = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t H_kv = k.size(1), S = k.size(2), Dv = v.size(3);
  const auto tensor_options = q.options();
  at::Tensor output = empty_heads_last(N, H, L, Dv, tensor_options);
  at::Tensor lse = at::empty({N, H, L}, tensor_options.dtype(logsumexp_dtype(q.scalar_type())));
  at::Tensor rng_state = at::zeros({2}, tensor_options.dtype(at::kLong));
  uint64_t seed = 0;
  if (options.dropout_p > 0.0) {
    seed = shared_rng_state.has_value() && shared_rng_state->defined()
               ? static_cast<uint64_t>((*shared_rng_state)[0].item<int64_t>())
               : draw_dropout_seed();
    rng_state[0] = static_cast<int64_t>(seed);
  }
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty({0}, tensor_options);
  } else if (average_attn_weights) {
    weights =
        at::zeros({N, L, S}, tensor_options.dtype(lse.scalar_type()));  // accumulated over heads
  } else {
    weights = at::empty({N, H, L, S}, tensor_options);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "attention_block_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto masks = MaskStorage<acc_t>::for_block(attn_mask, N, H, L, S, options);
        ForwardArgs<scalar_t> a;
        a.g = AttentionGeometry{
            N, L, S, H, H_kv, D, Dv, layout_of(q), layout_of(k), layout_of(v), layout_of(output)};
        a.q = q.const_data_ptr<scalar_t>();
        a.k = k.const_data_ptr<scalar_t>();
        a.v = v.const_data_ptr<scalar_t>();
        a.context = output.mutable_data_ptr<scalar_t>();
        a.lse = lse.mutable_data_ptr<acc_t>();
        if (need_weights && average_attn_weights) a.weights_avg = weights.mutable_data_ptr<acc_t>();
        if (need_weights && !average_attn_weights) a.weights = weights.mutable_data_ptr<scalar_t>();
        a.masks = masks.view();
        a.scale = static_cast<acc_t>(softmax_scale(options, D));
        a.tiles = choose_tile_sizes(std::max<int64_t>({L, S, 1}));
        set_dropout(a.dropout, options, seed);
        const at::Tensor keys_t = transpose_keys_once(a, q.options());
        const auto& kernels = attention_kernels<scalar_t>();
        const bool heads_inside = need_weights && average_attn_weights;
        const double task_flops =
            2.0 * std::min(a.tiles.forward_q, L) * S * (D + Dv) * (heads_inside ? H : 1);
        at::parallel_for(0, forward_task_count(a.g, a.tiles, heads_inside),
                         parallel_grain(task_flops), [&](int64_t begin, int64_t end) {
                           record_parallel_tasks("block forward", at::get_thread_num(),
                                                 end - begin);
                           kernels.forward_tasks(a, need_weights, heads_inside, begin, end);
                         });
      });
  if (need_weights && average_attn_weights) weights = weights.to(q.scalar_type());
  // The kernels computed the context of 0/1-masked probabilities (see DropoutParams).
  if (options.dropout_p > 0.0) output.mul_(DropoutParams{true, options.dropout_p, 0}.keep_scale());
  return {output, weights, lse, rng_state};
}

internal::BlockForwardOutputs attention_block_forward_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options, bool need_weights,
    bool average_attn_weights, const std::optional<at::Tensor>& shared_rng_state) {
  check_attention_block_inputs("_attention_block_forward", query, key, value, attn_mask, options);
  const Fp32Compute c(query.scalar_type());
  auto [output, weights, lse, rng_state] =
      block_forward_compute(c.in(query), c.in(key), c.in(value), attn_mask, options, need_weights,
                            average_attn_weights, shared_rng_state);
  return {c.out(output), c.out(weights), lse, rng_state};
}

// An accumulation buffer for a gradient of shape (N, heads, length, dim) in the heads-last
// layout; for float32 and float64 it is the returned gradient itself.
at::Tensor gradient_buffer(const at::Tensor& like, at::ScalarType acc_type) {
  return empty_heads_last(like.size(0), like.size(1), like.size(2), like.size(3),
                          like.options().dtype(acc_type));
}

internal::BlockBackwardOutputs block_backward_compute(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask) {
  const at::Tensor q = rows_contiguous(query), k = rows_contiguous(key), v = rows_contiguous(value);
  const at::Tensor out = rows_contiguous(output);
  const int64_t N = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t H_kv = k.size(1), S = k.size(2), Dv = v.size(3);
  const auto acc_type = logsumexp_dtype(q.scalar_type());
  at::Tensor grad_q = gradient_buffer(q, acc_type);
  at::Tensor grad_k = gradient_buffer(k, acc_type);
  at::Tensor grad_v = gradient_buffer(v, acc_type);
  // Under dropout the kernels take the gradient of the unscaled context (see DropoutParams);
  // Dsum = rowsum(dO * O) is the same from the returned output and its gradient.
  at::Tensor grad_out = grad_output.contiguous();
  at::Tensor grad_context = grad_out;
  if (options.dropout_p > 0.0)
    grad_context = grad_out * DropoutParams{true, options.dropout_p, 0}.keep_scale();
  const at::Tensor lse = logsumexp.contiguous();
  at::Tensor grad_w;
  if (grad_attn_weights.has_value() && grad_attn_weights->defined()) {
    grad_w = grad_attn_weights->contiguous();
  }
  {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, q.scalar_type(), "attention_block_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto masks = MaskStorage<acc_t>::for_block(attn_mask, N, H, L, S, options);
          at::Tensor dsum = at::empty({N, H, L}, q.options().dtype(acc_type));
          BackwardArgs<scalar_t> a;
          a.g = AttentionGeometry{
              N, L, S, H, H_kv, D, Dv, layout_of(q), layout_of(k), layout_of(v), layout_of(out)};
          a.q = q.const_data_ptr<scalar_t>();
          a.k = k.const_data_ptr<scalar_t>();
          a.v = v.const_data_ptr<scalar_t>();
          a.context = out.const_data_ptr<scalar_t>();
          a.grad_context = grad_context.const_data_ptr<scalar_t>();
          a.grad_out = layout_of(grad_out);
          if (options.dropout_p > 0.0) a.dsum_grad = grad_out.const_data_ptr<scalar_t>();
          a.lse = lse.const_data_ptr<acc_t>();
          a.dsum = dsum.mutable_data_ptr<acc_t>();
          if (grad_w.defined()) {
            a.grad_weights = grad_w.const_data_ptr<scalar_t>();
            a.grad_weights_averaged = average_attn_weights;
          }
          a.grad_q = grad_q.mutable_data_ptr<acc_t>();
          a.grad_k = grad_k.mutable_data_ptr<acc_t>();
          a.grad_v = grad_v.mutable_data_ptr<acc_t>();
          a.grad_q_layout = layout_of(grad_q);
          a.grad_k_layout = layout_of(grad_k);
          a.grad_v_layout = layout_of(grad_v);
          a.masks = masks.view();
          a.scale = static_cast<acc_t>(softmax_scale(options, D));
          a.tiles = choose_tile_sizes(std::max<int64_t>({L, S, 1}));
          set_dropout(a.dropout, options, static_cast<uint64_t>(rng_state[0].item<int64_t>()));
          const auto& kernels = attention_kernels<scalar_t>();
          std::vector<int64_t> dq_turn(static_cast<size_t>(kernels.dq_turn_count(a.g, a.tiles)));
          int abort = 0;
          int64_t next_task = 0;
          a.dq_turn = dq_turn.data();
          a.abort = &abort;
          a.next_task = &next_task;
          kernels.prepare_dq_order(a);
          // dsum_rows zeroes dQ; every key row's dK and dV are written by its key block's task.
          at::parallel_for(0, N * L, parallel_grain(2.0 * H * Dv),
                           [&](int64_t b, int64_t e) { kernels.dsum_rows(a, b, e); });
          if (grad_w.defined()) {
            const double flops = 2.0 * std::min(a.tiles.backward_q, L) * S * D;
            at::parallel_for(0, kernels.weights_term_task_count(a.g, a.tiles),
                             parallel_grain(flops),
                             [&](int64_t b, int64_t e) { kernels.weights_term_tasks(a, b, e); });
          }
          const double group = H_kv > 0 ? static_cast<double>(H / H_kv) : 1.0;
          const double task_flops =
              group * 2.0 * std::min(a.tiles.backward_kv, S) * L * (3.0 * D + 2.0 * Dv);
          run_on_team(
              "block backward", kernels.backward_task_count(a.g, a.tiles), task_flops, a.abort,
              [&](int64_t thread, int64_t team) { kernels.backward_tasks(a, thread, team); });
        });
  }
  const auto dtype = q.scalar_type();
  auto result = [&](const at::Tensor& g, bool wanted) {
    return wanted ? (g.scalar_type() == dtype ? g : g.to(dtype)) : at::Tensor();
  };
  return {result(grad_q, output_mask[0]), result(grad_k, output_mask[1]),
          result(grad_v, output_mask[2])};
}

internal::BlockBackwardOutputs attention_block_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask) {
  const BlockSizes s = check_attention_block_backward_inputs(
      grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state, attn_mask,
      options, average_attn_weights);
  const Fp32Compute c(query.scalar_type());
  auto [grad_q, grad_k, grad_v] = block_backward_compute(
      c.in(grad_output), c.in(grad_attn_weights), c.in(query), c.in(key), c.in(value), c.in(output),
      logsumexp, rng_state, attn_mask, options, average_attn_weights, output_mask);
  return {c.out(grad_q), c.out(grad_k), c.out(grad_v)};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("_attention_block_forward",
         TORCH_FN(mhsa::internal::block_forward_entry<&mhsa::cpu::attention_block_forward_cpu>));
  m.impl("_attention_block_backward",
         TORCH_FN(mhsa::internal::block_backward_entry<&mhsa::cpu::attention_block_backward_cpu>));
}
