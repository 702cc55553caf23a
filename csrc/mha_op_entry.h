#pragma once
// The dispatcher boundary of the internal ops (_mha_forward, _mha_backward and the packed pair):
// the one place besides the schemas (mhsa.cpp) where their parameters are listed one by one.
// Every dispatch key's kernel takes the options bundle and registers through forward_entry<&k>
// and friends, which gather the schema's parameters into it; call_forward_op and friends spread
// the bundle back into them for callers of the ops (mhsa::internal::mha_forward, ...).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <mhsa/internal_ops.h>

#include "checks/checks.h"

namespace mhsa::internal {

// What a kernel of each op implements, given the bundle.
using ForwardKernel = ForwardOutputs (*)(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                         const std::optional<at::Tensor>& in_proj_bias,
                                         const at::Tensor& out_proj_weight,
                                         const std::optional<at::Tensor>& out_proj_bias,
                                         const AttentionOptions& options, bool need_weights);
using BackwardKernel = BackwardOutputs (*)(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const AttentionOptions& options, std::array<bool, 5> output_mask);

// window_size arrives as int[2]; the schema does not fix the length for every caller, so it is
// checked (with its values) by check_window_size before it becomes a pair.
inline std::array<int64_t, 2> window_pair(const char* op, c10::IntArrayRef window_size) {
  check_window_size(op, window_size);
  return {window_size[0], window_size[1]};
}

// The registered kernel of _mha_forward for one dispatch key: the schema's parameters, in the
// schema's order, gathered into AttentionOptions for Kernel.
template <ForwardKernel Kernel>
ForwardOutputs forward_entry(const at::Tensor& x, const at::Tensor& in_proj_weight,
                             const std::optional<at::Tensor>& in_proj_bias,
                             const at::Tensor& out_proj_weight,
                             const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                             bool batch_first, const std::optional<at::Tensor>& attn_mask,
                             const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                             double dropout_p, bool need_weights, bool average_attn_weights,
                             c10::IntArrayRef window_size) {
  const AttentionOptions options{num_heads,
                                 batch_first,
                                 attn_mask,
                                 key_padding_mask,
                                 is_causal,
                                 dropout_p,
                                 average_attn_weights,
                                 window_pair("_mha_forward", window_size)};
  return Kernel(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, options,
                need_weights);
}

// The same for _mha_backward.
template <BackwardKernel Kernel>
BackwardOutputs backward_entry(const at::Tensor& grad_output,
                               const std::optional<at::Tensor>& grad_attn_weights,
                               const at::Tensor& x, const at::Tensor& in_proj_weight,
                               const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                               const at::Tensor& context, const at::Tensor& logsumexp,
                               const at::Tensor& rng_state, int64_t num_heads, bool batch_first,
                               const std::optional<at::Tensor>& attn_mask,
                               const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                               double dropout_p, bool average_attn_weights,
                               std::array<bool, 5> output_mask, c10::IntArrayRef window_size) {
  const AttentionOptions options{num_heads,
                                 batch_first,
                                 attn_mask,
                                 key_padding_mask,
                                 is_causal,
                                 dropout_p,
                                 average_attn_weights,
                                 window_pair("_mha_backward", window_size)};
  return Kernel(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight, qkv, context,
                logsumexp, rng_state, options, output_mask);
}

// The reverse, for callers of the ops (mhsa::internal::mha_forward and mha_backward): the bundle
// spread back into the schema's parameters, through the dispatcher. The typed handle's signature
// is that of any entry instance.
inline ForwardOutputs call_forward_op(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                      const std::optional<at::Tensor>& in_proj_bias,
                                      const at::Tensor& out_proj_weight,
                                      const std::optional<at::Tensor>& out_proj_bias,
                                      const AttentionOptions& options, bool need_weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_mha_forward", "")
                       .typed<decltype(forward_entry<nullptr>)>();
  return op.call(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, options.num_heads,
                 options.batch_first, options.attn_mask, options.key_padding_mask,
                 options.is_causal, options.dropout_p, need_weights, options.average_attn_weights,
                 options.window_size);
}

inline BackwardOutputs call_backward_op(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const AttentionOptions& options, std::array<bool, 5> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_mha_backward", "")
                       .typed<decltype(backward_entry<nullptr>)>();
  return op.call(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight, qkv, context,
                 logsumexp, rng_state, options.num_heads, options.batch_first, options.attn_mask,
                 options.key_padding_mask, options.is_causal, options.dropout_p,
                 options.average_attn_weights, output_mask, options.window_size);
}

// The same boundary for _mha_packed_forward and _mha_packed_backward.
using PackedForwardKernel = PackedForwardOutputs (*)(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen);
using PackedBackwardKernel = BackwardOutputs (*)(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const PackedAttentionOptions& options, std::array<bool, 5> output_mask);

template <PackedForwardKernel Kernel>
PackedForwardOutputs packed_forward_entry(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                          const at::Tensor& in_proj_weight,
                                          const std::optional<at::Tensor>& in_proj_bias,
                                          const at::Tensor& out_proj_weight,
                                          const std::optional<at::Tensor>& out_proj_bias,
                                          int64_t num_heads, std::optional<int64_t> max_seqlen,
                                          bool is_causal, int64_t window_left, int64_t window_right,
                                          double dropout_p) {
  const PackedAttentionOptions options{
      num_heads, is_causal, {window_left, window_right}, dropout_p};
  return Kernel(x, cu_seqlens, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                options, max_seqlen);
}

template <PackedBackwardKernel Kernel>
BackwardOutputs packed_backward_entry(const at::Tensor& grad_output, const at::Tensor& x,
                                      const at::Tensor& cu_seqlens,
                                      const at::Tensor& in_proj_weight,
                                      const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                                      const at::Tensor& context, const at::Tensor& logsumexp,
                                      const at::Tensor& rng_state, int64_t num_heads,
                                      bool is_causal, int64_t window_left, int64_t window_right,
                                      double dropout_p, std::array<bool, 5> output_mask) {
  const PackedAttentionOptions options{
      num_heads, is_causal, {window_left, window_right}, dropout_p};
  return Kernel(grad_output, x, cu_seqlens, in_proj_weight, out_proj_weight, qkv, context,
                logsumexp, rng_state, options, output_mask);
}

inline PackedForwardOutputs call_packed_forward_op(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_mha_packed_forward", "")
                       .typed<decltype(packed_forward_entry<nullptr>)>();
  return op.call(x, cu_seqlens, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                 options.num_heads, max_seqlen, options.is_causal, options.window_size[0],
                 options.window_size[1], options.dropout_p);
}

inline BackwardOutputs call_packed_backward_op(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const PackedAttentionOptions& options, std::array<bool, 5> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_mha_packed_backward", "")
                       .typed<decltype(packed_backward_entry<nullptr>)>();
  return op.call(grad_output, x, cu_seqlens, in_proj_weight, out_proj_weight, qkv, context,
                 logsumexp, rng_state, options.num_heads, options.is_causal, options.window_size[0],
                 options.window_size[1], options.dropout_p, output_mask);
}

}  // namespace mhsa::internal
