// Shape inference for _mha_backward on the Meta key (see meta/mha_forward.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks/checks.h"
#include "meta/backward_result.h"
#include "mha_op_entry.h"

namespace mhsa::meta {
namespace {

internal::BackwardOutputs mha_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const internal::AttentionOptions& options,
    std::array<bool, 5> output_mask) {
  const MhaSizes s = check_mha_inputs("_mha_backward", x, in_proj_weight, std::nullopt,
                                      out_proj_weight, std::nullopt, options);
  check_mha_backward_inputs(s, grad_output, grad_attn_weights, x, qkv, context, logsumexp,
                            rng_state, options.average_attn_weights);
  return backward_result(x, in_proj_weight, out_proj_weight, s.embed, output_mask);
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) {
  m.impl("_mha_backward", TORCH_FN(mhsa::internal::backward_entry<&mhsa::meta::mha_backward_meta>));
}
