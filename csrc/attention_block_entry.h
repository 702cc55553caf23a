#pragma once
// The dispatcher boundary of _attention_block_forward and _attention_block_backward: their
// schema parameters gathered into BlockOptions (see mha_op_entry.h for why), for every dispatch
// key's kernel and for the C++ callers of the ops (attention_block.cpp).
#include <ATen/core/Tensor.h>

#include <mhsa/internal_ops.h>

#include "checks/checks.h"

namespace mhsa::internal {

using BlockForwardKernel = BlockForwardOutputs (*)(const at::Tensor& query, const at::Tensor& key,
                                                   const at::Tensor& value,
                                                   const std::optional<at::Tensor>& attn_mask,
                                                   const BlockOptions& options, bool need_weights,
                                                   bool average_attn_weights,
                                                   const std::optional<at::Tensor>& rng_state);
using BlockBackwardKernel = BlockBackwardOutputs (*)(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask);

inline BlockOptions block_options(const char* op, double dropout_p, bool is_causal,
                                  std::optional<double> scale, c10::IntArrayRef window_size,
                                  int64_t diagonal, c10::IntArrayRef dropout_plane,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  check_window_size(op, window_size);
  TORCH_CHECK(dropout_plane.size() == 4, op, ": dropout_plane must be (rows, cols, row_offset, ",
              "col_offset), got ", dropout_plane.size(), " values");
  BlockOptions options;
  options.dropout_p = dropout_p;
  options.is_causal = is_causal;
  options.scale = scale;
  options.window_size = {window_size[0], window_size[1]};
  options.diagonal = diagonal;
  options.dropout_plane = {dropout_plane[0], dropout_plane[1], dropout_plane[2], dropout_plane[3]};
  options.key_padding_mask = key_padding_mask;
  return options;
}

template <BlockForwardKernel Kernel>
BlockForwardOutputs block_forward_entry(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, c10::IntArrayRef window_size, bool need_weights,
    bool average_attn_weights, int64_t diagonal, c10::IntArrayRef dropout_plane,
    const std::optional<at::Tensor>& rng_state, const std::optional<at::Tensor>& key_padding_mask) {
  const BlockOptions options =
      block_options("_attention_block_forward", dropout_p, is_causal, scale, window_size, diagonal,
                    dropout_plane, key_padding_mask);
  return Kernel(query, key, value, attn_mask, options, need_weights, average_attn_weights,
                rng_state);
}

template <BlockBackwardKernel Kernel>
BlockBackwardOutputs block_backward_entry(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
    std::optional<double> scale, c10::IntArrayRef window_size, bool average_attn_weights,
    int64_t diagonal, c10::IntArrayRef dropout_plane, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& key_padding_mask) {
  const BlockOptions options =
      block_options("_attention_block_backward", dropout_p, is_causal, scale, window_size, diagonal,
                    dropout_plane, key_padding_mask);
  return Kernel(grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state,
                attn_mask, options, average_attn_weights, output_mask);
}

}  // namespace mhsa::internal
