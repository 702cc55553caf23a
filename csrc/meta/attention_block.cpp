// Shape inference for _attention_block_forward and _attention_block_backward on the Meta key
// (SymInts, for torch.compile and torch.export), with the CPU kernels' checks and layouts: the
// output and the gradients are (N, heads, length, dim) views of heads-last memory.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention_block_entry.h"
#include "checks/attention_block_checks.h"

namespace mhsa::meta {
namespace {

using internal::BlockOptions;

at::Tensor empty_heads_last(const c10::SymInt& N, const c10::SymInt& H, const c10::SymInt& L,
                            const c10::SymInt& dim, const at::TensorOptions& options) {
  return at::empty_symint({N, L, H, dim}, options).permute({0, 2, 1, 3});
}

internal::BlockForwardOutputs attention_block_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options, bool need_weights,
    bool average_attn_weights, const std::optional<at::Tensor>&) {
  const BlockSizes s = check_attention_block_inputs("_attention_block_forward", query, key, value,
                                                    attn_mask, options);
  const auto tensor_options = query.options();
  at::Tensor output = empty_heads_last(s.N, s.H, s.L, s.Dv, tensor_options);
  at::Tensor lse =
      at::empty_symint({s.N, s.H, s.L}, tensor_options.dtype(logsumexp_dtype(query.scalar_type())));
  at::Tensor rng_state = at::empty_symint({c10::SymInt(2)}, tensor_options.dtype(at::kLong));
  at::Tensor weights;
  if (!need_weights) {
    weights = at::empty_symint({c10::SymInt(0)}, tensor_options);
  } else if (average_attn_weights) {
    weights = at::empty_symint({s.N, s.L, s.S}, tensor_options);
  } else {
    weights = at::empty_symint({s.N, s.H, s.L, s.S}, tensor_options);
  }
  return {output, weights, lse, rng_state};
}

internal::BlockBackwardOutputs attention_block_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const BlockOptions& options,
    bool average_attn_weights, std::array<bool, 3> output_mask) {
  const BlockSizes s = check_attention_block_backward_inputs(
      grad_output, grad_attn_weights, query, key, value, output, logsumexp, rng_state, attn_mask,
      options, average_attn_weights);
  const auto tensor_options = query.options();
  auto grad = [&](bool wanted, const c10::SymInt& heads, const c10::SymInt& length,
                  const c10::SymInt& dim) {
    return wanted ? empty_heads_last(s.N, heads, length, dim, tensor_options) : at::Tensor();
  };
  return {grad(output_mask[0], s.H, s.L, s.D), grad(output_mask[1], s.H_kv, s.S, s.D),
          grad(output_mask[2], s.H_kv, s.S, s.Dv)};
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) {
  m.impl("_attention_block_forward",
         TORCH_FN(mhsa::internal::block_forward_entry<&mhsa::meta::attention_block_forward_meta>));
  m.impl(
      "_attention_block_backward",
      TORCH_FN(mhsa::internal::block_backward_entry<&mhsa::meta::attention_block_backward_meta>));
}
