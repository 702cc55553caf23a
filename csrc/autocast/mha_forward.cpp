// Mixed precision for _mha_forward on the AutocastCPU key: under torch.autocast("cpu") the op
// runs in the autocast dtype. The casts are differentiable copies, so gradients reach float32
// parameters in float32; _mha_backward needs no autocast kernel (it runs on what _mha_forward
// saved, already in the low dtype). Boxed: it finds the operands by argument name, so a new
// argument needs no change here unless it is a computation operand (kCastArguments).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <array>
#include <string_view>

namespace mhsa::autocast {
namespace {

// The operands cast to the autocast dtype. The masks stay as given: the kernels accept bool and
// every floating mask dtype, and a float mask (-inf entries, large offsets) is better kept in
// its own precision.
constexpr std::array<std::string_view, 8> kCastArguments = {"x",
                                                            "in_proj_weight",
                                                            "in_proj_bias",
                                                            "out_proj_weight",
                                                            "out_proj_bias",  // _mha_forward
                                                            "query",
                                                            "key",
                                                            "value"};  // _attention_block_forward

bool is_cast_argument(std::string_view name) {
  for (std::string_view cast : kCastArguments) {
    if (name == cast) return true;
  }
  return false;
}

void mha_forward_autocast_cpu(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  // Redispatch below the autocast key; without this guard the call below would come back here.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto dtype = at::autocast::get_autocast_dtype(at::kCPU);
  const auto& arguments = op.schema().arguments();
  TORCH_INTERNAL_ASSERT(stack->size() >= arguments.size());
  const size_t first = stack->size() - arguments.size();
  for (size_t i = 0; i < arguments.size(); ++i) {
    c10::IValue& value = (*stack)[first + i];
    if (!value.isTensor() || !is_cast_argument(arguments[i].name())) continue;
    // cached_cast leaves non-floating, float64 and non-CPU tensors as they are (the usual
    // autocast rule), and caches the casts of leaf parameters for the region.
    value = at::autocast::cached_cast(dtype, value.toTensor(), c10::DeviceType::CPU);
  }
  op.callBoxed(stack);
}

}  // namespace
}  // namespace mhsa::autocast

TORCH_LIBRARY_IMPL(mhsa, AutocastCPU, m) {
  m.impl("_mha_forward",
         torch::CppFunction::makeFromBoxedFunction<&mhsa::autocast::mha_forward_autocast_cpu>());
  m.impl("_attention_block_forward",
         torch::CppFunction::makeFromBoxedFunction<&mhsa::autocast::mha_forward_autocast_cpu>());
}
