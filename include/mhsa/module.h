#pragma once
// C++ frontend module: mhsa::MultiheadSelfAttention, a self-attention counterpart of
// torch::nn::MultiheadAttention with the same parameter names (in_proj_weight, in_proj_bias,
// out_proj.weight, out_proj.bias) and initialization, plus batch_first and is_causal.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <mhsa/ops.h>

namespace mhsa {

struct C10_EXPORT MultiheadSelfAttentionOptions {
  MultiheadSelfAttentionOptions(int64_t embed_dim, int64_t num_heads);
  TORCH_ARG(int64_t, embed_dim);
  TORCH_ARG(int64_t, num_heads);
  // Dropout probability on the attention weights, applied in training mode only.
  TORCH_ARG(double, dropout) = 0.0;
  // Adds in_proj_bias and out_proj.bias.
  TORCH_ARG(bool, bias) = true;
  // Input and output are (N, L, E) instead of (L, N, E).
  TORCH_ARG(bool, batch_first) = false;
};

// The keys and values of the tokens decoded so far, for MultiheadSelfAttentionImpl::decode
// (created by new_kv_cache). decode writes into the tensors in place and advances `length`;
// the struct itself never changes. Python's mhsa.KVCache has the same three fields.
struct C10_EXPORT KVCache {
  at::Tensor key;     // (batch, num_heads, max_len, head_dim), the projected keys
  at::Tensor value;   // (batch, num_heads, max_len, head_dim), the projected values
  at::Tensor length;  // int64, shape (): tokens cached so far, the same for every sequence

  int64_t max_len() const { return key.size(2); }
  int64_t current_length() const { return length.item<int64_t>(); }
};

class C10_EXPORT MultiheadSelfAttentionImpl
    : public torch::nn::Cloneable<MultiheadSelfAttentionImpl> {
 public:
  MultiheadSelfAttentionImpl(int64_t embed_dim, int64_t num_heads)
      : MultiheadSelfAttentionImpl(MultiheadSelfAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiheadSelfAttentionImpl(const MultiheadSelfAttentionOptions& options_);

  // Returns (attn_output, attn_weights); attn_weights is undefined when need_weights is false.
  std::tuple<at::Tensor, at::Tensor> forward(
      const at::Tensor& query, const at::Tensor& key_padding_mask = {}, bool need_weights = true,
      const at::Tensor& attn_mask = {}, bool average_attn_weights = true, bool is_causal = false,
      c10::IntArrayRef window_size = kNoWindow);

  void reset() override;

  // Packed variable-length sequences: x is (T, E), B sequences back to back at the offsets
  // cu_seqlens (B+1, int32 or int64, from 0 to T); each attends only to itself. Returns the
  // output (T, E). See multi_head_self_attention_packed in ops.h (batch_first does not apply).
  at::Tensor forward_packed(const at::Tensor& x, const at::Tensor& cu_seqlens,
                            std::optional<int64_t> max_seqlen = std::nullopt,
                            bool is_causal = false, c10::IntArrayRef window_size = kNoWindow);
  // xavier_uniform_ on in_proj_weight, zero biases, out_proj.weight keeps Linear's init.
  void reset_parameters();

  // KV-cache decoding (inference). new_kv_cache allocates an empty cache for batch_size
  // sequences of up to max_len tokens (dtype and device default to in_proj_weight's).
  // decode(x_new, cache) takes the next T >= 1 tokens ((T, N, E), or (N, T, E) with
  // batch_first), appends their keys and values to the cache in place and returns their
  // outputs: the rows a causal forward over the whole sequence gives for them. It runs without
  // gradients (a NoGradGuard inside) and never applies dropout.
  KVCache new_kv_cache(int64_t batch_size, int64_t max_len,
                       std::optional<at::ScalarType> dtype = std::nullopt,
                       std::optional<at::Device> device = std::nullopt) const;
  at::Tensor decode(const at::Tensor& x_new, KVCache& cache);

  MultiheadSelfAttentionOptions options;
  at::Tensor in_proj_weight;
  at::Tensor in_proj_bias;
  torch::nn::Linear out_proj{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())}, {2, torch::nn::AnyValue(true)},
                           {3, torch::nn::AnyValue(at::Tensor())}, {4, torch::nn::AnyValue(true)},
                           {5, torch::nn::AnyValue(false)},
                           {6, torch::nn::AnyValue(c10::IntArrayRef(kNoWindow))})
};

TORCH_MODULE(MultiheadSelfAttention);

}  // namespace mhsa
