// Shape inference for decode_step on the Meta key: the same checks as the CPU kernel (except
// the cache length, a value the Meta key does not have) and an output shaped like x_new. The
// cache tensors are mutated by the real kernel only; their shapes never change.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks/decode_checks.h"

namespace mhsa::meta {
namespace {

at::Tensor decode_step_meta(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                            const std::optional<at::Tensor>& in_proj_bias,
                            const at::Tensor& out_proj_weight,
                            const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                            bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                            at::Tensor& cache_length) {
  check_decode_inputs(x_new, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                      num_heads, batch_first, key_cache, value_cache, cache_length);
  return at::empty_symint(x_new.sym_sizes(), x_new.options());
}

}  // namespace
}  // namespace mhsa::meta

TORCH_LIBRARY_IMPL(mhsa, Meta, m) { m.impl("decode_step", TORCH_FN(mhsa::meta::decode_step_meta)); }
