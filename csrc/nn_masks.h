#pragma once
// nn.MultiheadAttention's attn_mask for the attention block ops: nn's (L, S) or (N*H, L, S)
// with bool true = may not attend becomes a (N, H, L, S)-broadcastable mask with bool true =
// may attend (SDPA's convention, what _attention_block_forward reads); float masks are added
// either way.
#include <ATen/ATen.h>

#include <optional>

#include "checks/checks.h"

namespace mhsa {

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

}  // namespace mhsa
