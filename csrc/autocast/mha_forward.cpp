// Mixed precision for mha_forward on the AutocastCPU key: under
// torch.autocast("cpu", dtype=torch.bfloat16) the op runs in the autocast dtype.
//
// The public op multi_head_self_attention is CompositeImplicitAutograd, so it reaches this
// kernel through mha_forward. The casts are ordinary (differentiable) copies recorded by
// autograd, so gradients flow back to float32 parameters in float32; mha_backward needs no
// autocast kernel, since it runs on the tensors mha_forward saved, already in the low dtype.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <mhsa/ops.h>

namespace mhsa::autocast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mha_forward_autocast_cpu(const at::Tensor& x, const at::Tensor& in_proj_weight,
                         const std::optional<at::Tensor>& in_proj_bias,
                         const at::Tensor& out_proj_weight,
                         const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                         bool batch_first, const std::optional<at::Tensor>& attn_mask,
                         const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
                         double dropout_p, bool need_weights, bool average_attn_weights,
                         c10::IntArrayRef window_size) {
  // Redispatch below the autocast key; without this guard the call below would come back here.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto dtype = at::autocast::get_autocast_dtype(at::kCPU);
  const auto cast = [dtype](const auto& t) {
    // cached_cast leaves non-floating, float64 and non-CPU tensors as they are (the usual
    // autocast rule), and caches the casts of leaf parameters for the region.
    return at::autocast::cached_cast(dtype, t, c10::DeviceType::CPU);
  };
  // The masks stay as given: the kernels accept bool and every floating mask dtype, and a float
  // mask (-inf entries, large offsets) is better kept in its own precision.
  return mhsa::mha_forward(cast(x), cast(in_proj_weight), cast(in_proj_bias), cast(out_proj_weight),
                           cast(out_proj_bias), num_heads, batch_first, attn_mask, key_padding_mask,
                           is_causal, dropout_p, need_weights, average_attn_weights, window_size);
}

}  // namespace
}  // namespace mhsa::autocast

TORCH_LIBRARY_IMPL(mhsa, AutocastCPU, m) {
  m.impl("mha_forward", TORCH_FN(mhsa::autocast::mha_forward_autocast_cpu));
}
