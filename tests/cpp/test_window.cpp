// Sliding-window attention and skipped padding from C++: the window_size argument of the
// functions and the module equals the same call with the equivalent dense boolean band mask
// (a path checked against the ATen reference in test_ops.cpp), outputs and gradients.
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <mhsa/module.h>

namespace {

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
  const double tol = 1e-12;
  EXPECT_TRUE(at::allclose(a.out, b.out, tol, tol));
  EXPECT_TRUE(at::allclose(a.weights, b.weights, tol, tol));
  EXPECT_TRUE(at::allclose(a.gx, b.gx, tol, tol));
  EXPECT_TRUE(at::allclose(a.gw_in, b.gw_in, tol, tol));
  EXPECT_TRUE(at::allclose(a.gb_in, b.gb_in, tol, tol));
  EXPECT_TRUE(at::allclose(a.gw_out, b.gw_out, tol, tol));
  EXPECT_TRUE(at::allclose(a.gb_out, b.gb_out, tol, tol));
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
  EXPECT_TRUE(at::allclose(out_w, out_d, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(weights_w, weights_d, 1e-6, 1e-6));
}

TEST(Window, BadWindowSizeIsAClearError) {
  mhsa::MultiheadSelfAttention attn(16, 4);
  const at::Tensor x = at::randn({5, 2, 16});
  try {
    attn->forward(x, {}, true, {}, true, false, {-3, 0});
    FAIL() << "window_size (-3, 0) was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected window_size entries >= -1"), std::string::npos)
        << e.what();
  }
}

}  // namespace
