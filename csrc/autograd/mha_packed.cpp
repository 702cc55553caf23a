// Autograd kernels of _mha_packed_forward (gradients through _mha_packed_backward) and of
// _mha_packed_backward (refuses double backward), in C++ like autograd/mha_forward.cpp so
// Python, TorchScript and LibTorch callers all get gradients.
#include <torch/autograd.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include "autograd/requested_gradients.h"
#include "cpu/weight_cache.h"
#include "mha_op_entry.h"

namespace mhsa::autograd {
namespace {

using internal::PackedAttentionOptions;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MhaPackedForwardFunction : public torch::autograd::Function<MhaPackedForwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
                               const std::optional<at::Tensor>& in_proj_bias,
                               const at::Tensor& out_proj_weight,
                               const std::optional<at::Tensor>& out_proj_bias,
                               const PackedAttentionOptions& options,
                               std::optional<int64_t> max_seqlen) {
    // Redispatch below the Autograd key (calling the op again without it would recurse).
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, qkv, context, lse, rng_state] =
        internal::mha_packed_forward(x, cu_seqlens, in_proj_weight, in_proj_bias, out_proj_weight,
                                     out_proj_bias, options, max_seqlen);
    // O(T*E) saved state, no attention matrix: backward recomputes it from qkv and lse.
    ctx->save_for_backward(
        {x, cu_seqlens, in_proj_weight, out_proj_weight, qkv, context, lse, rng_state});
    ctx->saved_data["has_in_proj_bias"] = in_proj_bias.has_value() && in_proj_bias->defined();
    ctx->saved_data["has_out_proj_bias"] = out_proj_bias.has_value() && out_proj_bias->defined();
    ctx->saved_data["num_heads"] = options.num_heads;
    ctx->saved_data["is_causal"] = options.is_causal;
    ctx->saved_data["window_left"] = options.window_size[0];
    ctx->saved_data["window_right"] = options.window_size[1];
    ctx->saved_data["dropout_p"] = options.dropout_p;
    ctx->mark_non_differentiable({qkv, context, lse, rng_state});
    // Without this, autograd would hand backward a zero-filled gradient for every output that
    // got none (qkv and context: 4*E floats per row, allocated and zeroed each step, 64 MiB at
    // L = 8192, E = 512). backward treats undefined gradients as zero itself.
    ctx->set_materialize_grads(false);
    return {output, qkv, context, lse, rng_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    // needs_input_grad counts the tensor arguments that were given (cu_seqlens included, an
    // absent bias not).
    const bool has_in_bias = ctx->saved_data["has_in_proj_bias"].toBool();
    const bool has_out_bias = ctx->saved_data["has_out_proj_bias"].toBool();
    size_t edge = 0;
    const bool need_x = ctx->needs_input_grad(edge++);
    ++edge;  // cu_seqlens: integer offsets, no gradient
    const bool need_in_w = ctx->needs_input_grad(edge++);
    const bool need_in_b = has_in_bias && ctx->needs_input_grad(edge++);
    const bool need_out_w = ctx->needs_input_grad(edge++);
    const bool need_out_b = has_out_bias && ctx->needs_input_grad(edge++);
    const std::array<bool, 5> output_mask = {need_x, need_in_w, need_in_b, need_out_w, need_out_b};
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(x);
    PackedAttentionOptions options;
    options.num_heads = ctx->saved_data["num_heads"].toInt();
    options.is_causal = ctx->saved_data["is_causal"].toBool();
    options.window_size = {ctx->saved_data["window_left"].toInt(),
                           ctx->saved_data["window_right"].toInt()};
    options.dropout_p = ctx->saved_data["dropout_p"].toDouble();
    auto [grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b] =
        internal::mha_packed_backward(grad_output, x, saved[1], saved[2], saved[3], saved[4],
                                      saved[5], saved[6], saved[7], options, output_mask);
    // One entry per forward argument: cu_seqlens, options and max_seqlen get none.
    return {grad_x,     at::Tensor(), grad_in_w,    grad_in_b,
            grad_out_w, grad_out_b,   at::Tensor(), at::Tensor()};
  }
};

class MhaPackedBackwardFunction : public torch::autograd::Function<MhaPackedBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& x, const at::Tensor& cu_seqlens,
                               const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
                               const at::Tensor& qkv, const at::Tensor& context,
                               const at::Tensor& logsumexp, const at::Tensor& rng_state,
                               const PackedAttentionOptions& options,
                               std::array<bool, 5> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b, c, d, e] =
        internal::mha_packed_backward(grad_output, x, cu_seqlens, in_proj_weight, out_proj_weight,
                                      qkv, context, logsumexp, rng_state, options, output_mask);
    return defined_gradients({a, b, c, d, e});  // put back by mha_packed_backward_autograd
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("_mha_packed_backward");
  }
};

internal::PackedForwardOutputs mha_packed_forward_autograd(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen) {
  const cpu::InferenceCallGuard inference(
      cpu::records_no_graph({&x, &in_proj_weight, in_proj_bias ? &*in_proj_bias : nullptr,
                             &out_proj_weight, out_proj_bias ? &*out_proj_bias : nullptr}));
  auto r = MhaPackedForwardFunction::apply(x, cu_seqlens, in_proj_weight, in_proj_bias,
                                           out_proj_weight, out_proj_bias, options, max_seqlen);
  return {r[0], r[1], r[2], r[3], r[4]};
}

internal::BackwardOutputs mha_packed_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const PackedAttentionOptions& options, std::array<bool, 5> output_mask) {
  const variable_list requested =
      MhaPackedBackwardFunction::apply(grad_output, x, cu_seqlens, in_proj_weight, out_proj_weight,
                                       qkv, context, logsumexp, rng_state, options, output_mask);
  return place_gradients(requested, output_mask, "_mha_packed_backward");
}

}  // namespace
}  // namespace mhsa::autograd

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl(
      "_mha_packed_forward",
      TORCH_FN(mhsa::internal::packed_forward_entry<&mhsa::autograd::mha_packed_forward_autograd>));
  m.impl("_mha_packed_backward",
         TORCH_FN(
             mhsa::internal::packed_backward_entry<&mhsa::autograd::mha_packed_backward_autograd>));
}
