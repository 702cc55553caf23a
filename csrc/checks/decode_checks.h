#pragma once
// Input validation of mhsa::decode_step shared by its CPU and Meta kernels (see checks.h for
// why they share it). The cache length is a value, not a shape: the CPU kernel checks it.
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>

#include "checks/checks.h"

namespace mhsa {

struct DecodeSizes {
  MhaSizes s;           // batch N, new tokens T (as seq), embed E, heads H
  c10::SymInt max_len;  // capacity of the cache, its dim 2
};

DecodeSizes check_decode_inputs(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                                const std::optional<at::Tensor>& in_proj_bias,
                                const at::Tensor& out_proj_weight,
                                const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                                bool batch_first, const at::Tensor& key_cache,
                                const at::Tensor& value_cache, const at::Tensor& cache_length);

}  // namespace mhsa
