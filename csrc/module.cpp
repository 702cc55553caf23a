// mhsa::MultiheadSelfAttention, the C++ frontend module.
#include <torch/nn/init.h>

#include <mhsa/module.h>

namespace mhsa {

MultiheadSelfAttentionOptions::MultiheadSelfAttentionOptions(int64_t embed_dim, int64_t num_heads)
    : embed_dim_(embed_dim), num_heads_(num_heads) {}

MultiheadSelfAttentionImpl::MultiheadSelfAttentionImpl(
    const MultiheadSelfAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiheadSelfAttentionImpl::reset() {
  const int64_t E = options.embed_dim(), H = options.num_heads();
  TORCH_CHECK(E > 0 && H > 0, "MultiheadSelfAttention: embed_dim and num_heads must be > 0, got ",
              "embed_dim=", E, ", num_heads=", H);
  TORCH_CHECK(E % H == 0, "MultiheadSelfAttention: embed_dim ", E,
              " must be divisible by num_heads ", H);
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() <= 1.0,
              "MultiheadSelfAttention: dropout must be in [0, 1], got ", options.dropout());
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * E, E}));
  if (options.bias()) {
    in_proj_bias = register_parameter("in_proj_bias", torch::empty({3 * E}));
  } else {
    in_proj_bias = register_parameter("in_proj_bias", {}, /*requires_grad=*/false);
  }
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(E, E).bias(options.bias())));
  reset_parameters();
}

void MultiheadSelfAttentionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(in_proj_weight);
  if (in_proj_bias.defined()) torch::nn::init::constant_(in_proj_bias, 0.0);
  if (out_proj->bias.defined()) torch::nn::init::constant_(out_proj->bias, 0.0);
}

std::tuple<at::Tensor, at::Tensor> MultiheadSelfAttentionImpl::forward(
    const at::Tensor& query, const at::Tensor& key_padding_mask, bool need_weights,
    const at::Tensor& attn_mask, bool average_attn_weights, bool is_causal,
    c10::IntArrayRef window_size) {
  auto optional_of = [](const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  };
  return multi_head_self_attention(
      query, in_proj_weight, optional_of(in_proj_bias), out_proj->weight,
      optional_of(out_proj->bias), options.num_heads(), options.dropout(), is_training(),
      options.batch_first(), optional_of(key_padding_mask), need_weights, optional_of(attn_mask),
      average_attn_weights, is_causal, window_size);
}

at::Tensor MultiheadSelfAttentionImpl::forward_packed(const at::Tensor& x,
                                                      const at::Tensor& cu_seqlens,
                                                      std::optional<int64_t> max_seqlen,
                                                      bool is_causal,
                                                      c10::IntArrayRef window_size) {
  auto optional_of = [](const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  };
  return multi_head_self_attention_packed(x, cu_seqlens, in_proj_weight, optional_of(in_proj_bias),
                                          out_proj->weight, optional_of(out_proj->bias),
                                          options.num_heads(), max_seqlen, options.dropout(),
                                          is_training(), is_causal, window_size);
}

}  // namespace mhsa

namespace mhsa {

KVCache MultiheadSelfAttentionImpl::new_kv_cache(int64_t batch_size, int64_t max_len,
                                                 std::optional<at::ScalarType> dtype,
                                                 std::optional<at::Device> device) const {
  TORCH_CHECK(batch_size > 0, "MultiheadSelfAttention::new_kv_cache: expected batch_size > 0, got ",
              batch_size);
  TORCH_CHECK(max_len > 0, "MultiheadSelfAttention::new_kv_cache: expected max_len > 0, got ",
              max_len);
  const int64_t H = options.num_heads(), D = options.embed_dim() / H;
  const auto tensor_options = in_proj_weight.options()
                                  .dtype(dtype.value_or(in_proj_weight.scalar_type()))
                                  .device(device.value_or(in_proj_weight.device()))
                                  .requires_grad(false);
  // Zeros, not empty: slots past `length` are never read, but a cache saved or printed should
  // not show leftover memory.
  return KVCache{torch::zeros({batch_size, H, max_len, D}, tensor_options),
                 torch::zeros({batch_size, H, max_len, D}, tensor_options),
                 torch::zeros({}, tensor_options.dtype(at::kLong))};
}

at::Tensor MultiheadSelfAttentionImpl::decode(const at::Tensor& x_new, KVCache& cache) {
  torch::NoGradGuard no_grad;
  std::optional<at::Tensor> in_bias;
  if (in_proj_bias.defined()) {
    // As in forward: an in_proj_bias of another floating dtype is cast like F.linear does.
    in_bias = in_proj_bias.scalar_type() == x_new.scalar_type() ||
                      !at::isFloatingType(in_proj_bias.scalar_type()) ||
                      !at::isFloatingType(x_new.scalar_type())
                  ? in_proj_bias
                  : in_proj_bias.to(x_new.scalar_type());
  }
  const std::optional<at::Tensor> out_bias =
      out_proj->bias.defined() ? std::optional<at::Tensor>(out_proj->bias) : std::nullopt;
  return decode_step(x_new, in_proj_weight, in_bias, out_proj->weight, out_bias,
                     options.num_heads(), options.batch_first(), cache.key, cache.value,
                     cache.length);
}

}  // namespace mhsa
