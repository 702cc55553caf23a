// The public op mhsa::multi_head_self_attention_packed and the C++ API functions of the packed
// ops. The public op is CompositeImplicitAutograd, like multi_head_self_attention: it only
// canonicalizes (eval-mode dropout, the window pair, a bias of another floating dtype) and
// calls _mha_packed_forward, whose Autograd kernel provides the gradients.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>
#include <mhsa/ops.h>

#include "checks/checks.h"
#include "mha_op_entry.h"

namespace mhsa {

namespace internal {

PackedForwardOutputs mha_packed_forward(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                        const at::Tensor& in_proj_weight,
                                        const std::optional<at::Tensor>& in_proj_bias,
                                        const at::Tensor& out_proj_weight,
                                        const std::optional<at::Tensor>& out_proj_bias,
                                        const PackedAttentionOptions& options,
                                        std::optional<int64_t> max_seqlen) {
  return call_packed_forward_op(x, cu_seqlens, in_proj_weight, in_proj_bias, out_proj_weight,
                                out_proj_bias, options, max_seqlen);
}

BackwardOutputs mha_packed_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                    const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
                                    const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                                    const at::Tensor& context, const at::Tensor& logsumexp,
                                    const at::Tensor& rng_state,
                                    const PackedAttentionOptions& options,
                                    std::array<bool, 5> output_mask) {
  return call_packed_backward_op(grad_output, x, cu_seqlens, in_proj_weight, out_proj_weight, qkv,
                                 context, logsumexp, rng_state, options, output_mask);
}

}  // namespace internal

namespace {

at::Tensor multi_head_self_attention_packed_composite(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
    std::optional<int64_t> max_seqlen, double dropout_p, bool training, bool is_causal,
    at::IntArrayRef window_size) {
  internal::PackedAttentionOptions options;
  options.num_heads = num_heads;
  options.is_causal = is_causal;
  options.window_size = internal::window_pair("multi_head_self_attention_packed", window_size);
  options.dropout_p = training ? dropout_p : 0.0;
  // As multi_head_self_attention: an in_proj_bias of another floating dtype is cast like
  // F.linear would, through a dispatched (differentiable) cast.
  std::optional<at::Tensor> bias = in_proj_bias;
  if (bias.has_value() && bias->defined() && bias->scalar_type() != x.scalar_type() &&
      at::isFloatingType(bias->scalar_type()) && at::isFloatingType(x.scalar_type())) {
    bias = bias->to(x.scalar_type());
  }
  auto outputs = internal::mha_packed_forward(x, cu_seqlens, in_proj_weight, bias, out_proj_weight,
                                              out_proj_bias, options, max_seqlen);
  return std::get<0>(outputs);
}

}  // namespace

at::Tensor multi_head_self_attention_packed(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                            const at::Tensor& in_proj_weight,
                                            const std::optional<at::Tensor>& in_proj_bias,
                                            const at::Tensor& out_proj_weight,
                                            const std::optional<at::Tensor>& out_proj_bias,
                                            int64_t num_heads, std::optional<int64_t> max_seqlen,
                                            double dropout_p, bool training, bool is_causal,
                                            c10::IntArrayRef window_size) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mhsa::multi_head_self_attention_packed", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, std::optional<int64_t>,
                            double, bool, bool, at::IntArrayRef)>();
  return op.call(x, cu_seqlens, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                 num_heads, max_seqlen, dropout_p, training, is_causal, window_size);
}

}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  m.impl("multi_head_self_attention_packed",
         TORCH_FN(mhsa::multi_head_self_attention_packed_composite));
}
