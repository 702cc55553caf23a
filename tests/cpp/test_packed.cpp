// Packed variable-length sequences from C++: MultiheadSelfAttention::forward_packed and
// mhsa::multi_head_self_attention_packed against the module run on each sequence alone
// (outputs and gradients), int32 offsets, sliding window. Errors: test_bad_inputs.cpp.
#include <torch/autograd.h>

#include <mhsa/module.h>

#include <vector>

#include "reference.h"

namespace mhsa_test {
namespace {

at::Tensor offsets(const std::vector<int64_t>& lengths, at::ScalarType dtype = at::kLong) {
  std::vector<int64_t> cu{0};
  for (int64_t n : lengths) cu.push_back(cu.back() + n);
  return torch::tensor(cu, torch::kLong).to(dtype);
}

// Output of every sequence alone (unbatched (L, E)), concatenated.
at::Tensor per_sequence(mhsa::MultiheadSelfAttention& m, const at::Tensor& x,
                        const std::vector<int64_t>& lengths, bool is_causal,
                        c10::IntArrayRef window = mhsa::kNoWindow) {
  std::vector<at::Tensor> outs;
  int64_t start = 0;
  for (int64_t n : lengths) {
    const at::Tensor xs = x.narrow(0, start, n);
    start += n;
    outs.push_back(
        std::get<0>(m->forward(xs, {}, /*need_weights=*/false, {}, true, is_causal, window)));
  }
  return at::cat(outs);
}

std::vector<at::Tensor> gradients(const at::Tensor& out, const at::Tensor& x,
                                  mhsa::MultiheadSelfAttention& m, const at::Tensor& r) {
  return torch::autograd::grad({(out * r).sum()}, {x, m->in_proj_weight, m->in_proj_bias,
                                                   m->out_proj->weight, m->out_proj->bias});
}

TEST(Packed, ModuleMatchesEachSequenceAlone) {
  const std::vector<int64_t> lengths{5, 1, 70, 13, 130};
  for (bool is_causal : {false, true}) {
    torch::manual_seed(0);
    mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(16, 4));
    m->to(at::kDouble);
    const at::Tensor x = torch::randn({219, 16}, torch::kDouble).requires_grad_();
    const at::Tensor r = torch::randn({219, 16}, torch::kDouble);
    const at::Tensor out = m->forward_packed(x, offsets(lengths), std::nullopt, is_causal);
    const at::Tensor expected = per_sequence(m, x, lengths, is_causal);
    const Tol tol = tolerance(at::kDouble, Kind::kReordered);
    EXPECT_TRUE(all_close(out, expected, tol)) << "causal " << is_causal;
    const auto grads = gradients(out, x, m, r), grads_ref = gradients(expected, x, m, r);
    for (size_t i = 0; i < grads.size(); ++i) {
      EXPECT_TRUE(all_close(grads[i], grads_ref[i], tol))
          << "gradient " << i << ", causal " << is_causal;
    }
  }
}

TEST(Packed, FunctionalInt32OffsetsAndWindow) {
  const std::vector<int64_t> lengths{9, 40, 3};
  torch::manual_seed(1);
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2));
  const at::Tensor x = torch::randn({52, 8});
  const std::vector<int64_t> window{4, 1};
  const at::Tensor out = mhsa::multi_head_self_attention_packed(
      x, offsets(lengths, at::kInt), m->in_proj_weight, m->in_proj_bias, m->out_proj->weight,
      m->out_proj->bias, 2, /*max_seqlen=*/40, /*dropout_p=*/0.0, /*training=*/true,
      /*is_causal=*/false, window);
  EXPECT_TRUE(all_close(out, per_sequence(m, x, lengths, false, window), tolerance(at::kFloat)));
}

}  // namespace
}  // namespace mhsa_test
