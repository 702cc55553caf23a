// The internal ops' names before 0.2.0 (mhsa::mha_forward, mha_backward, mha_packed_forward,
// mha_packed_backward), which TorchScript models saved then call by name: registered with the
// same schemas (mhsa.cpp) and this one boxed CompositeImplicitAutograd kernel, which warns once
// and calls the renamed op. The renamed op does the work on every dispatch key, so an old model
// also trains and traces as before, and the aliases copy no argument list.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

namespace mhsa {
namespace {

void call_renamed_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string& old_name = op.schema().name();  // "mhsa::mha_forward"
  const std::string prefix = "mhsa::";
  TORCH_INTERNAL_ASSERT(old_name.rfind(prefix, 0) == 0, "unexpected op name ", old_name);
  const std::string new_name = prefix + "_" + old_name.substr(prefix.size());
  TORCH_WARN_ONCE(old_name, " is deprecated: it was renamed ", new_name,
                  " in mhsa 0.2.0 (an internal op; most callers want "
                  "mhsa::multi_head_self_attention). This model still runs; re-save it (script "
                  "or export it again) with mhsa >= 0.2.0 to call the new name.");
  c10::Dispatcher::singleton().findSchemaOrThrow(new_name.c_str(), "").callBoxed(stack);
}

}  // namespace
}  // namespace mhsa

TORCH_LIBRARY_IMPL(mhsa, CompositeImplicitAutograd, m) {
  for (const char* name :
       {"mha_forward", "mha_backward", "mha_packed_forward", "mha_packed_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&mhsa::call_renamed_op>());
  }
}
