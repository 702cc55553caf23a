#pragma once
// Input validation shared by the CPU and Meta kernels, so eager calls and traced calls
// (torch.compile, torch.export) refuse the same inputs with the same messages. Sizes are
// SymInts so the checks also run on symbolic shapes.
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <mhsa/internal_ops.h>

#include <optional>

namespace mhsa {

struct MhaSizes {
  c10::SymInt batch;  // N
  c10::SymInt seq;    // L
  c10::SymInt embed;  // E
  int64_t num_heads;  // H
};

// Checks the arguments of _mha_forward (and the shared ones of _mha_backward); `op` names the
// caller in messages.
MhaSizes check_mha_inputs(const char* op, const at::Tensor& x, const at::Tensor& in_proj_weight,
                          const std::optional<at::Tensor>& in_proj_bias,
                          const at::Tensor& out_proj_weight,
                          const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                          bool batch_first, const std::optional<at::Tensor>& attn_mask,
                          const std::optional<at::Tensor>& key_padding_mask, double dropout_p);

// window_size must be {left, right} with each >= -1 (-1: unbounded on that side).
void check_window_size(const char* op, c10::IntArrayRef window_size);

// The checks above for the argument bundle of _mha_forward / _mha_backward (in_proj_bias and
// out_proj_bias may be absent, as in backward).
MhaSizes check_mha_inputs(const char* op, const at::Tensor& x, const at::Tensor& in_proj_weight,
                          const std::optional<at::Tensor>& in_proj_bias,
                          const at::Tensor& out_proj_weight,
                          const std::optional<at::Tensor>& out_proj_bias,
                          const internal::AttentionOptions& options);

// Checks the saved tensors and incoming gradients passed to _mha_backward.

void check_mha_backward_inputs(const MhaSizes& s, const at::Tensor& grad_output,
                               const std::optional<at::Tensor>& grad_attn_weights,
                               const at::Tensor& x, const at::Tensor& qkv,
                               const at::Tensor& context, const at::Tensor& logsumexp,
                               const at::Tensor& rng_state, bool average_attn_weights);

// Shared by every op's checks (checks.cpp, packed_checks.cpp, decode_checks.cpp): `name` must be
// on x's device with x's dtype; `name` must have exactly the `expected` shape.
void check_same_device_dtype(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& x);
void check_shape(const char* op, const char* name, const at::Tensor& t,
                 c10::SymIntArrayRef expected);

// The four projection parameters for embed_dim E: x's device and dtype, (3E, E), (3E), (E, E),
// (E); an absent bias is fine.
void check_projection_parameters(const char* op, const at::Tensor& x, const c10::SymInt& E,
                                 const at::Tensor& in_proj_weight,
                                 const std::optional<at::Tensor>& in_proj_bias,
                                 const at::Tensor& out_proj_weight,
                                 const std::optional<at::Tensor>& out_proj_bias);

// dtype of the per-row log-sum-exp: float for float/bfloat16 inputs, double for double.
at::ScalarType logsumexp_dtype(at::ScalarType input);

}  // namespace mhsa
