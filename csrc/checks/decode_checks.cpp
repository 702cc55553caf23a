#include "checks/decode_checks.h"

#include <c10/util/Exception.h>

namespace mhsa {

DecodeSizes check_decode_inputs(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                                const std::optional<at::Tensor>& in_proj_bias,
                                const at::Tensor& out_proj_weight,
                                const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                                bool batch_first, const at::Tensor& key_cache,
                                const at::Tensor& value_cache, const at::Tensor& cache_length) {
  const char* op = "decode_step";
  // A token of the wrong width is the likely mistake here: name x_new rather than let the
  // weight shape check below complain about in_proj_weight.
  if (x_new.dim() == 3 && in_proj_weight.dim() == 2) {
    TORCH_CHECK(x_new.sym_size(2) == in_proj_weight.sym_size(1), op,
                ": expected x_new with embed_dim ", in_proj_weight.sym_size(1),
                " (the width of in_proj_weight) as its last dim, got x_new of shape ",
                x_new.sym_sizes());
  }
  // x_new, the weights and biases are checked as _mha_forward checks them (no masks, no dropout).
  const MhaSizes s =
      check_mha_inputs(op, x_new, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                       num_heads, batch_first, std::nullopt, std::nullopt, 0.0);
  TORCH_CHECK(s.seq > 0, op, ": expected at least one new token in x_new, got shape ",
              x_new.sym_sizes());
  const c10::SymInt D = s.embed / num_heads;
  for (const auto& [name, cache] :
       {std::pair<const char*, const at::Tensor&>{"key_cache", key_cache},
        {"value_cache", value_cache}}) {
    TORCH_CHECK(cache.dim() == 4, op, ": expected ", name,
                " to be 4-D (batch, num_heads, max_len, head_dim), got ", cache.dim(),
                "-D of shape ", cache.sym_sizes());
    TORCH_CHECK(cache.device() == x_new.device(), op, ": expected ", name, " on device ",
                x_new.device(), " (the device of x_new), got ", cache.device());
    TORCH_CHECK(cache.scalar_type() == x_new.scalar_type(), op, ": expected ", name, " of dtype ",
                x_new.scalar_type(), " (the dtype of x_new), got ", cache.scalar_type(),
                "; create the cache with the dtype of the tokens");
    const c10::SymInt max_len = key_cache.sym_size(2);
    TORCH_CHECK(cache.sym_size(0) == s.batch, op, ": batch size mismatch: the cache holds ",
                cache.sym_size(0), " sequences (", name, " of shape ", cache.sym_sizes(),
                ") but x_new has ", s.batch);
    TORCH_CHECK(
        cache.sym_sizes() == c10::SymIntArrayRef({s.batch, c10::SymInt(num_heads), max_len, D}), op,
        ": expected ", name, " of shape (", s.batch, ", ", num_heads, ", max_len, ", D,
        ") for embed_dim ", s.embed, " and num_heads ", num_heads, ", got ", cache.sym_sizes());
    // Written in place through raw pointers: a non-contiguous cache would need a copy, and
    // the copy, not the caller's tensor, would receive the new keys and values.
    TORCH_CHECK(cache.is_contiguous(), op, ": expected a contiguous ", name,
                " (it is written in place)");
  }
  TORCH_CHECK(key_cache.sym_size(2) > 0, op, ": expected a cache with max_len > 0, got shape ",
              key_cache.sym_sizes());
  TORCH_CHECK(cache_length.scalar_type() == at::kLong && cache_length.dim() == 0, op,
              ": expected cache_length to be an int64 tensor of shape (), got ",
              cache_length.scalar_type(), " of shape ", cache_length.sym_sizes());
  TORCH_CHECK(cache_length.device() == x_new.device(), op, ": expected cache_length on device ",
              x_new.device(), ", got ", cache_length.device());
  return {s, key_cache.sym_size(2)};
}

}  // namespace mhsa
