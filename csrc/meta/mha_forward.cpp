// Shape inference for _mha_forward on the Meta key, written with SymInts so torch.compile and
// torch.export can trace the op with dynamic batch and sequence length. It runs the same
// checks as the CPU kernel, so a traced call refuses what an eager call refuses.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks/checks.h"
#include "mha_op_entry.h"

namespace mhsa::meta {
namespace {

internal::ForwardOutputs mha_forward_meta(const at::Tensor& x, const at::Tensor& in_proj_weight,
                                          const std::optional<at::Tensor>& in_proj_bias,
                                          const at::Tensor& out_proj_weight,
                                          const std::optional<at::Tensor>& out_proj_bias,
                                          const internal::AttentionOptions& options,
                                          bool need_weights) {
  const MhaSizes s = check_mha_inputs("_mha_forward", x, in_proj_weight, in_proj_bias,
                                      out_proj_weight, out_proj_bias, options);
  const c10::SymInt H(options.num_heads);
  const auto lse_options = x.options().dtype(logsumexp_dtype(x.scalar_type()));
  at::Tensor output = at::empty_symint(x.sym_sizes(), x.options());
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty_symint({c10::SymInt(0)}, x.options());
  } else if (options.average_attn_weights) {
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

TORCH_LIBRARY_IMPL(mhsa, Meta, m) {
  m.impl("_mha_forward", TORCH_FN(mhsa::internal::forward_entry<&mhsa::meta::mha_forward_meta>));
}
