#include "cpu/projection_backward.h"

#include "cpu/projection_gemm.h"
#include "engine/attention_geometry.h"

namespace mhsa::cpu {

OutputProjectionGrads output_projection_backward(
    const at::Tensor& grad_output, const at::Tensor& context, const at::Tensor& out_proj_weight,
    double dropout_p, const std::array<bool, 5>& output_mask, at::ScalarType dtype) {
  const double context_scale =
      dropout_p > 0.0 ? DropoutParams{true, dropout_p, 0}.keep_scale() : 1.0;
  OutputProjectionGrads g;
  if (output_mask[3]) {
    g.grad_out_proj_weight =
        projection_gemm(grad_output, true, context, false, context_scale, std::nullopt, dtype);
  }
  if (output_mask[4]) g.grad_out_proj_bias = column_sums(grad_output, dtype);
  if (output_mask[0] || output_mask[1] || output_mask[2]) {
    g.grad_context = projection_gemm(grad_output, false, out_proj_weight, false, context_scale,
                                     std::nullopt, dtype);
  }
  return g;
}

InputProjectionGrads input_projection_backward(const at::Tensor& grad_qkv, InputBiasSums bias_sums,
                                               const at::Tensor& x2d,
                                               const at::Tensor& in_proj_weight,
                                               const std::array<bool, 5>& output_mask,
                                               at::ScalarType dtype) {
  InputProjectionGrads g;
  if (output_mask[2]) g.grad_in_proj_bias = bias_sums.gradient(dtype);
  bias_sums = InputBiasSums();
  const at::Tensor grad_qkv_in = grad_qkv.to(dtype);
  if (output_mask[0])
    g.grad_x = projection_gemm(grad_qkv_in, false, in_proj_weight, false, 1.0, std::nullopt, dtype);
  if (output_mask[1])
    g.grad_in_proj_weight =
        projection_gemm(grad_qkv_in, true, x2d, false, 1.0, std::nullopt, dtype);
  return g;
}

}  // namespace mhsa::cpu
