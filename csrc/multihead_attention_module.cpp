// mhsa::MultiheadAttention, the C++ frontend module over mhsa::multi_head_attention.
#include <torch/nn/init.h>

#include <mhsa/multihead_attention.h>

namespace mhsa {
namespace {

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace

MultiheadAttentionOptions::MultiheadAttentionOptions(int64_t embed_dim, int64_t num_heads)
    : embed_dim_(embed_dim), num_heads_(num_heads), kdim_(embed_dim), vdim_(embed_dim) {}

MultiheadAttentionImpl::MultiheadAttentionImpl(const MultiheadAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiheadAttentionImpl::reset() {
  const int64_t E = options.embed_dim(), H = options.num_heads();
  TORCH_CHECK(E > 0 && H > 0, "MultiheadAttention: embed_dim and num_heads must be > 0, got ",
              "embed_dim=", E, ", num_heads=", H);
  TORCH_CHECK(E % H == 0, "MultiheadAttention: embed_dim ", E, " must be divisible by num_heads ",
              H);
  TORCH_CHECK(options.kdim() > 0 && options.vdim() > 0,
              "MultiheadAttention: kdim and vdim must be > 0, got kdim=", options.kdim(),
              ", vdim=", options.vdim());
  TORCH_CHECK(options.dropout() >= 0.0 && options.dropout() <= 1.0,
              "MultiheadAttention: dropout must be in [0, 1], got ", options.dropout());
  // The same names, order and undefined placeholders as torch::nn::MultiheadAttentionImpl.
  if (qkv_same_embed_dim()) {
    in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * E, E}));
    q_proj_weight = register_parameter("q_proj_weight", {}, /*requires_grad=*/false);
    k_proj_weight = register_parameter("k_proj_weight", {}, /*requires_grad=*/false);
    v_proj_weight = register_parameter("v_proj_weight", {}, /*requires_grad=*/false);
  } else {
    q_proj_weight = register_parameter("q_proj_weight", torch::empty({E, E}));
    k_proj_weight = register_parameter("k_proj_weight", torch::empty({E, options.kdim()}));
    v_proj_weight = register_parameter("v_proj_weight", torch::empty({E, options.vdim()}));
    in_proj_weight = register_parameter("in_proj_weight", {}, /*requires_grad=*/false);
  }
  if (options.bias()) {
    in_proj_bias = register_parameter("in_proj_bias", torch::empty({3 * E}));
  } else {
    in_proj_bias = register_parameter("in_proj_bias", {}, /*requires_grad=*/false);
  }
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(E, E).bias(options.bias())));
  if (options.add_bias_kv()) {
    bias_k = register_parameter("bias_k", torch::empty({1, 1, E}));
    bias_v = register_parameter("bias_v", torch::empty({1, 1, E}));
  } else {
    bias_k = at::Tensor();
    bias_v = at::Tensor();
  }
  reset_parameters();
}

void MultiheadAttentionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (at::Tensor* weight : {&in_proj_weight, &q_proj_weight, &k_proj_weight, &v_proj_weight}) {
    if (weight->defined()) torch::nn::init::xavier_uniform_(*weight);
  }
  if (in_proj_bias.defined()) torch::nn::init::constant_(in_proj_bias, 0.0);
  if (out_proj->bias.defined()) torch::nn::init::constant_(out_proj->bias, 0.0);
  if (bias_k.defined()) torch::nn::init::xavier_normal_(bias_k);
  if (bias_v.defined()) torch::nn::init::xavier_normal_(bias_v);
}

std::tuple<at::Tensor, at::Tensor> MultiheadAttentionImpl::forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& key_padding_mask, bool need_weights, const at::Tensor& attn_mask,
    bool average_attn_weights, bool is_causal, c10::IntArrayRef window_size) {
  return multi_head_attention(
      query, key, value, options.num_heads(), optional_of(in_proj_weight),
      optional_of(in_proj_bias), optional_of(q_proj_weight), optional_of(k_proj_weight),
      optional_of(v_proj_weight), optional_of(bias_k), optional_of(bias_v), options.add_zero_attn(),
      out_proj->weight, optional_of(out_proj->bias), options.dropout(), is_training(),
      options.batch_first(), optional_of(key_padding_mask), need_weights, optional_of(attn_mask),
      average_attn_weights, is_causal, window_size);
}

}  // namespace mhsa
