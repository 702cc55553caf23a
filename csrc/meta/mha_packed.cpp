// Shape inference for _mha_packed_forward / _mha_packed_backward on the Meta key. Every shape
// follows from x (T, E) and num_heads alone, never from the values of cu_seqlens, so tracing
// needs no data-dependent sizes. The same checks as the CPU kernels run, except those of the
// values of cu_seqlens, which a Meta tensor does not have.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks/checks.h"
#include "checks/packed_checks.h"
#include "meta/backward_result.h"
#include "mha_op_entry.h"

namespace mhsa::meta {
namespace {

internal::PackedForwardOutputs mha_packed_forward_meta(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const internal::PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen) {
  const int64_t num_heads = options.num_heads;
  const PackedSizes s = check_packed_inputs("_mha_packed_forward", x, cu_seqlens, in_proj_weight,
                                            in_proj_bias, out_proj_weight, out_proj_bias, options);
  at::Tensor output = at::empty_symint(x.sym_sizes(), x.options());
  at::Tensor qkv = at::empty_symint({s.tokens, s.embed * 3}, x.options());
  at::Tensor context = at::empty_symint(x.sym_sizes(), x.options());
  at::Tensor lse =
      at::empty_symint({s.tokens * num_heads}, x.options().dtype(logsumexp_dtype(x.scalar_type())));
  at::Tensor rng_state = at::empty_symint({c10::SymInt(2)}, x.options().dtype(at::kLong));
  return {output, qkv, context, lse, rng_state};
}

internal::BackwardOutputs mha_packed_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const internal::PackedAttentionOptions& options, std::array<bool, 5> output_mask) {
  const PackedSizes s = check_packed_inputs("_mha_packed_backward", x, cu_seqlens, in_proj_weight,
                                            std::nullopt, out_proj_weight, std::nullopt, options);
  check_packed_backward_inputs(s, grad_output, x, qkv, context, logsumexp, rng_state);
  return backward_result(x, in_proj_weight, out_proj_weight, s.embed, output_mask);
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) {
  m.impl("_mha_packed_forward",
         TORCH_FN(mhsa::internal::packed_forward_entry<&mhsa::meta::mha_packed_forward_meta>));
  m.impl("_mha_packed_backward",
         TORCH_FN(mhsa::internal::packed_backward_entry<&mhsa::meta::mha_packed_backward_meta>));
}
