// The public op mhsa::multi_head_self_attention and the C++ API functions of the self-attention
// ops (_mha_forward, _mha_backward, decode_step).
//
// The public op is CompositeImplicitAutograd: it only canonicalizes (unbatched input, eval
// mode) and calls _mha_forward, whose Autograd kernel provides the gradients. It must not do
// arithmetic of its own, or autograd would decompose it.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>
#include <mhsa/ops.h>

#include "checks/checks.h"
#include "mha_op_entry.h"
#include "projected_attention.h"

namespace mhsa {

namespace internal {

ForwardOutputs mha_forward(const at::Tensor& x, const at::Tensor& in_proj_weight,
                           const std::optional<at::Tensor>& in_proj_bias,
                           const at::Tensor& out_proj_weight,
                           const std::optional<at::Tensor>& out_proj_bias,
                           const AttentionOptions& options, bool need_weights) {
  return call_forward_op(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, options,
                         need_weights);
}

BackwardOutputs mha_backward(const at::Tensor& grad_output,
                             const std::optional<at::Tensor>& grad_attn_weights,
                             const at::Tensor& x, const at::Tensor& in_proj_weight,
                             const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                             const at::Tensor& context, const at::Tensor& logsumexp,
                             const at::Tensor& rng_state, const AttentionOptions& options,
                             std::array<bool, 5> output_mask) {
  return call_backward_op(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight, qkv,
                          context, logsumexp, rng_state, options, output_mask);
}

}  // namespace internal

namespace {

// Grouped-query self-attention: num_kv_heads < num_heads key/value heads, in_proj_weight
// ((H + 2 H_kv) D, E). One projection GEMM, the fused attention core (_attention_block_forward,
// which reads the heads of the projection in place), the output projection. x is batch first.
std::tuple<at::Tensor, at::Tensor> grouped_query_self_attention(
    const at::Tensor& x, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t H, int64_t H_kv, double dropout_p,
    const std::optional<at::Tensor>& key_padding_mask, bool need_weights,
    const std::optional<at::Tensor>& attn_mask, bool average_attn_weights, bool is_causal,
    c10::IntArrayRef window_size) {
  const char* op = "multi_head_self_attention";
  const c10::SymInt E = x.sym_size(2);
  TORCH_CHECK(H > 0 && E % H == 0, op, ": embed_dim ", E, " must be divisible by num_heads ", H);
  TORCH_CHECK(H_kv > 0 && H % H_kv == 0, op, ": num_kv_heads (", H_kv,
              ") must be positive and divide num_heads (", H, ")");
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": expected dropout_p in [0, 1], got ",
              dropout_p);
  const c10::SymInt D = E / H;
  const c10::SymInt rows = D * (H + 2 * H_kv);
  check_same_device_dtype(op, "in_proj_weight", in_proj_weight, x);
  check_shape(op, "in_proj_weight", in_proj_weight, {rows, E});
  if (in_proj_bias.has_value() && in_proj_bias->defined()) {
    check_shape(op, "in_proj_bias", *in_proj_bias, {rows});
  }
  check_same_device_dtype(op, "out_proj_weight", out_proj_weight, x);
  check_shape(op, "out_proj_weight", out_proj_weight, {E, E});
  const auto qkv = at::linear(x, in_proj_weight, in_proj_bias)
                       .split_with_sizes_symint({D * H, D * H_kv, D * H_kv}, -1);
  return attend_and_project(op, split_heads(qkv[0], H), split_heads(qkv[1], H_kv),
                            split_heads(qkv[2], H_kv), attn_mask, key_padding_mask, dropout_p,
                            is_causal, window_size, need_weights, average_attn_weights,
                            out_proj_weight, out_proj_bias);
}

std::tuple<at::Tensor, at::Tensor> multi_head_self_attention_composite(
    const at::Tensor& query, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, double dropout_p,
    bool training, bool batch_first, const std::optional<at::Tensor>& key_padding_mask,
    bool need_weights, const std::optional<at::Tensor>& attn_mask, bool average_attn_weights,
    bool is_causal, c10::IntArrayRef window_size, std::optional<int64_t> num_kv_heads) {
  TORCH_CHECK(query.dim() == 2 || query.dim() == 3,
              "multi_head_self_attention: expected query to be 2-D (L, E) unbatched or 3-D ",
              batch_first ? "(N, L, E)" : "(L, N, E)", ", got ", query.dim(), "-D of shape ",
              query.sym_sizes());
  // Unbatched input runs as a batch of one, as in nn.MultiheadAttention (batch_first does not
  // apply to it); a 3-D attn_mask is then (num_heads, L, L).
  const bool unbatched = query.dim() == 2;
  const at::Tensor x = unbatched ? query.unsqueeze(1) : query;
  std::optional<at::Tensor> kpm = key_padding_mask;
  if (unbatched && kpm.has_value() && kpm->defined()) {
    TORCH_CHECK(kpm->dim() == 1,
                "multi_head_self_attention: expected key_padding_mask of shape (L) for an "
                "unbatched query, got shape ",
                kpm->sym_sizes());
    kpm = kpm->unsqueeze(0);
  }
  // nn.MultiheadAttention accepts an in_proj_bias of any floating dtype (F.linear casts it to
  // the input's); so does mhsa, through a differentiable cast, so its gradient comes back in
  // the bias's own dtype. Every other dtype mismatch is refused by _mha_forward's checks, as nn
  // refuses it. (A cast is dispatched, not arithmetic of this op: autograd sees aten::to.)
  std::optional<at::Tensor> bias = in_proj_bias;
  if (bias.has_value() && bias->defined() && bias->scalar_type() != x.scalar_type() &&
      at::isFloatingType(bias->scalar_type()) && at::isFloatingType(x.scalar_type())) {
    bias = bias->to(x.scalar_type());
  }
  if (num_kv_heads.has_value() && *num_kv_heads != num_heads) {
    // Batch first: x is (L, N, E), (N, L, E) with batch_first, or (L, 1, E) unbatched.
    const at::Tensor xb = batch_first && !unbatched ? x : x.transpose(0, 1);
    auto [output, weights] = grouped_query_self_attention(
        xb, in_proj_weight, bias, out_proj_weight, out_proj_bias, num_heads, *num_kv_heads,
        training ? dropout_p : 0.0, kpm, need_weights, attn_mask, average_attn_weights, is_causal,
        window_size);
    if (unbatched) return {output.squeeze(0), need_weights ? weights.squeeze(0) : weights};
    return {batch_first ? output : output.transpose(0, 1), weights};
  }
  internal::AttentionOptions options;
  options.num_heads = num_heads;
  options.batch_first = unbatched ? false : batch_first;
  options.attn_mask = attn_mask;
  options.key_padding_mask = kpm;
  options.is_causal = is_causal;
  options.dropout_p = training ? dropout_p : 0.0;
  options.average_attn_weights = average_attn_weights;
  options.window_size = internal::window_pair("multi_head_self_attention", window_size);
  auto [output, weights, qkv, context, lse, rng_state] = internal::mha_forward(
      x, in_proj_weight, bias, out_proj_weight, out_proj_bias, options, need_weights);
  if (unbatched) {
    output = output.squeeze(1);
    if (need_weights) weights = weights.squeeze(0);
  }
  return {output, weights};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> multi_head_self_attention(
    const at::Tensor& query, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, double dropout_p,
    bool training, bool batch_first, const std::optional<at::Tensor>& key_padding_mask,
    bool need_weights, const std::optional<at::Tensor>& attn_mask, bool average_attn_weights,
    bool is_causal, c10::IntArrayRef window_size, std::optional<int64_t> num_kv_heads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::multi_head_self_attention", "")
                       .typed<decltype(multi_head_self_attention)>();
  auto [output, weights] =
      op.call(query, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
              dropout_p, training, batch_first, key_padding_mask, need_weights, attn_mask,
              average_attn_weights, is_causal, window_size, num_kv_heads);
  return {output, need_weights ? weights : at::Tensor()};
}

// The C++ API of decode_step (the op's kernels: cpu/mha_decode.cpp, autograd/decode_step.cpp).
at::Tensor decode_step(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                       const std::optional<at::Tensor>& in_proj_bias,
                       const at::Tensor& out_proj_weight,
                       const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                       bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                       at::Tensor& cache_length) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::decode_step", "")
                       .typed<decltype(decode_step)>();
  return op.call(x_new, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
                 batch_first, key_cache, value_cache, cache_length);
}

}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  m.impl("multi_head_self_attention", TORCH_FN(mhsa::multi_head_self_attention_composite));
}
