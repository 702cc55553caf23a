// Autograd for _attention_block_forward, in C++ (every front door gets gradients without
// Python): backward is _attention_block_backward from the saved inputs, output and log-sum-exp.
#include <torch/autograd.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include "attention_block_entry.h"
#include "autograd/requested_gradients.h"

namespace mhsa::autograd {
namespace {

using internal::BlockOptions;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_block_options(AutogradContext* ctx, const BlockOptions& options) {
  ctx->saved_data["dropout_p"] = options.dropout_p;
  ctx->saved_data["is_causal"] = options.is_causal;
  ctx->saved_data["has_scale"] = options.scale.has_value();
  ctx->saved_data["scale"] = options.scale.value_or(0.0);
  ctx->saved_data["window_left"] = options.window_size[0];
  ctx->saved_data["window_right"] = options.window_size[1];
  ctx->saved_data["diagonal"] = options.diagonal;
  ctx->saved_data["dropout_plane"] =
      std::vector<int64_t>(options.dropout_plane.begin(), options.dropout_plane.end());
}

BlockOptions load_block_options(AutogradContext* ctx) {
  BlockOptions options;
  options.dropout_p = ctx->saved_data["dropout_p"].toDouble();
  options.is_causal = ctx->saved_data["is_causal"].toBool();
  if (ctx->saved_data["has_scale"].toBool()) options.scale = ctx->saved_data["scale"].toDouble();
  options.window_size = {ctx->saved_data["window_left"].toInt(),
                         ctx->saved_data["window_right"].toInt()};
  options.diagonal = ctx->saved_data["diagonal"].toInt();
  const auto plane = ctx->saved_data["dropout_plane"].toIntVector();
  options.dropout_plane = {plane[0], plane[1], plane[2], plane[3]};
  return options;
}

class AttentionBlockFunction : public torch::autograd::Function<AttentionBlockFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                               const BlockOptions& options, bool need_weights,
                               bool average_attn_weights,
                               const std::optional<at::Tensor>& shared_rng_state) {
    for (const auto* mask : {&attn_mask, &options.key_padding_mask}) {
      TORCH_CHECK(!(mask->has_value() && (*mask)->defined() && (*mask)->requires_grad()),
                  "_attention_block_forward: a mask requires grad, but mhsa treats masks as "
                  "constants and returns no gradient for them; pass mask.detach()");
    }
    // Redispatch below the Autograd key (without the guard this kernel would call itself).
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, weights, lse, rng_state] =
        internal::attention_block_forward(query, key, value, attn_mask, options, need_weights,
                                          average_attn_weights, shared_rng_state);
    // O(N*H*L) saved state beyond the inputs: no attention matrix.
    ctx->save_for_backward({query, key, value, output, lse, rng_state,
                            attn_mask.value_or(at::Tensor()),
                            options.key_padding_mask.value_or(at::Tensor())});
    save_block_options(ctx, options);
    ctx->saved_data["need_weights"] = need_weights;
    ctx->saved_data["average_attn_weights"] = average_attn_weights;
    // One call: each call replaces the set the previous one marked.
    ctx->mark_non_differentiable(need_weights ? variable_list{lse, rng_state}
                                              : variable_list{weights, lse, rng_state});
    ctx->set_materialize_grads(false);
    return {output, weights, lse, rng_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& output = saved[3];
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    std::optional<at::Tensor> grad_weights;
    if (ctx->saved_data["need_weights"].toBool() && grads[1].defined()) grad_weights = grads[1];
    std::optional<at::Tensor> mask;
    if (saved[6].defined()) mask = saved[6];
    BlockOptions options = load_block_options(ctx);
    if (saved[7].defined()) options.key_padding_mask = saved[7];
    const std::array<bool, 3> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                             ctx->needs_input_grad(2)};
    auto [grad_q, grad_k, grad_v] = internal::attention_block_backward(
        grad_output, grad_weights, saved[0], saved[1], saved[2], output, saved[4], saved[5], mask,
        options, ctx->saved_data["average_attn_weights"].toBool(), output_mask);
    // One entry per forward argument after ctx: three tensors, then the non-differentiable rest.
    return {grad_q,       grad_k,       grad_v,       at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

internal::BlockForwardOutputs attention_block_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options, bool need_weights,
    bool average_attn_weights, const std::optional<at::Tensor>& shared_rng_state) {
  auto r = AttentionBlockFunction::apply(query, key, value, attn_mask, options, need_weights,
                                         average_attn_weights, shared_rng_state);
  return {r[0], r[1], r[2], r[3]};
}

// The backward op under autograd: runs, and refuses to be differentiated again.
class AttentionBlockBackwardFunction
    : public torch::autograd::Function<AttentionBlockBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_output,
                               const std::optional<at::Tensor>& grad_attn_weights,
                               const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const at::Tensor& output,
                               const at::Tensor& logsumexp, const at::Tensor& rng_state,
                               const std::optional<at::Tensor>& attn_mask,
                               const BlockOptions& options, bool average_attn_weights,
                               std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gq, gk, gv] = internal::attention_block_backward(
        grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state, attn_mask,
        options, average_attn_weights, output_mask);
    return defined_gradients({gq, gk, gv});
  }

  static variable_list backward(AutogradContext*, variable_list) {
    refuse_double_backward("_attention_block_backward");
  }
};

internal::BlockBackwardOutputs attention_block_backward_autograd(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask) {
  const variable_list defined = AttentionBlockBackwardFunction::apply(
      grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state, attn_mask,
      options, average_attn_weights, output_mask);
  std::array<at::Tensor, 3> grads;
  size_t next = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (output_mask[i]) grads[i] = defined.at(next++);
  }
  return {grads[0], grads[1], grads[2]};
}

}  // namespace
}  // namespace mhsa::autograd

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl(
      "_attention_block_forward",
      TORCH_FN(
          mhsa::internal::block_forward_entry<&mhsa::autograd::attention_block_forward_autograd>));
  m.impl("_attention_block_backward",
         TORCH_FN(mhsa::internal::block_backward_entry<
                  &mhsa::autograd::attention_block_backward_autograd>));
}
