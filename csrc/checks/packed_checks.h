#pragma once
// Input validation of the packed variable-length ops (_mha_packed_forward/backward), shared by
// the CPU and Meta kernels like checks.h. x is (T, E): B sequences back to back, sequence b
// at rows cu_seqlens[b] .. cu_seqlens[b+1].
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <mhsa/internal_ops.h>

#include <optional>
#include <vector>

namespace mhsa {

struct PackedSizes {
  c10::SymInt tokens;  // T
  c10::SymInt embed;   // E
  int64_t num_heads;   // H
};

// Checks what can be checked without reading cu_seqlens' values (so also on Meta tensors):
// shapes, dtypes and devices of every argument, and the options (num_heads, the window,
// dropout_p).
PackedSizes check_packed_inputs(const char* op, const at::Tensor& x, const at::Tensor& cu_seqlens,
                                const at::Tensor& in_proj_weight,
                                const std::optional<at::Tensor>& in_proj_bias,
                                const at::Tensor& out_proj_weight,
                                const std::optional<at::Tensor>& out_proj_bias,
                                const internal::PackedAttentionOptions& options);

// Checks the saved tensors and the incoming gradient passed to _mha_packed_backward.
void check_packed_backward_inputs(const PackedSizes& s, const at::Tensor& grad_output,
                                  const at::Tensor& x, const at::Tensor& qkv,
                                  const at::Tensor& context, const at::Tensor& logsumexp,
                                  const at::Tensor& rng_state);

// Reads and checks the values of cu_seqlens (a CPU tensor already checked by
// check_packed_inputs): starts at 0, never decreases, ends at T. Returns the B+1 offsets.
// With max_seqlen given, no sequence may be longer.
std::vector<int64_t> read_cu_seqlens(const char* op, const at::Tensor& cu_seqlens, int64_t tokens,
                                     std::optional<int64_t> max_seqlen = std::nullopt);

}  // namespace mhsa
