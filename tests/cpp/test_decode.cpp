// KV-cache decoding from C++: MultiheadSelfAttention::new_kv_cache / decode against the module's
// own causal forward over the whole prefix, and a scripted Python module's decode loaded with
// torch::jit::load (tests/python/make_scripted_model.py writes it). Errors: test_bad_inputs.cpp.
#include <torch/script.h>
#include <torch/torch.h>

#include <mhsa/mhsa.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "reference.h"

namespace mhsa_test {
namespace {

at::Tensor span(const at::Tensor& x, int64_t start, int64_t stop, bool batch_first) {
  return x.narrow(batch_first ? 1 : 0, start, stop - start);
}

at::Tensor causal_forward(mhsa::MultiheadSelfAttention& m, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  return std::get<0>(m->forward(x, {}, /*need_weights=*/false, {}, true, /*is_causal=*/true));
}

class DecodeTest : public ::testing::TestWithParam<std::tuple<at::ScalarType, bool>> {};

TEST_P(DecodeTest, PromptThenTokensMatchCausalForward) {
  const auto [dtype, batch_first] = GetParam();
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(
      mhsa::MultiheadSelfAttentionOptions(16, 4).batch_first(batch_first));
  {
    torch::NoGradGuard no_grad;
    m->in_proj_bias.normal_(0.0, 0.2);
    m->out_proj->bias.normal_(0.0, 0.2);
  }
  m->to(dtype);
  m->eval();
  const int64_t N = 2, L = 9, prompt = 4;
  const at::Tensor x =
      batch_first ? torch::randn({N, L, 16}).to(dtype) : torch::randn({L, N, 16}).to(dtype);
  mhsa::KVCache cache = m->new_kv_cache(N, L);
  EXPECT_EQ(cache.key.sizes(), (at::IntArrayRef{N, 4, L, 4}));
  EXPECT_EQ(cache.key.scalar_type(), dtype);
  EXPECT_EQ(cache.max_len(), L);
  EXPECT_EQ(cache.current_length(), 0);
  const Tol tol = tolerance(dtype, Kind::kReordered);

  at::Tensor out = m->decode(span(x, 0, prompt, batch_first), cache);
  EXPECT_FALSE(out.requires_grad());  // the parameters do, decode runs without grad
  EXPECT_TRUE(all_close(out, causal_forward(m, span(x, 0, prompt, batch_first)), tol));
  for (int64_t i = prompt; i < L; ++i) {
    out = m->decode(span(x, i, i + 1, batch_first), cache);
    EXPECT_EQ(cache.current_length(), i + 1);
    const at::Tensor expected =
        span(causal_forward(m, span(x, 0, i + 1, batch_first)), i, i + 1, batch_first);
    EXPECT_TRUE(all_close(out, expected, tol)) << "token " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(DtypesAndLayouts, DecodeTest,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kDouble),
                                            ::testing::Bool()));

TEST(Decode, ScriptedPythonModuleDecodesInCpp) {
  const char* dir = std::getenv("MHSA_TEST_ARTIFACTS");
  ASSERT_TRUE(dir != nullptr && *dir != '\0')
      << "MHSA_TEST_ARTIFACTS is not set; `python tests/python/make_scripted_model.py DIR` writes "
         "scripted_mhsa_decode.pt there (scripts/test does it)";
  const std::string model_path = std::string(dir) + "/scripted_mhsa_decode.pt";
  const std::string io_path = std::string(dir) + "/scripted_mhsa_decode_io.pt";
  ASSERT_TRUE(std::ifstream(model_path).good()) << model_path << " does not exist";
  ASSERT_TRUE(std::ifstream(io_path).good()) << io_path << " does not exist";
  torch::jit::Module model = torch::jit::load(model_path);
  torch::jit::Module io = torch::jit::load(io_path);
  const at::Tensor input = io.attr("input").toTensor();
  const at::Tensor expected = io.attr("output").toTensor();
  const int64_t prompt = io.attr("prompt_length").toInt();
  const int64_t N = input.size(0), L = input.size(1);

  // The cache is a named tuple (key, value, length), passed back to decode as it is.
  const c10::IValue cache = model.run_method("new_kv_cache", N, L);
  ASSERT_TRUE(cache.isTuple());
  const at::Tensor length = cache.toTupleRef().elements()[2].toTensor();
  std::vector<at::Tensor> outputs{
      model.run_method("decode", input.narrow(1, 0, prompt), cache).toTensor()};
  for (int64_t i = prompt; i < L; ++i) {
    outputs.push_back(model.run_method("decode", input.narrow(1, i, 1), cache).toTensor());
    EXPECT_EQ(length.item<int64_t>(), i + 1);
  }
  EXPECT_TRUE(all_close(at::cat(outputs, 1), expected, tolerance(at::kDouble, Kind::kReordered)))
      << "C++ decode of the scripted module differs from the causal forward recorded in Python";
}

}  // namespace
}  // namespace mhsa_test
