#pragma once
// What the Autograd kernels of _mha_backward and _mha_packed_backward share: the backward ops
// return undefined tensors for the gradients output_mask does not request, which a custom
// autograd Function cannot return, and neither op is differentiable again.
#include <torch/autograd.h>

#include <array>
#include <initializer_list>
#include <tuple>

namespace mhsa::autograd {

// The defined entries of a backward op's result, in order (what the Function returns).
inline torch::autograd::variable_list defined_gradients(std::initializer_list<at::Tensor> grads) {
  torch::autograd::variable_list defined;
  for (const at::Tensor& t : grads) {
    if (t.defined()) defined.push_back(t);
  }
  return defined;
}

// The inverse: the defined gradients put back at the positions output_mask requests.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> place_gradients(
    const torch::autograd::variable_list& defined, const std::array<bool, 5>& output_mask,
    const char* op) {
  std::array<at::Tensor, 5> grads;
  size_t next = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!output_mask[i]) continue;
    TORCH_INTERNAL_ASSERT(next < defined.size(), op, " returned too few gradients");
    grads[i] = defined[next++];
  }
  TORCH_INTERNAL_ASSERT(next == defined.size(), op, " returned too many gradients");
  return {grads[0], grads[1], grads[2], grads[3], grads[4]};
}

// The backward of a backward op: refused with a clear error instead of wrong gradients.
[[noreturn]] inline void refuse_double_backward(const char* op) {
  TORCH_CHECK(false, "mhsa: double backward (the gradient of ", op,
              ") is not supported; multi-head self-attention in mhsa is differentiable once");
  TORCH_INTERNAL_ASSERT(false);  // not reached: TORCH_CHECK(false) throws
}

}  // namespace mhsa::autograd
