// The public op mhsa::scaled_dot_product_attention (torch.nn.functional's semantics, plus a
// sliding window) and the C++ callers of the attention block ops.
//
// The public op is CompositeImplicitAutograd: it checks SDPA's rules, views the inputs as
// (N, H, L, E) and calls _attention_block_forward, whose Autograd kernel gives the gradients.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>
#include <mhsa/ops.h>

#include "attention_block_entry.h"

namespace mhsa {

namespace internal {

BlockForwardOutputs attention_block_forward(const at::Tensor& query, const at::Tensor& key,
                                            const at::Tensor& value,
                                            const std::optional<at::Tensor>& attn_mask,
                                            const BlockOptions& options, bool need_weights,
                                            bool average_attn_weights,
                                            const std::optional<at::Tensor>& rng_state) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_attention_block_forward", "")
                       .typed<decltype(block_forward_entry<nullptr>)>();
  return op.call(query, key, value, attn_mask, options.dropout_p, options.is_causal, options.scale,
                 options.window_size, need_weights, average_attn_weights, options.diagonal,
                 options.dropout_plane, rng_state, options.key_padding_mask);
}

BlockBackwardOutputs attention_block_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::_attention_block_backward", "")
                       .typed<decltype(block_backward_entry<nullptr>)>();
  return op.call(grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state,
                 attn_mask, options.dropout_p, options.is_causal, options.scale,
                 options.window_size, average_attn_weights, options.diagonal, options.dropout_plane,
                 output_mask, options.key_padding_mask);
}

}  // namespace internal

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

// (..., heads, length, dim) as (N, heads, length, dim): 2-D and 3-D inputs get leading dims of
// one (a 3-D input's first dim is its heads, as SDPA reads it for enable_gqa), more than four
// dims are flattened into N.
at::Tensor as_four_dims(const at::Tensor& t) {
  if (t.dim() == 2) return t.unsqueeze(0).unsqueeze(0);
  if (t.dim() == 3) return t.unsqueeze(0);
  if (t.dim() == 4) return t;
  return t.reshape_symint({-1, t.sym_size(-3), t.sym_size(-2), t.sym_size(-1)});
}

at::Tensor scaled_dot_product_attention_composite(const at::Tensor& query, const at::Tensor& key,
                                                  const at::Tensor& value,
                                                  const std::optional<at::Tensor>& attn_mask,
                                                  double dropout_p, bool is_causal,
                                                  std::optional<double> scale, bool enable_gqa,
                                                  at::OptionalIntArrayRef window_size) {
  TORCH_CHECK(query.dim() >= 2 && key.dim() >= 2 && value.dim() >= 2, kOp,
              ": expected query, key, and value to all be at least 2 dimensional, but got "
              "query.dim: ",
              query.dim(), " key.dim: ", key.dim(), " and value.dim: ", value.dim(), " instead");
  TORCH_CHECK(query.dim() == key.dim() && query.dim() == value.dim(), kOp,
              ": expected query, key, and value with the same number of dims, got query.dim: ",
              query.dim(), " key.dim: ", key.dim(), " and value.dim: ", value.dim());
  // The batch dims (all but the last three) must agree; the heads (dim -3) may differ under GQA.
  for (int64_t d = 0; d + 3 < query.dim(); ++d) {
    TORCH_CHECK(key.sym_size(d) == query.sym_size(d) && value.sym_size(d) == query.sym_size(d), kOp,
                ": expected query, key, and value with the same batch dims, got query ",
                query.sym_sizes(), ", key ", key.sym_sizes(), " and value ", value.sym_sizes());
  }
  at::Tensor q = as_four_dims(query), k = as_four_dims(key), v = as_four_dims(value);
  const c10::SymInt H = q.sym_size(1), H_kv = k.sym_size(1);
  if (!enable_gqa) {
    TORCH_CHECK(H == H_kv && H == v.sym_size(1), kOp,
                ": expected query, key, and value to have the same number of heads, got query ", H,
                ", key ", H_kv, " and value ", v.sym_size(1),
                " (pass enable_gqa=True for grouped-query attention)");
  } else {
    TORCH_CHECK(H_kv > 0 && H % H_kv == 0, kOp,
                ": number of heads in key and value must divide the number of heads in query, "
                "got query ",
                H, " and key/value ", H_kv);
  }
  std::optional<at::Tensor> mask = attn_mask;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->dim() <= query.dim(), kOp, ": expected attn_mask broadcastable to ",
                "(..., L, S), got shape ", mask->sym_sizes(), " for query ", query.sym_sizes());
    if (query.dim() > 4) {  // broadcast over the batch dims that become N
      std::vector<c10::SymInt> full(query.sym_sizes().begin(), query.sym_sizes().end());
      full.back() = k.sym_size(2);
      mask = mask->expand_symint(full).reshape_symint(
          {-1, full[full.size() - 3], full[full.size() - 2], full.back()});
    }
  }
  internal::BlockOptions options;
  options.dropout_p = dropout_p;
  options.is_causal = is_causal;
  options.scale = scale;
  if (window_size.has_value()) {
    options.window_size = internal::block_options(kOp, 0.0, false, std::nullopt, *window_size, 0,
                                                  {0, 0, 0, 0}, std::nullopt)
                              .window_size;
  }
  auto [output, weights, lse, rng_state] = internal::attention_block_forward(
      q, k, v, mask, options, /*need_weights=*/false, /*average_attn_weights=*/true, std::nullopt);
  if (query.dim() == 4) return output;
  std::vector<c10::SymInt> shape(query.sym_sizes().begin(), query.sym_sizes().end());
  shape.back() = v.sym_size(3);
  return output.reshape_symint(shape);
}

}  // namespace

at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key,
                                        const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask,
                                        double dropout_p, bool is_causal,
                                        std::optional<double> scale, bool enable_gqa,
                                        at::OptionalIntArrayRef window_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::scaled_dot_product_attention", "")
                       .typed<decltype(scaled_dot_product_attention)>();
  return op.call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                 window_size);
}

}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  m.impl("scaled_dot_product_attention", TORCH_FN(mhsa::scaled_dot_product_attention_composite));
}
