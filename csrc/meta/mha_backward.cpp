// Shape inference for _mha_backward on the Meta key (see meta/mha_forward.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "mha_op_entry.h"

namespace mhsa::meta {
namespace {

internal::BackwardOutputs mha_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const internal::AttentionOptions& o,
    std::array<bool, 5> output_mask) {
  const MhaSizes s = check_mha_inputs("_mha_backward", x, in_proj_weight, std::nullopt,
                                      out_proj_weight, std::nullopt, o);
  check_mha_backward_inputs(s, grad_output, grad_attn_weights, x, qkv, context, logsumexp,
                            rng_state, o.average_attn_weights);
  at::Tensor grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b;
  if (output_mask[0]) grad_x = at::empty_symint(x.sym_sizes(), x.options());
  if (output_mask[1]) grad_in_w = at::empty_symint(in_proj_weight.sym_sizes(), x.options());
  if (output_mask[2]) grad_in_b = at::empty_symint({s.embed * 3}, x.options());
  if (output_mask[3]) grad_out_w = at::empty_symint(out_proj_weight.sym_sizes(), x.options());
  if (output_mask[4]) grad_out_b = at::empty_symint({s.embed}, x.options());
  return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) {
  m.impl("_mha_backward", TORCH_FN(mhsa::internal::backward_entry<&mhsa::meta::mha_backward_meta>));
}
