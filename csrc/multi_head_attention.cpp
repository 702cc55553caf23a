// The public op mhsa::multi_head_attention: all of nn.MultiheadAttention (cross-attention,
// kdim/vdim, add_bias_kv, add_zero_attn, every mask form). CompositeImplicitAutograd: the
// projections are aten::linear and the core is _attention_block_forward, so every dispatch key
// and front door comes from those ops. Self-attention with the packed projection goes to
// multi_head_self_attention, whose projections are fused too.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>
#include <mhsa/ops.h>

#include "checks/checks.h"
#include "projected_attention.h"

namespace mhsa {
namespace {

constexpr const char* kOp = "multi_head_attention";

// nn.MultiheadAttention's add_bias_kv / add_zero_attn add a key every query sees: one more
// column of the masks, visible (false / 0).
std::optional<at::Tensor> pad_key_column(const std::optional<at::Tensor>& mask) {
  if (!mask.has_value() || !mask->defined()) return mask;
  std::vector<int64_t> pad(2 * static_cast<size_t>(mask->dim()), 0);
  pad[1] = 1;  // the last dim, at its end
  return at::constant_pad_nd(*mask, pad, 0);
}

// A floating in_proj_bias of another dtype is cast, as F.linear would need and nn accepts.
std::optional<at::Tensor> bias_like(const std::optional<at::Tensor>& bias, const at::Tensor& x) {
  if (bias.has_value() && bias->defined() && bias->scalar_type() != x.scalar_type() &&
      at::isFloatingType(bias->scalar_type()) && at::isFloatingType(x.scalar_type())) {
    return bias->to(x.scalar_type());
  }
  return bias;
}

std::optional<at::Tensor> bias_part(const std::optional<at::Tensor>& bias, int64_t part,
                                    const c10::SymInt& E) {
  if (!bias.has_value() || !bias->defined()) return bias;
  return bias->narrow_symint(0, E * part, E);
}

// Queries (N, L, E) and keys / values (N, S, E) of every head, projected.
struct Projected {
  at::Tensor q, k, v;
};

Projected project(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                  bool self_attention, const std::optional<at::Tensor>& in_proj_weight,
                  const std::optional<at::Tensor>& in_proj_bias,
                  const std::optional<at::Tensor>& q_proj_weight,
                  const std::optional<at::Tensor>& k_proj_weight,
                  const std::optional<at::Tensor>& v_proj_weight, const c10::SymInt& E) {
  const std::optional<at::Tensor> bias = bias_like(in_proj_bias, q_in);
  if (in_proj_weight.has_value() && in_proj_weight->defined()) {
    const at::Tensor& w = *in_proj_weight;
    check_shape(kOp, "in_proj_weight", w, {E * 3, E});
    if (self_attention) {  // one GEMM for all three
      const auto qkv = at::linear(q_in, w, bias).chunk(3, -1);
      return {qkv[0], qkv[1], qkv[2]};
    }
    const at::Tensor q = at::linear(q_in, w.narrow_symint(0, 0, E), bias_part(bias, 0, E));
    if (k_in.is_same(v_in)) {  // cross-attention to one memory: one GEMM for keys and values
      std::optional<at::Tensor> kv_bias;
      if (bias.has_value() && bias->defined()) kv_bias = bias->narrow_symint(0, E, E * 2);
      const auto kv = at::linear(k_in, w.narrow_symint(0, E, E * 2), kv_bias).chunk(2, -1);
      return {q, kv[0], kv[1]};
    }
    return {q, at::linear(k_in, w.narrow_symint(0, E, E), bias_part(bias, 1, E)),
            at::linear(v_in, w.narrow_symint(0, E * 2, E), bias_part(bias, 2, E))};
  }
  TORCH_CHECK(q_proj_weight.has_value() && k_proj_weight.has_value() && v_proj_weight.has_value(),
              kOp,
              ": expected in_proj_weight, or all of q_proj_weight, k_proj_weight and "
              "v_proj_weight");
  check_shape(kOp, "q_proj_weight", *q_proj_weight, {E, q_in.sym_size(-1)});
  check_shape(kOp, "k_proj_weight", *k_proj_weight, {E, k_in.sym_size(-1)});
  check_shape(kOp, "v_proj_weight", *v_proj_weight, {E, v_in.sym_size(-1)});
  return {at::linear(q_in, *q_proj_weight, bias_part(bias, 0, E)),
          at::linear(k_in, *k_proj_weight, bias_part(bias, 1, E)),
          at::linear(v_in, *v_proj_weight, bias_part(bias, 2, E))};
}

std::tuple<at::Tensor, at::Tensor> multi_head_attention_composite(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t num_heads,
    const std::optional<at::Tensor>& in_proj_weight, const std::optional<at::Tensor>& in_proj_bias,
    const std::optional<at::Tensor>& q_proj_weight, const std::optional<at::Tensor>& k_proj_weight,
    const std::optional<at::Tensor>& v_proj_weight, const std::optional<at::Tensor>& bias_k,
    const std::optional<at::Tensor>& bias_v, bool add_zero_attn, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, double dropout_p, bool training,
    bool batch_first, const std::optional<at::Tensor>& key_padding_mask, bool need_weights,
    const std::optional<at::Tensor>& attn_mask, bool average_attn_weights, bool is_causal,
    c10::IntArrayRef window_size) {
  const bool packed = in_proj_weight.has_value() && in_proj_weight->defined();
  const bool has_bias_kv = bias_k.has_value() && bias_k->defined();
  TORCH_CHECK(has_bias_kv == (bias_v.has_value() && bias_v->defined()), kOp,
              ": expected bias_k and bias_v both given (add_bias_kv) or both None");
  const bool self_attention = key.is_same(query) && value.is_same(query);
  if (self_attention && packed && !has_bias_kv && !add_zero_attn) {
    return multi_head_self_attention(query, *in_proj_weight, in_proj_bias, out_proj_weight,
                                     out_proj_bias, num_heads, dropout_p, training, batch_first,
                                     key_padding_mask, need_weights, attn_mask,
                                     average_attn_weights, is_causal, window_size);
  }
  TORCH_CHECK(query.dim() == 2 || query.dim() == 3, kOp,
              ": expected query to be 2-D (L, E) unbatched or 3-D ",
              batch_first ? "(N, L, E)" : "(L, N, E)", ", got ", query.dim(), "-D of shape ",
              query.sym_sizes());
  TORCH_CHECK(key.dim() == query.dim() && value.dim() == query.dim(), kOp,
              ": expected key and value with query's number of dims (", query.dim(), "), got key ",
              key.sym_sizes(), " and value ", value.sym_sizes());
  TORCH_CHECK(num_heads > 0, kOp, ": expected num_heads > 0, got ", num_heads);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, kOp, ": expected dropout_p in [0, 1], got ",
              dropout_p);
  const c10::SymInt E = query.sym_size(-1);
  TORCH_CHECK(E > 0 && E % num_heads == 0, kOp, ": embed_dim ", E,
              " must be positive and divisible by num_heads ", num_heads);
  // Batch first, batch dim present (unbatched input is a batch of one, batch_first ignored).
  const bool unbatched = query.dim() == 2;
  auto batched = [&](const at::Tensor& t) {
    if (unbatched) return t.unsqueeze(0);
    return batch_first ? t : t.transpose(0, 1);
  };
  const at::Tensor q_in = batched(query), k_in = batched(key), v_in = batched(value);
  TORCH_CHECK(k_in.sym_size(0) == q_in.sym_size(0) && v_in.sym_size(0) == q_in.sym_size(0) &&
                  k_in.sym_size(1) == v_in.sym_size(1),
              kOp, ": expected key and value with query's batch size and the same length, got ",
              "query ", query.sym_sizes(), ", key ", key.sym_sizes(), ", value ",
              value.sym_sizes());
  Projected p = project(q_in, k_in, v_in, self_attention, in_proj_weight, in_proj_bias,
                        q_proj_weight, k_proj_weight, v_proj_weight, E);

  std::optional<at::Tensor> kpm = key_padding_mask, mask = attn_mask;
  if (unbatched && kpm.has_value() && kpm->defined()) kpm = kpm->unsqueeze(0);
  const c10::SymInt N = q_in.sym_size(0);
  if (has_bias_kv) {
    p.k = at::cat({p.k, bias_k->reshape_symint({1, 1, E}).expand_symint({N, 1, E})}, 1);
    p.v = at::cat({p.v, bias_v->reshape_symint({1, 1, E}).expand_symint({N, 1, E})}, 1);
    mask = pad_key_column(mask);
    kpm = pad_key_column(kpm);
  }
  at::Tensor q = split_heads(p.q, num_heads), k = split_heads(p.k, num_heads);
  at::Tensor v = split_heads(p.v, num_heads);
  if (add_zero_attn) {
    auto zero_key = [](const at::Tensor& t) {
      return at::cat(
          {t, at::zeros_symint({t.sym_size(0), t.sym_size(1), 1, t.sym_size(3)}, t.options())}, 2);
    };
    k = zero_key(k);
    v = zero_key(v);
    mask = pad_key_column(mask);
    kpm = pad_key_column(kpm);
  }
  auto [output, weights] = attend_and_project(kOp, q, k, v, mask, kpm, training ? dropout_p : 0.0,
                                              is_causal, window_size, need_weights,
                                              average_attn_weights, out_proj_weight, out_proj_bias);
  if (unbatched) {
    output = output.squeeze(0);
    if (need_weights) weights = weights.squeeze(0);
  } else if (!batch_first) {
    output = output.transpose(0, 1);
  }
  return {output, weights};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t num_heads,
    const std::optional<at::Tensor>& in_proj_weight, const std::optional<at::Tensor>& in_proj_bias,
    const std::optional<at::Tensor>& q_proj_weight, const std::optional<at::Tensor>& k_proj_weight,
    const std::optional<at::Tensor>& v_proj_weight, const std::optional<at::Tensor>& bias_k,
    const std::optional<at::Tensor>& bias_v, bool add_zero_attn, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, double dropout_p, bool training,
    bool batch_first, const std::optional<at::Tensor>& key_padding_mask, bool need_weights,
    const std::optional<at::Tensor>& attn_mask, bool average_attn_weights, bool is_causal,
    c10::IntArrayRef window_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mhsa::multi_head_attention", "")
                       .typed<decltype(multi_head_attention)>();
  auto [output, weights] =
      op.call(query, key, value, num_heads, in_proj_weight, in_proj_bias, q_proj_weight,
              k_proj_weight, v_proj_weight, bias_k, bias_v, add_zero_attn, out_proj_weight,
              out_proj_bias, dropout_p, training, batch_first, key_padding_mask, need_weights,
              attn_mask, average_attn_weights, is_causal, window_size);
  return {output, need_weights ? weights : at::Tensor()};
}

}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  m.impl("multi_head_attention", TORCH_FN(mhsa::multi_head_attention_composite));
}
