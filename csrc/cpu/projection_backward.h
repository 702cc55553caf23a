#pragma once
// The first and the last step of both backward kernels (mha_backward.cpp, mha_packed.cpp): the
// gradients through the output projection, output = s C W_out^T + b_out (C the saved context,
// rows of E; s = 1 / (1 - dropout_p) under dropout, where the kernels keep C unscaled, see
// DropoutParams, else 1), and through the input projection, qkv = x W_in^T + b_in.
#include <ATen/ATen.h>

#include <array>

#include "cpu/input_bias_sums.h"

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

struct InputProjectionGrads {
  at::Tensor grad_x;               // rows of x (2-D), if output_mask[0]
  at::Tensor grad_in_proj_weight;  // if output_mask[1]
  at::Tensor grad_in_proj_bias;    // if output_mask[2]
};

// From the fp32 QKV gradient (rows of x2d, 3E) and the bias block sums the attention kernels
// left, results in `dtype`. The bias gradient comes first and its block sums are freed before
// the GEMMs, where backward's memory peaks.
InputProjectionGrads input_projection_backward(const at::Tensor& grad_qkv, InputBiasSums bias_sums,
                                               const at::Tensor& x2d,
                                               const at::Tensor& in_proj_weight,
                                               const std::array<bool, 5>& output_mask,
                                               at::ScalarType dtype);

}  // namespace mhsa::cpu
