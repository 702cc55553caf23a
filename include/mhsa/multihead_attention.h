#pragma once
// C++ frontend module: mhsa::MultiheadAttention, all of torch::nn::MultiheadAttention (self- and
// cross-attention, kdim/vdim, add_bias_kv, add_zero_attn) on the op mhsa::multi_head_attention,
// plus batch_first, is_causal and window_size. The parameters have nn.MultiheadAttention's
// names, shapes and initialization, so state dicts load both ways.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <mhsa/ops.h>

namespace mhsa {

struct C10_EXPORT MultiheadAttentionOptions {
  // kdim and vdim default to embed_dim, as in torch::nn::MultiheadAttentionOptions.
  MultiheadAttentionOptions(int64_t embed_dim, int64_t num_heads);
  TORCH_ARG(int64_t, embed_dim);
  TORCH_ARG(int64_t, num_heads);
  // Dropout probability on the attention weights, applied in training mode only.
  TORCH_ARG(double, dropout) = 0.0;
  // Adds in_proj_bias and out_proj.bias.
  TORCH_ARG(bool, bias) = true;
  // Adds bias_k and bias_v (1, 1, embed_dim): one more key and value every query sees.
  TORCH_ARG(bool, add_bias_kv) = false;
  // Appends a zero key and value (after the projections and bias_k / bias_v).
  TORCH_ARG(bool, add_zero_attn) = false;
  // Features of key and value; other than embed_dim, the projections are separate
  // (q_proj_weight, k_proj_weight, v_proj_weight) instead of one in_proj_weight.
  TORCH_ARG(int64_t, kdim);
  TORCH_ARG(int64_t, vdim);
  // Inputs and output are (N, L, E) instead of (L, N, E).
  TORCH_ARG(bool, batch_first) = false;
};

class C10_EXPORT MultiheadAttentionImpl : public torch::nn::Cloneable<MultiheadAttentionImpl> {
 public:
  MultiheadAttentionImpl(int64_t embed_dim, int64_t num_heads)
      : MultiheadAttentionImpl(MultiheadAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiheadAttentionImpl(const MultiheadAttentionOptions& options_);

  // query (L, N, E), key (S, N, kdim), value (S, N, vdim) ((N, L, E) ... with batch_first, or
  // unbatched (L, E) ...). Masks as in nn.MultiheadAttention: key_padding_mask (N, S), attn_mask
  // (L, S) or (N * num_heads, L, S), bool true = may not attend, float added. Returns
  // (attn_output, attn_weights); attn_weights is undefined when need_weights is false. See
  // mhsa::multi_head_attention in ops.h.
  std::tuple<at::Tensor, at::Tensor> forward(
      const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
      const at::Tensor& key_padding_mask = {}, bool need_weights = true,
      const at::Tensor& attn_mask = {}, bool average_attn_weights = true, bool is_causal = false,
      c10::IntArrayRef window_size = kNoWindow);

  void reset() override;
  // As nn.MultiheadAttention: xavier_uniform_ on in_proj_weight (or q/k/v_proj_weight), zero
  // in_proj_bias and out_proj.bias, xavier_normal_ on bias_k and bias_v; out_proj.weight keeps
  // Linear's init.
  void reset_parameters();

  // Whether kdim == vdim == embed_dim: one packed in_proj_weight.
  bool qkv_same_embed_dim() const {
    return options.kdim() == options.embed_dim() && options.vdim() == options.embed_dim();
  }

  MultiheadAttentionOptions options;
  // Registered as torch::nn::MultiheadAttentionImpl does: the projection weights not in use (and
  // in_proj_bias without bias) are registered undefined, so named_parameters() and state dicts
  // leave them out; bias_k and bias_v are registered only with add_bias_kv.
  at::Tensor in_proj_weight;  // (3E, E)
  at::Tensor q_proj_weight;   // (E, E)
  at::Tensor k_proj_weight;   // (E, kdim)
  at::Tensor v_proj_weight;   // (E, vdim)
  at::Tensor in_proj_bias;    // (3E)
  torch::nn::Linear out_proj{nullptr};
  at::Tensor bias_k;  // (1, 1, E)
  at::Tensor bias_v;  // (1, 1, E)

 protected:
  FORWARD_HAS_DEFAULT_ARGS({3, torch::nn::AnyValue(at::Tensor())}, {4, torch::nn::AnyValue(true)},
                           {5, torch::nn::AnyValue(at::Tensor())}, {6, torch::nn::AnyValue(true)},
                           {7, torch::nn::AnyValue(false)},
                           {8, torch::nn::AnyValue(c10::IntArrayRef(kNoWindow))})
};

TORCH_MODULE(MultiheadAttention);

}  // namespace mhsa
