#include "checks/attention_block_checks.h"

#include <c10/util/Exception.h>

#include "checks/checks.h"

namespace mhsa {
namespace {

void check_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& query) {
  TORCH_CHECK(t.dim() == 4, op, ": expected ", name, " to be 4-D (N, heads, length, dim), got ",
              t.dim(), "-D of shape ", t.sym_sizes());
  TORCH_CHECK(t.device() == query.device(), op, ": expected ", name, " on device ", query.device(),
              " (the device of query), got ", t.device());
  TORCH_CHECK(t.scalar_type() == query.scalar_type(), op,
              ": expected query, key, and value to have the same dtype, but got query.dtype: ",
              query.scalar_type(), " and ", name, ".dtype: ", t.scalar_type());
}

}  // namespace

BlockSizes check_attention_block_inputs(const char* op, const at::Tensor& query,
                                        const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask,
                                        const internal::BlockOptions& options) {
  check_operand(op, "query", query, query);
  check_operand(op, "key", key, query);
  check_operand(op, "value", value, query);
  const auto dtype = query.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
      op, ": expected query of dtype float32, float64, bfloat16 or float16, got ", dtype);
  BlockSizes s{query.sym_size(0), query.sym_size(1), query.sym_size(2), query.sym_size(3),
               key.sym_size(1),   key.sym_size(2),   value.sym_size(3)};
  TORCH_CHECK(key.sym_size(0) == s.N && value.sym_size(0) == s.N, op,
              ": expected query, key and value with the same batch size, got ", s.N, ", ",
              key.sym_size(0), " and ", value.sym_size(0));
  TORCH_CHECK(key.sym_size(3) == s.D, op, ": expected key's last dim (", key.sym_size(3),
              ") to equal query's (", s.D, ")");
  TORCH_CHECK(value.sym_size(1) == s.H_kv && value.sym_size(2) == s.S, op,
              ": expected key and value with the same heads and length, got key ", key.sym_sizes(),
              " and value ", value.sym_sizes());
  TORCH_CHECK(s.H_kv > 0 || s.H == 0, op, ": expected key and value with at least one head");
  TORCH_CHECK(s.H_kv == 0 || s.H % s.H_kv == 0, op,
              ": number of heads in key and value must divide the number of heads in query, got ",
              s.H, " query heads and ", s.H_kv, " key/value heads");
  TORCH_CHECK(options.dropout_p >= 0.0 && options.dropout_p <= 1.0, op,
              ": dropout probability has to be between 0 and 1, but got ", options.dropout_p);
  if (attn_mask.has_value() && attn_mask->defined()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()), op,
                ": expected attn_mask dtype to be bool or floating (bool: true = may attend; "
                "float: added to the scores), got ",
                m.scalar_type());
    TORCH_CHECK(m.device() == query.device(), op, ": expected attn_mask on device ", query.device(),
                ", got ", m.device());
    const c10::SymInt full[4] = {s.N, s.H, s.L, s.S};
    const char* names[4] = {"batch", "heads", "query length", "key length"};
    TORCH_CHECK(m.dim() <= 4, op, ": expected attn_mask broadcastable to (N, H, L, S) = (", s.N,
                ", ", s.H, ", ", s.L, ", ", s.S, "), got shape ", m.sym_sizes());
    for (int64_t d = 0; d < m.dim(); ++d) {
      const int64_t axis = 4 - m.dim() + d;
      const c10::SymInt& size = m.sym_size(d);
      TORCH_CHECK(size == 1 || size == full[axis], op,
                  ": expected attn_mask broadcastable to (N, H, L, S) = (", s.N, ", ", s.H, ", ",
                  s.L, ", ", s.S, "), got shape ", m.sym_sizes(), " (its ", names[axis], " dim is ",
                  size, ")");
    }
  }
  if (options.key_padding_mask.has_value() && options.key_padding_mask->defined()) {
    const at::Tensor& m = *options.key_padding_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()), op,
                ": expected key_padding_mask of dtype bool (true = may not attend) or floating "
                "(added to the scores), got ",
                m.scalar_type());
    const c10::SymInt shape[2] = {s.N, s.S};
    check_shape(op, "key_padding_mask", m, shape);
  }
  return s;
}

BlockSizes check_attention_block_backward_inputs(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const std::optional<at::Tensor>& attn_mask, const internal::BlockOptions& options,
    bool average_attn_weights) {
  const char* op = "_attention_block_backward";
  const BlockSizes s = check_attention_block_inputs(op, query, key, value, attn_mask, options);
  const c10::SymInt out_shape[4] = {s.N, s.H, s.L, s.Dv};
  check_same_device_dtype(op, "grad_output", grad_output, query);
  check_shape(op, "grad_output", grad_output, out_shape);
  check_same_device_dtype(op, "output", output, query);
  check_shape(op, "output", output, out_shape);
  TORCH_CHECK(logsumexp.scalar_type() == logsumexp_dtype(query.scalar_type()), op,
              ": expected logsumexp of dtype ", logsumexp_dtype(query.scalar_type()), ", got ",
              logsumexp.scalar_type());
  const c10::SymInt lse_shape[3] = {s.N, s.H, s.L};
  check_shape(op, "logsumexp", logsumexp, lse_shape);
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.sym_numel() == 2, op,
              ": expected rng_state to be the int64 (2,) tensor of the forward, got ",
              rng_state.scalar_type(), " of shape ", rng_state.sym_sizes());
  if (grad_attn_weights.has_value() && grad_attn_weights->defined()) {
    check_same_device_dtype(op, "grad_attn_weights", *grad_attn_weights, query);
    if (average_attn_weights) {
      const c10::SymInt shape[3] = {s.N, s.L, s.S};
      check_shape(op, "grad_attn_weights", *grad_attn_weights, shape);
    } else {
      const c10::SymInt shape[4] = {s.N, s.H, s.L, s.S};
      check_shape(op, "grad_attn_weights", *grad_attn_weights, shape);
    }
  }
  return s;
}

}  // namespace mhsa
