#include "checks/packed_checks.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "checks/checks.h"

namespace mhsa {
PackedSizes check_packed_inputs(const char* op, const at::Tensor& x, const at::Tensor& cu_seqlens,
                                const at::Tensor& in_proj_weight,
                                const std::optional<at::Tensor>& in_proj_bias,
                                const at::Tensor& out_proj_weight,
                                const std::optional<at::Tensor>& out_proj_bias,
                                const internal::PackedAttentionOptions& options) {
  const int64_t num_heads = options.num_heads;
  const int64_t window_left = options.window_size[0], window_right = options.window_size[1];
  const double dropout_p = options.dropout_p;
  TORCH_CHECK(x.dim() == 2, op, ": expected x to be 2-D (T, E), the sequences back to back, got ",
              x.dim(), "-D of shape ", x.sym_sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
      op, ": expected x of dtype float32, float64, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
              ": expected cu_seqlens of dtype int32 or int64, got ", cu_seqlens.scalar_type());
  TORCH_CHECK(cu_seqlens.device() == x.device(), op, ": expected cu_seqlens on device ", x.device(),
              " (the device of x), got ", cu_seqlens.device());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.sym_size(0) >= 1, op,
              ": expected cu_seqlens to be 1-D (B+1) offsets [0, ..., T], got shape ",
              cu_seqlens.sym_sizes());
  TORCH_CHECK(num_heads > 0, op, ": expected num_heads > 0, got ", num_heads);
  PackedSizes s{x.sym_size(0), x.sym_size(1), num_heads};
  TORCH_CHECK(s.embed > 0, op, ": expected embed_dim (the last dim of x) > 0, got ", s.embed);
  TORCH_CHECK(s.embed % num_heads == 0, op, ": embed_dim ", s.embed,
              " must be divisible by num_heads ", num_heads);
  TORCH_CHECK(window_left >= -1 && window_right >= -1, op,
              ": expected window_size entries >= -1 (-1: unbounded on that side), got [",
              window_left, ", ", window_right, "]");
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": expected dropout_p in [0, 1], got ",
              dropout_p);
  const c10::SymInt E = s.embed;
  check_projection_parameters(op, x, E, in_proj_weight, in_proj_bias, out_proj_weight,
                              out_proj_bias);
  return s;
}

void check_packed_backward_inputs(const PackedSizes& s, const at::Tensor& grad_output,
                                  const at::Tensor& x, const at::Tensor& qkv,
                                  const at::Tensor& context, const at::Tensor& logsumexp,
                                  const at::Tensor& rng_state) {
  const char* op = "_mha_packed_backward";
  check_same_device_dtype(op, "grad_output", grad_output, x);
  check_shape(op, "grad_output", grad_output, x.sym_sizes());
  check_same_device_dtype(op, "qkv", qkv, x);
  check_shape(op, "qkv", qkv, {s.tokens, s.embed * 3});
  check_same_device_dtype(op, "context", context, x);
  check_shape(op, "context", context, x.sym_sizes());
  TORCH_CHECK(logsumexp.scalar_type() == logsumexp_dtype(x.scalar_type()), op,
              ": expected logsumexp of dtype ", logsumexp_dtype(x.scalar_type()), ", got ",
              logsumexp.scalar_type());
  check_shape(op, "logsumexp", logsumexp, {s.tokens * s.num_heads});
  TORCH_CHECK(rng_state.scalar_type() == at::kLong, op, ": expected rng_state of dtype int64, got ",
              rng_state.scalar_type());
  check_shape(op, "rng_state", rng_state, {c10::SymInt(2)});
}

std::vector<int64_t> read_cu_seqlens(const char* op, const at::Tensor& cu_seqlens, int64_t tokens,
                                     std::optional<int64_t> max_seqlen) {
  const at::Tensor cu = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* p = cu.const_data_ptr<int64_t>();
  std::vector<int64_t> offsets(p, p + cu.numel());
  TORCH_CHECK(offsets.front() == 0, op,
              ": expected cu_seqlens to start at 0, got cu_seqlens[0] = ", offsets.front());
  int64_t longest = 0;
  for (size_t b = 0; b + 1 < offsets.size(); ++b) {
    TORCH_CHECK(offsets[b + 1] >= offsets[b], op,
                ": expected cu_seqlens to be non-decreasing (sequence lengths >= 0), got "
                "cu_seqlens[",
                b, "] = ", offsets[b], " > cu_seqlens[", b + 1, "] = ", offsets[b + 1]);
    longest = std::max(longest, offsets[b + 1] - offsets[b]);
  }
  TORCH_CHECK(offsets.back() == tokens, op, ": expected cu_seqlens to end at T = ", tokens,
              " (the number of rows of x), got cu_seqlens[", offsets.size() - 1,
              "] = ", offsets.back());
  if (max_seqlen.has_value()) {
    TORCH_CHECK(longest <= *max_seqlen, op, ": max_seqlen = ", *max_seqlen,
                " but cu_seqlens holds a sequence of length ", longest);
  }
  return offsets;
}

}  // namespace mhsa
