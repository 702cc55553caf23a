#pragma once
// The first step of both backward kernels (mha_backward.cpp, mha_packed.cpp): the gradients
// through the output projection, output = s C W_out^T + b_out, where C is the saved context
// (rows of x, E) and s = 1 / (1 - dropout_p) under dropout (the kernels keep C unscaled, see
// DropoutParams), else 1.
#include <ATen/ATen.h>

#include <array>

namespace mhsa::cpu {

struct OutputProjectionGrads {
  at::Tensor grad_out_proj_weight;  // s dOut^T C, if output_mask[3]
  at::Tensor grad_out_proj_bias;    // column sums of dOut, if output_mask[4]
  at::Tensor grad_context;          // s dOut W_out (rows, E), if any of output_mask[0..2]
};

// grad_output and context are 2-D (rows, E); results in `dtype`, each one undefined when
// output_mask does not need it.
OutputProjectionGrads output_projection_backward(
    const at::Tensor& grad_output, const at::Tensor& context, const at::Tensor& out_proj_weight,
    double dropout_p, const std::array<bool, 5>& output_mask, at::ScalarType dtype);

}  // namespace mhsa::cpu
