// Autograd for _mha_forward, in C++ so that every front door (Python, TorchScript in Python or
// C++, plain LibTorch) gets gradients without a Python interpreter.
#include <torch/autograd.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include "cpu/weight_cache.h"
#include "mha_op_entry.h"

namespace mhsa::autograd {
namespace {

using internal::AttentionOptions;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> defined_or_null(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

void check_not_differentiable(const std::optional<at::Tensor>& mask, const char* name) {
  TORCH_CHECK(!(mask.has_value() && mask->defined() && mask->requires_grad()),
              "_mha_forward: ", name,
              " requires grad, but mhsa treats masks as constants and "
              "returns no gradient for them; pass ",
              name, ".detach()");
}

// The non-tensor arguments and the masks (constants for autograd) of the forward, kept for
// backward: the masks as saved tensors (after the seven MhaForwardFunction saves first), the rest
// in saved_data.
constexpr size_t kFirstSavedMask = 7;

void save_options(AutogradContext* ctx, const AttentionOptions& options) {
  ctx->saved_data["num_heads"] = options.num_heads;
  ctx->saved_data["batch_first"] = options.batch_first;
  ctx->saved_data["is_causal"] = options.is_causal;
  ctx->saved_data["dropout_p"] = options.dropout_p;
  ctx->saved_data["average_attn_weights"] = options.average_attn_weights;
  ctx->saved_data["window_left"] = options.window_size[0];
  ctx->saved_data["window_right"] = options.window_size[1];
}

AttentionOptions load_options(AutogradContext* ctx, const variable_list& saved) {
  AttentionOptions options;
  options.num_heads = ctx->saved_data["num_heads"].toInt();
  options.batch_first = ctx->saved_data["batch_first"].toBool();
  options.attn_mask = defined_or_null(saved[kFirstSavedMask]);
  options.key_padding_mask = defined_or_null(saved[kFirstSavedMask + 1]);
  options.is_causal = ctx->saved_data["is_causal"].toBool();
  options.dropout_p = ctx->saved_data["dropout_p"].toDouble();
  options.average_attn_weights = ctx->saved_data["average_attn_weights"].toBool();
  options.window_size = {ctx->saved_data["window_left"].toInt(),
                         ctx->saved_data["window_right"].toInt()};
  return options;
}

class MhaForwardFunction : public torch::autograd::Function<MhaForwardFunction> {
 public:
  // Edges are made for the tensor arguments only; `options` (which holds the masks) and
  // need_weights get none.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& in_proj_weight,
                               const std::optional<at::Tensor>& in_proj_bias,
                               const at::Tensor& out_proj_weight,
                               const std::optional<at::Tensor>& out_proj_bias,
                               const AttentionOptions& options, bool need_weights) {
    check_not_differentiable(options.attn_mask, "attn_mask");
    check_not_differentiable(options.key_padding_mask, "key_padding_mask");
    // Redispatch below the Autograd key; calling the op from here again without this guard
    // would land back in this kernel and recurse forever.
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, weights, qkv, context, lse, rng_state] = internal::mha_forward(
        x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, options, need_weights);
    // O(N*L*E) saved state: no attention matrix (backward recomputes it from qkv and lse).
    ctx->save_for_backward({x, in_proj_weight, out_proj_weight, qkv, context, lse, rng_state,
                            options.attn_mask.value_or(at::Tensor()),
                            options.key_padding_mask.value_or(at::Tensor())});
    save_options(ctx, options);
    ctx->saved_data["has_in_proj_bias"] = in_proj_bias.has_value() && in_proj_bias->defined();
    ctx->saved_data["has_out_proj_bias"] = out_proj_bias.has_value() && out_proj_bias->defined();
    ctx->saved_data["need_weights"] = need_weights;
    // One call: each call replaces the set the previous one marked.
    ctx->mark_non_differentiable(need_weights
                                     ? variable_list{qkv, context, lse, rng_state}
                                     : variable_list{weights, qkv, context, lse, rng_state});
    // Without this, autograd would hand backward a zero-filled gradient for every output that
    // got none (qkv and context: 4*E floats per row, allocated and zeroed each step, 64 MiB at
    // L = 8192, E = 512). backward treats undefined gradients as zero itself.
    ctx->set_materialize_grads(false);
    return {output, weights, qkv, context, lse, rng_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    // The loss may depend on the weights only, or on the output only.
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const std::optional<at::Tensor> grad_weights =
        ctx->saved_data["need_weights"].toBool() && grads[1].defined()
            ? std::optional<at::Tensor>(grads[1])
            : std::nullopt;
    // needs_input_grad counts only the tensor arguments that were given: an absent bias has no
    // autograd edge.
    const bool has_in_bias = ctx->saved_data["has_in_proj_bias"].toBool();
    const bool has_out_bias = ctx->saved_data["has_out_proj_bias"].toBool();
    size_t edge = 0;
    const bool need_x = ctx->needs_input_grad(edge++);
    const bool need_in_w = ctx->needs_input_grad(edge++);
    const bool need_in_b = has_in_bias && ctx->needs_input_grad(edge++);
    const bool need_out_w = ctx->needs_input_grad(edge++);
    const bool need_out_b = has_out_bias && ctx->needs_input_grad(edge++);
    const std::array<bool, 5> output_mask = {need_x, need_in_w, need_in_b, need_out_w, need_out_b};
    auto [grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b] =
        internal::mha_backward(grad_output, grad_weights, x, saved[1], saved[2], saved[3], saved[4],
                               saved[5], saved[6], load_options(ctx, saved), output_mask);
    // One entry per forward argument: the five tensors, then none for options and need_weights.
    return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b, at::Tensor(), at::Tensor()};
  }
};

internal::ForwardOutputs mha_forward_autograd(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                              const std::optional<at::Tensor>& in_proj_bias,
                                              const at::Tensor& out_proj_weight,
                                              const std::optional<at::Tensor>& out_proj_bias,
                                              const AttentionOptions& options, bool need_weights) {
  const cpu::InferenceCallGuard inference(
      cpu::records_no_graph({&x, &in_proj_weight, in_proj_bias ? &*in_proj_bias : nullptr,
                             &out_proj_weight, out_proj_bias ? &*out_proj_bias : nullptr}));
  auto r = MhaForwardFunction::apply(x, in_proj_weight, in_proj_bias, out_proj_weight,
                                     out_proj_bias, options, need_weights);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace
}  // namespace mhsa::autograd

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl("_mha_forward",
         TORCH_FN(mhsa::internal::forward_entry<&mhsa::autograd::mha_forward_autograd>));
}
