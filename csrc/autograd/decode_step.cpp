// The Autograd kernel of mhsa::decode_step. Decoding is inference, the op has no derivative:
// with grad mode on and an input requiring grad it refuses, rather than return an output that
// silently has no gradient. Otherwise it runs the kernel below autograd and bumps the version
// counters of the three cache tensors it mutated, as in-place ATen ops do, so that autograd
// notices a mutated cache that was saved for a backward.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <mhsa/ops.h>

#include "cpu/weight_cache.h"

namespace mhsa {

namespace {

void refuse_grad(const char* name, const at::Tensor& t) {
  TORCH_CHECK(!(t.defined() && t.requires_grad()), "decode_step: ", name,
              " requires grad, but KV-cache decoding is inference only and has no gradient; "
              "call it under torch.no_grad() or torch.inference_mode() (the decode method of "
              "MultiheadSelfAttention does this itself)");
}

at::Tensor decode_step_autograd(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                                const std::optional<at::Tensor>& in_proj_bias,
                                const at::Tensor& out_proj_weight,
                                const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                                bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                                at::Tensor& cache_length) {
  if (at::GradMode::is_enabled()) {
    refuse_grad("x_new", x_new);
    refuse_grad("in_proj_weight", in_proj_weight);
    if (in_proj_bias.has_value()) refuse_grad("in_proj_bias", *in_proj_bias);
    refuse_grad("out_proj_weight", out_proj_weight);
    if (out_proj_bias.has_value()) refuse_grad("out_proj_bias", *out_proj_bias);
    refuse_grad("key_cache", key_cache);
    refuse_grad("value_cache", value_cache);
  }
  at::Tensor output;
  {
    // Below autograd (and ADInplaceOrView, which has no kernel for this op): without the
    // guard the call would come back to this kernel.
    at::AutoDispatchBelowADInplaceOrView guard;
    const cpu::InferenceCallGuard inference(true);  // refused above otherwise
    output = mhsa::decode_step(x_new, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                               num_heads, batch_first, key_cache, value_cache, cache_length);
  }
  for (at::Tensor* mutated : {&key_cache, &value_cache, &cache_length}) {
    torch::autograd::impl::bump_version(*mutated);
  }
  return output;
}

}  // namespace
}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, Autograd, m) {
  m.impl("decode_step", TORCH_FN(mhsa::decode_step_autograd));
}
