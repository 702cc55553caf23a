// TorchScript: a model scripted and saved from Python (tests/python/make_scripted_model.py)
// loads in C++ with torch::jit::load, reproduces the output and input gradient recorded in
// Python, and TorchScript compiled in C++ can call the mhsa ops by name.
#include <torch/autograd.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/jit.h>
#include <torch/script.h>

#include <mhsa/ops.h>

#include <cstdlib>
#include <fstream>

#include "reference.h"

namespace mhsa_test {
namespace {

// $MHSA_TEST_ARTIFACTS/<name>; fails the test (not skips) when the variable or file is absent.
::testing::AssertionResult artifact_path(const char* name, std::string* path) {
  const char* dir = std::getenv("MHSA_TEST_ARTIFACTS");
  if (dir == nullptr || *dir == '\0') {
    return ::testing::AssertionFailure()
           << "MHSA_TEST_ARTIFACTS is not set. It must name a directory holding " << name
           << ", written by `python tests/python/make_scripted_model.py DIR`; scripts/test "
              "creates it and exports MHSA_TEST_ARTIFACTS.";
  }
  *path = std::string(dir) + "/" + name;
  if (!std::ifstream(*path).good()) {
    return ::testing::AssertionFailure()
           << *path << " does not exist (MHSA_TEST_ARTIFACTS=" << dir
           << "); create it with `python tests/python/make_scripted_model.py " << dir << "`.";
  }
  return ::testing::AssertionSuccess();
}

// The model may return (output, weights) or just the output.
at::Tensor first_output(const c10::IValue& result) {
  if (result.isTuple()) {
    const auto& elements = result.toTupleRef().elements();
    TORCH_CHECK(!elements.empty(), "the scripted model returned an empty tuple");
    return elements[0].toTensor();
  }
  if (result.isTensorList()) return result.toTensorList().get(0);
  if (result.isList()) return result.toListRef().at(0).toTensor();
  return result.toTensor();
}

TEST(TorchScript, ScriptedPythonModelReproducesOutputAndGradient) {
  std::string model_path, io_path;
  ASSERT_TRUE(artifact_path("scripted_mhsa.pt", &model_path));
  ASSERT_TRUE(artifact_path("scripted_mhsa_io.pt", &io_path));

  torch::jit::Module model = torch::jit::load(model_path);
  torch::jit::Module io = torch::jit::load(io_path);
  for (const char* attr : {"input", "output", "grad_input"}) {
    ASSERT_TRUE(io.hasattr(attr)) << io_path << " has no attribute `" << attr << "`";
  }
  const at::Tensor input = io.attr("input").toTensor();
  const at::Tensor expected = io.attr("output").toTensor();
  const at::Tensor expected_grad = io.attr("grad_input").toTensor();

  // A floating input is differentiated; an integer one (token ids) is not.
  const bool differentiable = at::isFloatingType(input.scalar_type());
  const at::Tensor x = differentiable ? input.clone().requires_grad_(true) : input;
  const at::Tensor output = first_output(model.forward({x}));
  ASSERT_EQ(output.sizes(), expected.sizes());
  EXPECT_TRUE(all_close(output, expected, tolerance(expected.scalar_type())))
      << "C++ output differs from the output recorded in Python";

  ASSERT_TRUE(differentiable) << "input of dtype " << input.scalar_type()
                              << " has no gradient to compare with grad_input";
  ASSERT_TRUE(output.requires_grad()) << "the scripted model's output does not require grad";
  output.sum().backward();  // like loss.backward(): also fills the model parameters' .grad
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(all_close(x.grad(), expected_grad, tolerance(expected_grad.scalar_type())))
      << "C++ gradient of output.sum() w.r.t. input differs from grad_input recorded in Python";
}

TEST(TorchScript, ScriptedPythonModelUsesMhsaOps) {
  std::string model_path;
  ASSERT_TRUE(artifact_path("scripted_mhsa.pt", &model_path));
  torch::jit::Module model = torch::jit::load(model_path);
  // Inline the calls to submodules and functions, then look for an mhsa:: node.
  std::shared_ptr<torch::jit::Graph> graph = model.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  bool found = false;
  std::function<void(torch::jit::Block*)> visit = [&](torch::jit::Block* block) {
    for (torch::jit::Node* node : block->nodes()) {
      if (std::string(node->kind().toQualString()).rfind("mhsa::", 0) == 0) found = true;
      for (torch::jit::Block* sub : node->blocks()) visit(sub);
    }
  };
  visit(graph->block());
  EXPECT_TRUE(found) << model_path << " contains no call to an mhsa:: operator";
}

// Resolves `mhsa.<op>` in TorchScript source to the registered mhsa::<op> (and `torch.<op>`
// to aten, as torch::jit::compile does): TorchScript compiled in C++, without Python.
struct MhsaResolver : torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(
      const std::string& name, torch::jit::GraphFunction& m,
      const torch::jit::SourceRange& loc) override {
    if (name == "mhsa") return std::make_shared<torch::jit::BuiltinModule>("mhsa");
    if (name == "torch") return std::make_shared<torch::jit::BuiltinModule>("aten");
    return nullptr;
  }
};

TEST(TorchScript, CompiledInCppCallsTheOps) {
  torch::jit::CompilationUnit cu;
  cu.define(std::nullopt, R"JIT(
def attend(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor):
    out, weights = mhsa.multi_head_self_attention(
        x, w_in, b_in, w_out, b_out, 2, 0.0, False, True, None, True, None, True, True)
    return out, weights
)JIT",
            std::make_shared<MhsaResolver>(), nullptr);
  at::manual_seed(0);
  Args a = make_args({2, 5, 8}, 2, at::kDouble);
  a.batch_first = true;
  a.is_causal = true;
  const c10::IValue result = cu.get_function("attend")(
      {a.query, a.in_proj_weight, *a.in_proj_bias, a.out_proj_weight, *a.out_proj_bias});
  ASSERT_TRUE(result.isTuple());
  const at::Tensor out = result.toTupleRef().elements()[0].toTensor();
  const at::Tensor w = result.toTupleRef().elements()[1].toTensor();
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
  const auto grads = torch::autograd::grad({out.sum() + w.sum()}, a.differentiable());
  const auto ref_grads = torch::autograd::grad({ref.sum() + ref_w.sum()}, a.differentiable());
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(at::kDouble))) << "gradient " << i;
  }
}

// Cross-attention (mhsa.MultiheadAttention with kdim/vdim and add_bias_kv) and the
// SDPA-compatible op (grouped-query heads, a window), scripted in Python, loaded here: output
// and both input gradients reproduced.
TEST(TorchScript, ScriptedCrossAttentionAndSdpaReproduceOutputAndGradients) {
  std::string model_path, io_path;
  ASSERT_TRUE(artifact_path("scripted_cross.pt", &model_path));
  ASSERT_TRUE(artifact_path("scripted_cross_io.pt", &io_path));
  torch::jit::Module model = torch::jit::load(model_path);
  torch::jit::Module io = torch::jit::load(io_path);
  const at::Tensor x = io.attr("input").toTensor().clone().requires_grad_(true);
  const at::Tensor memory = io.attr("memory").toTensor().clone().requires_grad_(true);
  const at::Tensor expected = io.attr("output").toTensor();
  const at::Tensor output = model.forward({x, memory}).toTensor();
  ASSERT_EQ(output.sizes(), expected.sizes());
  EXPECT_TRUE(all_close(output, expected, tolerance(expected.scalar_type())));
  output.sum().backward();
  EXPECT_TRUE(
      all_close(x.grad(), io.attr("grad_input").toTensor(), tolerance(expected.scalar_type())));
  EXPECT_TRUE(all_close(memory.grad(), io.attr("grad_memory").toTensor(),
                        tolerance(expected.scalar_type())));
}

}  // namespace
}  // namespace mhsa_test
