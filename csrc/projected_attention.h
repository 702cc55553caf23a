#pragma once
// nn.MultiheadAttention's attention after its projections, for the composites that project
// with aten::linear (multi_head_attention, grouped-query multi_head_self_attention): heads
// viewed in place, nn's masks turned into the block op's, the fused core, out_proj.
#include <ATen/ATen.h>

#include <mhsa/internal_ops.h>

#include <array>
#include <optional>
#include <tuple>

#include "checks/checks.h"

namespace mhsa {

// nn's attn_mask, (L, S) or (N*H, L, S) with bool true = may not attend, as a mask the block op
// reads: (N, H, L, S)-broadcastable, bool true = may attend; float masks are added either way.
inline std::optional<at::Tensor> nn_attn_mask_for_block(const char* op,
                                                        const std::optional<at::Tensor>& mask,
                                                        const c10::SymInt& N, int64_t H,
                                                        const c10::SymInt& L,
                                                        const c10::SymInt& S) {
  if (!mask.has_value() || !mask->defined()) return mask;
  TORCH_CHECK(mask->scalar_type() == at::kBool || at::isFloatingType(mask->scalar_type()), op,
              ": only bool and floating types of attn_mask are supported, got ",
              mask->scalar_type());
  TORCH_CHECK(mask->dim() == 2 || mask->dim() == 3, op,
              ": expected attn_mask of shape (L, S) or (N * num_heads, L, S), got ",
              mask->sym_sizes());
  at::Tensor m = *mask;
  if (m.dim() == 3) {
    check_shape(op, "attn_mask", m, {N * H, L, S});
    m = m.view_symint({N, c10::SymInt(H), L, S});
  } else {
    check_shape(op, "attn_mask", m, {L, S});
  }
  return m.scalar_type() == at::kBool ? m.logical_not() : m;
}

// (batch, length, count * D) as (batch, count, length, D): a view, the heads read in place.
inline at::Tensor split_heads(const at::Tensor& t, int64_t count) {
  return t.unflatten(-1, {count, -1}).transpose(1, 2);
}

// The fused core over projected heads q (N, H, L, D), k and v (N, H_kv, S, .) with nn's masks,
// then out_proj: (output (N, L, E), weights).
inline std::tuple<at::Tensor, at::Tensor> attend_and_project(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    double dropout_p, bool is_causal, c10::IntArrayRef window_size, bool need_weights,
    bool average_attn_weights, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias) {
  internal::BlockOptions options;
  options.dropout_p = dropout_p;
  options.is_causal = is_causal;
  check_window_size(op, window_size);
  options.window_size = {window_size[0], window_size[1]};
  options.key_padding_mask = key_padding_mask;
  const auto mask =
      nn_attn_mask_for_block(op, attn_mask, q.sym_size(0), q.size(1), q.sym_size(2), k.sym_size(2));
  auto [context, weights, lse, rng_state] =
      internal::attention_block_forward(q, k, v, mask, options, need_weights, average_attn_weights);
  // (N, H, L, D) heads-last memory: back to (N, L, E) without a copy.
  at::Tensor output =
      at::linear(context.transpose(1, 2).flatten(2), out_proj_weight, out_proj_bias);
  return {output, weights};
}

}  // namespace mhsa
