#include "checks/checks.h"

#include <c10/util/Exception.h>

namespace mhsa {
namespace {

void check_mask_dtype(const char* op, const char* name, const at::Tensor& mask,
                      const at::Tensor& x) {
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()), op,
              ": only bool and floating types of ", name,
              " are supported (bool: true = may not attend; float: added to the scores), got ",
              mask.scalar_type());
  TORCH_CHECK(mask.device() == x.device(), op, ": expected ", name, " on device ", x.device(),
              ", got ", mask.device());
}

}  // namespace

void check_same_device_dtype(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on device ", x.device(),
              " (the device of x), got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " of dtype ",
              x.scalar_type(), " (the dtype of x), got ", t.scalar_type());
}

void check_shape(const char* op, const char* name, const at::Tensor& t,
                 c10::SymIntArrayRef expected) {
  TORCH_CHECK(t.sym_sizes() == expected, op, ": expected ", name, " of shape ", expected, ", got ",
              t.sym_sizes());
}

void check_projection_parameters(const char* op, const at::Tensor& x, const c10::SymInt& E,
                                 const at::Tensor& in_proj_weight,
                                 const std::optional<at::Tensor>& in_proj_bias,
                                 const at::Tensor& out_proj_weight,
                                 const std::optional<at::Tensor>& out_proj_bias) {
  check_same_device_dtype(op, "in_proj_weight", in_proj_weight, x);
  check_shape(op, "in_proj_weight", in_proj_weight, {E * 3, E});
  if (in_proj_bias.has_value() && in_proj_bias->defined()) {
    check_same_device_dtype(op, "in_proj_bias", *in_proj_bias, x);
    check_shape(op, "in_proj_bias", *in_proj_bias, {E * 3});
  }
  check_same_device_dtype(op, "out_proj_weight", out_proj_weight, x);
  check_shape(op, "out_proj_weight", out_proj_weight, {E, E});
  if (out_proj_bias.has_value() && out_proj_bias->defined()) {
    check_same_device_dtype(op, "out_proj_bias", *out_proj_bias, x);
    check_shape(op, "out_proj_bias", *out_proj_bias, {E});
  }
}

at::ScalarType logsumexp_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

MhaSizes check_mha_inputs(const char* op, const at::Tensor& x, const at::Tensor& in_proj_weight,
                          const std::optional<at::Tensor>& in_proj_bias,
                          const at::Tensor& out_proj_weight,
                          const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                          bool batch_first, const std::optional<at::Tensor>& attn_mask,
                          const std::optional<at::Tensor>& key_padding_mask, double dropout_p) {
  TORCH_CHECK(x.dim() == 3, op, ": expected x to be 3-D, ",
              batch_first ? "(N, L, E) with batch_first" : "(L, N, E)", ", got ", x.dim(),
              "-D of shape ", x.sym_sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
      op, ": expected x of dtype float32, float64, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(num_heads > 0, op, ": expected num_heads > 0, got ", num_heads);
  MhaSizes s{batch_first ? x.sym_size(0) : x.sym_size(1),
             batch_first ? x.sym_size(1) : x.sym_size(0), x.sym_size(2), num_heads};
  TORCH_CHECK(s.embed > 0, op, ": expected embed_dim (the last dim of x) > 0, got ", s.embed);
  TORCH_CHECK(s.embed % num_heads == 0, op, ": embed_dim ", s.embed,
              " must be divisible by num_heads ", num_heads);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": expected dropout_p in [0, 1], got ",
              dropout_p);

  const c10::SymInt E = s.embed;
  check_projection_parameters(op, x, E, in_proj_weight, in_proj_bias, out_proj_weight,
                              out_proj_bias);

  if (attn_mask.has_value() && attn_mask->defined()) {
    const at::Tensor& m = *attn_mask;
    check_mask_dtype(op, "attn_mask", m, x);
    if (m.dim() == 2) {
      check_shape(op, "2-D attn_mask", m, {s.seq, s.seq});
    } else {
      TORCH_CHECK(m.dim() == 3, op,
                  ": expected attn_mask to be 2-D (L, L) or 3-D (N*num_heads, L, L), got ", m.dim(),
                  "-D of shape ", m.sym_sizes());
      check_shape(op, "3-D attn_mask", m, {s.batch * num_heads, s.seq, s.seq});
    }
  }
  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    const at::Tensor& m = *key_padding_mask;
    check_mask_dtype(op, "key_padding_mask", m, x);
    check_shape(op, "key_padding_mask", m, {s.batch, s.seq});
  }
  return s;
}

void check_mha_backward_inputs(const MhaSizes& s, const at::Tensor& grad_output,
                               const std::optional<at::Tensor>& grad_attn_weights,
                               const at::Tensor& x, const at::Tensor& qkv,
                               const at::Tensor& context, const at::Tensor& logsumexp,
                               const at::Tensor& rng_state, bool average_attn_weights) {
  const char* op = "_mha_backward";
  const c10::SymInt& E = s.embed;
  check_same_device_dtype(op, "grad_output", grad_output, x);
  check_shape(op, "grad_output", grad_output, x.sym_sizes());
  check_same_device_dtype(op, "qkv", qkv, x);
  check_shape(op, "qkv", qkv, {x.sym_size(0), x.sym_size(1), E * 3});
  check_same_device_dtype(op, "context", context, x);
  check_shape(op, "context", context, x.sym_sizes());
  TORCH_CHECK(logsumexp.scalar_type() == logsumexp_dtype(x.scalar_type()), op,
              ": expected logsumexp of dtype ", logsumexp_dtype(x.scalar_type()), ", got ",
              logsumexp.scalar_type());
  check_shape(op, "logsumexp", logsumexp, {s.batch, c10::SymInt(s.num_heads), s.seq});
  TORCH_CHECK(rng_state.scalar_type() == at::kLong, op, ": expected rng_state of dtype int64, got ",
              rng_state.scalar_type());
  check_shape(op, "rng_state", rng_state, {c10::SymInt(2)});
  if (grad_attn_weights.has_value() && grad_attn_weights->defined()) {
    check_same_device_dtype(op, "grad_attn_weights", *grad_attn_weights, x);
    if (average_attn_weights) {
      check_shape(op, "grad_attn_weights", *grad_attn_weights, {s.batch, s.seq, s.seq});
    } else {
      check_shape(op, "grad_attn_weights", *grad_attn_weights,
                  {s.batch, c10::SymInt(s.num_heads), s.seq, s.seq});
    }
  }
}

void check_window_size(const char* op, c10::IntArrayRef window_size) {
  TORCH_CHECK(window_size.size() == 2, op, ": expected window_size to be (left, right), got ",
              window_size.size(), " values ", window_size);
  TORCH_CHECK(window_size[0] >= -1 && window_size[1] >= -1, op,
              ": expected window_size entries >= -1 (-1: unbounded on that side), got ",
              window_size);
}

MhaSizes check_mha_inputs(const char* op, const at::Tensor& x, const at::Tensor& in_proj_weight,
                          const std::optional<at::Tensor>& in_proj_bias,
                          const at::Tensor& out_proj_weight,
                          const std::optional<at::Tensor>& out_proj_bias,
                          const internal::AttentionOptions& options) {
  const MhaSizes s = check_mha_inputs(
      op, x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, options.num_heads,
      options.batch_first, options.attn_mask, options.key_padding_mask, options.dropout_p);
  check_window_size(op, options.window_size);
  return s;
}

}  // namespace mhsa
