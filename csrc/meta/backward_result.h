#pragma once
// The Meta result of both backward ops (_mha_backward, _mha_packed_backward): the five
// gradients shaped like what they differentiate, x's dtype, undefined where output_mask is false.
#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace mhsa::meta {

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_result(
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const c10::SymInt& E, const std::array<bool, 5>& output_mask) {
  at::Tensor grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b;
  if (output_mask[0]) grad_x = at::empty_symint(x.sym_sizes(), x.options());
  if (output_mask[1]) grad_in_w = at::empty_symint(in_proj_weight.sym_sizes(), x.options());
  if (output_mask[2]) grad_in_b = at::empty_symint({E * 3}, x.options());
  if (output_mask[3]) grad_out_w = at::empty_symint(out_proj_weight.sym_sizes(), x.options());
  if (output_mask[4]) grad_out_b = at::empty_symint({E}, x.options());
  return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
}

}  // namespace mhsa::meta
