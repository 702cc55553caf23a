#pragma once
// The gradient of in_proj_bias: the column sums of the fp32 QKV gradient. The attention backward
// kernels sum each block of grad_qkv rows while it is in cache (BackwardArgs::bias_sums_q and
// bias_sums_kv); these buffers hold those block sums, and the gradient adds them up in a fixed
// order (column_sums), so it has the same bits for any thread count.
#include <ATen/ATen.h>

#include "cpu/projection_gemm.h"

namespace mhsa::cpu {

struct InputBiasSums {
  at::Tensor q;   // (query blocks, E): rows nobody writes (no key reaches the block) stay zero
  at::Tensor kv;  // (key blocks, 2E): every row is written by its key block's task

  InputBiasSums() = default;
  InputBiasSums(int64_t query_blocks, int64_t key_blocks, int64_t E, const at::TensorOptions& acc)
      : q(at::zeros({query_blocks, E}, acc)), kv(at::empty({key_blocks, 2 * E}, acc)) {}

  bool defined() const { return q.defined(); }

  // (3E) in `dtype`: [dQ sums, dK sums, dV sums], as the columns of grad_qkv.
  at::Tensor gradient(at::ScalarType dtype) const {
    return at::cat({column_sums(q), column_sums(kv)}).to(dtype);
  }
};

}  // namespace mhsa::cpu
