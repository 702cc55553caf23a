// Shape inference for mha_backward on the Meta key (see meta/mha_forward.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace mhsa::meta {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool average_attn_weights, std::array<bool, 5> output_mask,
    c10::IntArrayRef window_size) {
  const MhaSizes s = check_mha_inputs("mha_backward", x, in_proj_weight, std::nullopt,
                                      out_proj_weight, std::nullopt, num_heads, batch_first,
                                      attn_mask, key_padding_mask, dropout_p);
  check_window_size("mha_backward", window_size);
  check_mha_backward_inputs(s, grad_output, grad_attn_weights, x, qkv, context, logsumexp,
                            rng_state, average_attn_weights);
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
  m.impl("mha_backward", TORCH_FN(mhsa::meta::mha_backward_meta));
}
