// Shape inference for mha_forward on the Meta key, written with SymInts so torch.compile and
// torch.export can trace the op with dynamic batch and sequence length. It runs the same
// checks as the CPU kernel, so a traced call refuses what an eager call refuses.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace mhsa::meta {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_forward_meta(
    const at::Tensor& x, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool need_weights, bool average_attn_weights,
    c10::IntArrayRef window_size) {
  const MhaSizes s = check_mha_inputs("mha_forward", x, in_proj_weight, in_proj_bias,
                                      out_proj_weight, out_proj_bias, num_heads, batch_first,
                                      attn_mask, key_padding_mask, dropout_p);
  check_window_size("mha_forward", window_size);
  const c10::SymInt H(num_heads);
  const auto lse_options = x.options().dtype(logsumexp_dtype(x.scalar_type()));
  at::Tensor output = at::empty_symint(x.sym_sizes(), x.options());
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty_symint({c10::SymInt(0)}, x.options());
  } else if (average_attn_weights) {
    weights = at::empty_symint({s.batch, s.seq, s.seq}, x.options());
  } else {
    weights = at::empty_symint({s.batch, H, s.seq, s.seq}, x.options());
  }
  at::Tensor qkv = at::empty_symint({x.sym_size(0), x.sym_size(1), s.embed * 3}, x.options());
  at::Tensor context = at::empty_symint(x.sym_sizes(), x.options());
  at::Tensor lse = at::empty_symint({s.batch, H, s.seq}, lse_options);
  at::Tensor rng_state = at::empty_symint({c10::SymInt(2)}, x.options().dtype(at::kLong));
  return {output, weights, qkv, context, lse, rng_state};
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) { m.impl("mha_forward", TORCH_FN(mhsa::meta::mha_forward_meta)); }
