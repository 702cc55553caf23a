// Autograd kernel of _mha_backward: runs the backward op, and refuses to differentiate it
// (double backward) with a clear error instead of silently returning wrong gradients.
#include <torch/autograd.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include "mha_op_entry.h"

namespace mhsa::autograd {
namespace {

using internal::AttentionOptions;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MhaBackwardFunction : public torch::autograd::Function<MhaBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const std::optional<at::Tensor>& grad_attn_weights,
                               const at::Tensor& x, const at::Tensor& in_proj_weight,
                               const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                               const at::Tensor& context, const at::Tensor& logsumexp,
                               const at::Tensor& rng_state, const AttentionOptions& options,
                               std::array<bool, 5> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b, c, d, e] = internal::call_backward_op(grad_output, grad_attn_weights, x,
                                                      in_proj_weight, out_proj_weight, qkv, context,
                                                      logsumexp, rng_state, options, output_mask);
    // A custom Function cannot return undefined tensors, so only the requested gradients
    // (output_mask) are returned; mha_backward_autograd puts them back in place.
    variable_list requested;
    for (const at::Tensor& t : {a, b, c, d, e}) {
      if (t.defined()) requested.push_back(t);
    }
    return requested;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(false,
                "mhsa: double backward (the gradient of _mha_backward) is not supported; "
                "multi-head self-attention in mhsa is differentiable once");
  }
};

internal::BackwardOutputs mha_backward_autograd(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const AttentionOptions& options, std::array<bool, 5> output_mask) {
  const variable_list requested =
      MhaBackwardFunction::apply(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight,
                                 qkv, context, logsumexp, rng_state, options, output_mask);
  std::array<at::Tensor, 5> grads;
  size_t next = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (output_mask[i]) {
      TORCH_INTERNAL_ASSERT(next < requested.size(), "_mha_backward returned too few gradients");
      grads[i] = requested[next++];
    }
  }
  TORCH_INTERNAL_ASSERT(next == requested.size(), "_mha_backward returned too many gradients");
  return {grads[0], grads[1], grads[2], grads[3], grads[4]};
}

}  // namespace
}  // namespace mhsa::autograd

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl("_mha_backward",
         TORCH_FN(mhsa::internal::backward_entry<&mhsa::autograd::mha_backward_autograd>));
}
