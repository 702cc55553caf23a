// CPU kernel of mhsa::decode_step, one step of KV-cache decoding: the T new tokens projected
// (one QKV GEMM), their keys and values written into the cache, each new query attending to the
// cached keys 0..length+t, then the output projection: O(L*E) per token, not O(L^2*E) for the
// whole prefix again. A first step on an empty cache is a causal forward over the prompt, so it
// runs _mha_forward itself (the tiled kernel, not a loop of single queries).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks/decode_checks.h"
#include "cpu/projection_gemm.h"
#include "engine/cpu_capability.h"
#include "kernels/decode_attention.h"

namespace mhsa::cpu {
namespace {

// The decode attention tasks of this CPU's instruction set (decode_attention.cpp).
template <typename scalar_t>
DecodeAttentionTasks<scalar_t> decode_attention_kernel() {
  static const DecodeAttentionTasks<scalar_t> kernel =
      MHSA_ISA_COPY(make_decode_attention<scalar_t>);
  return kernel;
}

// Every (sequence, head, new token) task. A task reads up to length + T keys and values of D
// elements, 4 flops per element; a chunk gets about 2^18 flops at least: a single-token step
// over a short prefix is a few microseconds of work, less than waking other threads costs.
template <typename scalar_t>
void attend_to_cache(const DecodeAttentionArgs<scalar_t>& args) {
  const int64_t tasks = args.rows.N * args.H * args.rows.T;
  const int64_t task_work = 4 * (args.length + args.rows.T) * args.D;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, task_work));
  const DecodeAttentionTasks<scalar_t> kernel = decode_attention_kernel<scalar_t>();
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

// The keys and values of the new tokens, (N, H, T, D) views of qkv (rows of x_new, 3E).
std::pair<at::Tensor, at::Tensor> new_keys_values(const at::Tensor& qkv, const DecodeRows& rows,
                                                  int64_t H, int64_t D) {
  const int64_t E = H * D;
  at::Tensor by_batch = rows.batch_first ? qkv.view({rows.N, rows.T, 3 * E})
                                         : qkv.view({rows.T, rows.N, 3 * E}).transpose(0, 1);
  auto heads = [&](int64_t part) {
    return by_batch.narrow(2, part * E, E).reshape({rows.N, rows.T, H, D}).transpose(1, 2);
  };
  return {heads(1), heads(2)};
}

at::Tensor decode_step_cpu(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                           const std::optional<at::Tensor>& in_proj_bias,
                           const at::Tensor& out_proj_weight,
                           const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                           bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                           at::Tensor& cache_length) {
  const DecodeSizes sizes =
      check_decode_inputs(x_new, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                          num_heads, batch_first, key_cache, value_cache, cache_length);
  TORCH_CHECK(!key_cache.is_alias_of(value_cache),
              "decode_step: key_cache and value_cache "
              "share memory; they must be two separate tensors");
  const int64_t N = sizes.s.batch.expect_int(), T = sizes.s.seq.expect_int();
  const int64_t E = sizes.s.embed.expect_int(), H = num_heads, D = E / H;
  const int64_t max_len = sizes.max_len.expect_int();
  const int64_t length = cache_length.item<int64_t>();
  TORCH_CHECK(length >= 0 && length <= max_len, "decode_step: cache_length ", length,
              " is outside [0, max_len = ", max_len, "]");
  // Checked before anything is written, so a refused step leaves the cache as it was.
  TORCH_CHECK(length + T <= max_len, "decode_step: the KV cache is full: max_len ", max_len,
              ", current length ", length, ", cannot append T = ", T, " new token(s) (room for ",
              max_len - length, "); create a larger cache with new_kv_cache");
  const DecodeRows rows{N, T, batch_first};

  at::Tensor output;
  at::Tensor qkv;
  if (length == 0) {
    // Nothing cached: this step is exactly a causal forward over x_new. Called through the
    // dispatcher, it must skip _mha_forward's autocast kernel: decode computes in the cache's
    // dtype (fixed when the cache was made), with or without torch.autocast around it.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    internal::AttentionOptions options;
    options.num_heads = num_heads;
    options.batch_first = batch_first;
    options.is_causal = true;
    auto result = internal::mha_forward(x_new, in_proj_weight, in_proj_bias, out_proj_weight,
                                        out_proj_bias, options, /*need_weights=*/false);
    output = std::get<0>(result);
    qkv = std::get<2>(result).reshape({N * T, 3 * E});
    auto [k, v] = new_keys_values(qkv, rows, H, D);
    key_cache.narrow(2, 0, T).copy_(k);
    value_cache.narrow(2, 0, T).copy_(v);
  } else {
    const at::Tensor x2d = x_new.contiguous().view({N * T, E});
    // The same GEMM (and dtype of its result) as _mha_forward's projection.
    qkv = projection_gemm(x2d, false, in_proj_weight, true, 1.0, in_proj_bias, x_new.scalar_type());
    auto [k, v] = new_keys_values(qkv, rows, H, D);
    key_cache.narrow(2, length, T).copy_(k);
    value_cache.narrow(2, length, T).copy_(v);
    at::Tensor context = at::empty({N * T, E}, x_new.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, x_new.scalar_type(), "decode_step_cpu", [&] {
          attend_to_cache(DecodeAttentionArgs<scalar_t>{
              qkv.const_data_ptr<scalar_t>(), key_cache.const_data_ptr<scalar_t>(),
              value_cache.const_data_ptr<scalar_t>(), context.mutable_data_ptr<scalar_t>(), rows, H,
              D, max_len, length});
        });
    output = projection_gemm(context, false, out_proj_weight, true, 1.0, out_proj_bias,
                             x_new.scalar_type())
                 .view(x_new.sizes());
  }
  cache_length.fill_(length + T);
  return output;
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) { m.impl("decode_step", TORCH_FN(mhsa::cpu::decode_step_cpu)); }
