// The public op mhsa::multi_head_self_attention and the C++ API functions.
//
// The public op is CompositeImplicitAutograd: it only canonicalizes (unbatched input, eval
// mode) and calls mha_forward, whose Autograd kernel provides the gradients. It must not do
// arithmetic of its own, or autograd would decompose it.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mhsa/ops.h>

namespace mhsa {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_forward(
    const at::Tensor& x, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool need_weights, bool average_attn_weights,
    c10::IntArrayRef window_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::mha_forward", "")
                       .typed<decltype(mha_forward)>();
  return op.call(x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
                 batch_first, attn_mask, key_padding_mask, is_causal, dropout_p, need_weights,
                 average_attn_weights, window_size);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool average_attn_weights, std::array<bool, 5> output_mask,
    c10::IntArrayRef window_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::mha_backward", "")
                       .typed<decltype(mha_backward)>();
  return op.call(grad_output, grad_attn_weights, x, in_proj_weight, out_proj_weight, qkv, context,
                 logsumexp, rng_state, num_heads, batch_first, attn_mask, key_padding_mask,
                 is_causal, dropout_p, average_attn_weights, output_mask, window_size);
}

namespace {

std::tuple<at::Tensor, at::Tensor> multi_head_self_attention_composite(
    const at::Tensor& query, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, double dropout_p,
    bool training, bool batch_first, const std::optional<at::Tensor>& key_padding_mask,
    bool need_weights, const std::optional<at::Tensor>& attn_mask, bool average_attn_weights,
    bool is_causal, c10::IntArrayRef window_size) {
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
  // the bias's own dtype. Every other dtype mismatch is refused by mha_forward's checks, as nn
  // refuses it. (A cast is dispatched, not arithmetic of this op: autograd sees aten::to.)
  std::optional<at::Tensor> bias = in_proj_bias;
  if (bias.has_value() && bias->defined() && bias->scalar_type() != x.scalar_type() &&
      at::isFloatingType(bias->scalar_type()) && at::isFloatingType(x.scalar_type())) {
    bias = bias->to(x.scalar_type());
  }
  auto [output, weights, qkv, context, lse, rng_state] =
      mha_forward(x, in_proj_weight, bias, out_proj_weight, out_proj_bias, num_heads,
                  unbatched ? false : batch_first, attn_mask, kpm, is_causal,
                  training ? dropout_p : 0.0, need_weights, average_attn_weights, window_size);
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
    bool is_causal, c10::IntArrayRef window_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::multi_head_self_attention", "")
                       .typed<decltype(multi_head_self_attention)>();
  auto [output, weights] =
      op.call(query, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
              dropout_p, training, batch_first, key_padding_mask, need_weights, attn_mask,
              average_attn_weights, is_causal, window_size);
  return {output, need_weights ? weights : at::Tensor()};
}

}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  m.impl("multi_head_self_attention", TORCH_FN(mhsa::multi_head_self_attention_composite));
}
