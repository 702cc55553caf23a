// Autograd kernel of _mha_backward: runs the backward op, and refuses to differentiate it
// (double backward) with a clear error instead of silently returning wrong gradients.
#include <torch/autograd.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include "autograd/requested_gradients.h"
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
    auto [a, b, c, d, e] =
        internal::mha_backward(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight,
                               qkv, context, logsumexp, rng_state, options, output_mask);
    return defined_gradients({a, b, c, d, e});  // put back in place by mha_backward_autograd
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("_mha_backward");
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
  return place_gradients(requested, output_mask, "_mha_backward");
}

}  // namespace
}  // namespace mhsa::autograd

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl("_mha_backward",
         TORCH_FN(mhsa::internal::backward_entry<&mhsa::autograd::mha_backward_autograd>));
}
