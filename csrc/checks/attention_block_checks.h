#pragma once
// Input validation of _attention_block_forward / _attention_block_backward, shared by their CPU
// and Meta kernels (SymInt sizes, so traced calls refuse what eager calls refuse).
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <mhsa/internal_ops.h>

#include <optional>

namespace mhsa {

struct BlockSizes {
  c10::SymInt N, H, L, D;   // query (N, H, L, D)
  c10::SymInt H_kv, S, Dv;  // key (N, H_kv, S, D), value (N, H_kv, S, Dv)
};

BlockSizes check_attention_block_inputs(const char* op, const at::Tensor& query,
                                        const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask,
                                        const internal::BlockOptions& options);

// Every input of _attention_block_backward: the forward's (check_attention_block_inputs), then
// the saved tensors and incoming gradients. Returns the sizes, as the forward check does.
BlockSizes check_attention_block_backward_inputs(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const internal::BlockOptions& options,
    bool average_attn_weights);

}  // namespace mhsa
