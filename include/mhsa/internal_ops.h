#pragma once
// The internal operators behind the public ones (<mhsa/ops.h>), for custom autograd, tests and
// tools: not a stable API, their arguments follow what the kernels need. The leading underscore
// follows PyTorch's internal attention ops (aten::_scaled_dot_product_flash_attention); the names
// from before the rename (mhsa::mha_forward, ...) stay registered as deprecated aliases that
// warn once and forward here (csrc/deprecated_ops.cpp), so old TorchScript models keep loading.
#include <ATen/core/Tensor.h>
#include <c10/macros/Export.h>

#include <mhsa/ops.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace mhsa::internal {

// The arguments _mha_forward and _mha_backward share: how the heads are laid out, which keys
// each query may see, and dropout. The CPU, Meta and Autograd kernels take this one bundle (the
// schema-shaped parameter lists exist only at the dispatcher boundary, csrc/mha_op_entry.h), so
// adding an argument touches the schema, this struct, that boundary and the code that uses it.
// PackedAttentionOptions below is the same for the packed pair.
struct AttentionOptions {
  int64_t num_heads = 1;
  bool batch_first = false;
  std::optional<at::Tensor> attn_mask;         // bool or float, (L, L) or (N*H, L, L)
  std::optional<at::Tensor> key_padding_mask;  // bool or float, (N, L)
  bool is_causal = false;
  double dropout_p = 0.0;
  // need_weights with average_attn_weights: weights averaged over heads, (N, L, L); without it
  // per head, (N, H, L, L). Backward needs it to read grad_attn_weights.
  bool average_attn_weights = true;
  std::array<int64_t, 2> window_size = kNoWindow;  // {left, right}, -1: unbounded
};

// (output, attn_weights, qkv, context, logsumexp, rng_state); see csrc/mhsa.cpp.
using ForwardOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_x, grad_in_proj_weight, grad_in_proj_bias, grad_out_proj_weight, grad_out_proj_bias);
// an entry whose output_mask is false is undefined.
using BackwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// mhsa::_mha_forward, what multi_head_self_attention calls after canonicalizing. x is (L, N, E),
// or (N, L, E) with batch_first.
C10_EXPORT ForwardOutputs mha_forward(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                      const std::optional<at::Tensor>& in_proj_bias,
                                      const at::Tensor& out_proj_weight,
                                      const std::optional<at::Tensor>& out_proj_bias,
                                      const AttentionOptions& options, bool need_weights);

// mhsa::_mha_backward, from what mha_forward returned (the Autograd kernel of _mha_forward
// calls it).
C10_EXPORT BackwardOutputs mha_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const AttentionOptions& options, std::array<bool, 5> output_mask);

// The arguments _mha_packed_forward and _mha_packed_backward share (the packed ops take no
// masks: causal and the sliding window are the only restrictions, per sequence).
struct PackedAttentionOptions {
  int64_t num_heads = 1;
  bool is_causal = false;
  std::array<int64_t, 2> window_size = kNoWindow;  // {left, right}, -1: unbounded
  double dropout_p = 0.0;
};

// (output, qkv, context, logsumexp, rng_state) of _mha_packed_forward, and the five gradients
// of _mha_packed_backward (undefined where output_mask is false).
using PackedForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// mhsa::_mha_packed_forward, what multi_head_self_attention_packed calls; max_seqlen, if given,
// must bound every sequence's length.
C10_EXPORT PackedForwardOutputs mha_packed_forward(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen = std::nullopt);

// mhsa::_mha_packed_backward.
C10_EXPORT BackwardOutputs mha_packed_backward(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const PackedAttentionOptions& options, std::array<bool, 5> output_mask);

// The arguments _attention_block_forward and _attention_block_backward share. A block may be a
// piece of a longer attention (the ring's): `diagonal` places its first query `diagonal`
// positions after its first key for the causal mask and the window, and `dropout_plane`
// (rows, cols, row_offset, col_offset) is where it sits in the whole for the dropout bits
// (zeros: its own L x S plane).
struct BlockOptions {
  double dropout_p = 0.0;
  bool is_causal = false;
  std::optional<double> scale;                     // default 1 / sqrt(D)
  std::array<int64_t, 2> window_size = kNoWindow;  // {left, right}, -1: unbounded
  int64_t diagonal = 0;
  std::array<int64_t, 4> dropout_plane = {0, 0, 0, 0};
  // (N, S), nn.MultiheadAttention's convention: bool true = may not attend, or float (added).
  std::optional<at::Tensor> key_padding_mask;
};

// (output (N, H, L, Dv), attn_weights, logsumexp (N, H, L), rng_state)
using BlockForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_query, grad_key, grad_value)
using BlockBackwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// mhsa::_attention_block_forward, the attention core of scaled_dot_product_attention and the
// ring: query (N, H, L, D), key (N, H_kv, S, D), value (N, H_kv, S, Dv), H a multiple of H_kv;
// attn_mask broadcastable to (N, H, L, S), bool (true = may attend, as SDPA) or float (added).
// rng_state: the dropout seed to use (the ring's ranks share one), or none to draw one.
C10_EXPORT BlockForwardOutputs attention_block_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options, bool need_weights,
    bool average_attn_weights, const std::optional<at::Tensor>& rng_state = std::nullopt);

// mhsa::_attention_block_backward: the gradients, from the output and the log-sum-exp of the
// whole attention the block belongs to.
C10_EXPORT BlockBackwardOutputs attention_block_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask = {true, true, true});

}  // namespace mhsa::internal
