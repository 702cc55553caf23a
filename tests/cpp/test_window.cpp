// Sliding-window attention and skipped padding from C++: the window_size argument of the
// functions and the module equals the same call with the equivalent dense boolean band mask
// (a path checked against the ATen reference in test_ops.cpp), outputs and gradients.
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <mhsa/module.h>

#include "reference.h"

namespace {

using mhsa_test::Kind;
using mhsa_test::Tol;
using mhsa_test::tolerance;

// True where query i may not see key j under window (left, right) and, if causal, j > i.
at::Tensor band_mask(int64_t L, int64_t left, int64_t right, bool causal) {
  const at::Tensor i = at::arange(L).unsqueeze(1), j = at::arange(L).unsqueeze(0);
  at::Tensor blocked = at::zeros({L, L}, at::kBool);
  if (left >= 0) blocked = blocked.logical_or(j < i - left);
  if (right >= 0) blocked = blocked.logical_or(j > i + right);
  if (causal) blocked = blocked.logical_or(j > i);
  return blocked;
}

struct Grads {
  at::Tensor out, weights, gx, gw_in, gb_in, gw_out, gb_out;
};

Grads run(const at::Tensor& x0, const at::Tensor& w_in, const at::Tensor& b_in,
          const at::Tensor& w_out, const at::Tensor& b_out, const std::optional<at::Tensor>& mask,
          const std::optional<at::Tensor>& kpm, bool causal, std::array<int64_t, 2> window) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : {x0, w_in, b_in, w_out, b_out})
    leaves.push_back(t.detach().requires_grad_());
  auto [out, weights] = mhsa::multi_head_self_attention(
      leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], /*num_heads=*/2, 0.0, true,
      /*batch_first=*/true, kpm, /*need_weights=*/true, mask, /*average=*/false, causal, window);
  (out.sin().sum() + weights.square().sum()).backward();
  return {out.detach(),     weights.detach(), leaves[0].grad(), leaves[1].grad(),
          leaves[2].grad(), leaves[3].grad(), leaves[4].grad()};
}

void expect_equal(const Grads& a, const Grads& b) {
  const Tol tol = tolerance(at::kDouble, Kind::kReordered);
  EXPECT_TRUE(mhsa_test::all_close(a.out, b.out, tol)) << "output";
  EXPECT_TRUE(mhsa_test::all_close(a.weights, b.weights, tol)) << "weights";
  EXPECT_TRUE(mhsa_test::all_close(a.gx, b.gx, tol)) << "grad x";
  EXPECT_TRUE(mhsa_test::all_close(a.gw_in, b.gw_in, tol)) << "grad in_proj_weight";
  EXPECT_TRUE(mhsa_test::all_close(a.gb_in, b.gb_in, tol)) << "grad in_proj_bias";
  EXPECT_TRUE(mhsa_test::all_close(a.gw_out, b.gw_out, tol)) << "grad out_proj_weight";
  EXPECT_TRUE(mhsa_test::all_close(a.gb_out, b.gb_out, tol)) << "grad out_proj_bias";
}

TEST(Window, FunctionMatchesDenseBandMask) {
  at::manual_seed(0);
  const int64_t N = 2, L = 300, E = 16;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({N, L, E}, opts), w_in = at::randn({3 * E, E}, opts) * 0.3,
                   b_in = at::randn({3 * E}, opts), w_out = at::randn({E, E}, opts) * 0.3,
                   b_out = at::randn({E}, opts);
  at::Tensor kpm = at::zeros({N, L}, at::kBool);
  kpm.index_put_({1, at::indexing::Slice(200, at::indexing::None)}, true);  // right padding
  for (auto [left, right, causal] : {std::tuple<int64_t, int64_t, bool>{16, 0, true},
                                     {-1, 40, false},
                                     {70, 3, false},
                                     {0, 0, true}}) {
    SCOPED_TRACE(testing::Message()
                 << "window (" << left << ", " << right << ") causal " << causal);
    const Grads windowed =
        run(x, w_in, b_in, w_out, b_out, std::nullopt, kpm, causal, {left, right});
    const Grads dense =
        run(x, w_in, b_in, w_out, b_out, band_mask(L, left, right, causal), kpm, false, {-1, -1});
    expect_equal(windowed, dense);
  }
}

TEST(Window, ModuleForwardTakesWindowSize) {
  at::manual_seed(1);
  mhsa::MultiheadSelfAttention attn(mhsa::MultiheadSelfAttentionOptions(16, 4).batch_first(true));
  const at::Tensor x = at::randn({2, 50, 16});
  auto [out_w, weights_w] = attn->forward(x, {}, true, {}, true, /*is_causal=*/true, {8, 0});
  auto [out_d, weights_d] = attn->forward(x, {}, true, band_mask(50, 8, 0, true), true, false);
  const Tol tol = tolerance(at::kFloat, Kind::kBitwise);
  EXPECT_TRUE(mhsa_test::all_close(out_w, out_d, tol)) << "output";
  EXPECT_TRUE(mhsa_test::all_close(weights_w, weights_d, tol)) << "weights";
}

}  // namespace
