// mhsa::scaled_dot_product_attention through the C++ API against SDPA's math (the suite's
// attention_core, reference.h) in float64 (grouped-query attention, causal with L != S both ways,
// masks, a value dim other than the query's, scale, the sliding window), and its gradients through
// C++ autograd against the formula's.
#include <torch/autograd.h>

#include <mhsa/ops.h>

#include "reference.h"

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace mhsa_test {
namespace {

struct SdpaCall {
  at::Tensor query, key, value;  // (N, H, L, E), (N, H_kv, S, E), (N, H_kv, S, Ev)
  std::optional<at::Tensor> attn_mask;
  bool is_causal = false;
  std::optional<double> scale;
  std::optional<std::array<int64_t, 2>> window;
};

// SDPA's math path through the suite's attention_core (reference.h): each key/value head
// repeated for its H / H_kv query heads, scaled scores, is_causal top-left aligned (key j visible
// iff j <= i), the window i - left <= j <= i + right (-1 unbounded), the mask (bool: true = may
// attend; float: added), softmax with rows that see no key at zero, times value.
at::Tensor reference_sdpa(const SdpaCall& c) {
  const int64_t L = c.query.size(-2), S = c.key.size(-2);
  std::vector<at::Tensor> masks;
  const at::Tensor i = at::arange(L).unsqueeze(1), j = at::arange(S).unsqueeze(0);
  at::Tensor visible = at::ones({L, S}, at::kBool);
  if (c.is_causal) visible = visible.logical_and(j <= i);
  if (c.window) {
    const auto [left, right] = *c.window;
    if (left >= 0) visible = visible.logical_and(j >= i - left);
    if (right >= 0) visible = visible.logical_and(j <= i + right);
  }
  if (c.attn_mask) {
    const at::Tensor& m = *c.attn_mask;
    if (m.scalar_type() == at::kBool) {
      visible = visible.logical_and(m);
    } else {
      masks.push_back(m);
    }
  }
  masks.push_back(visible.logical_not());
  const double scale = c.scale.value_or(1.0 / std::sqrt(static_cast<double>(c.query.size(-1))));
  return std::get<0>(attention_core(c.query, c.key, c.value, masks, scale));
}

at::Tensor run_mhsa(const SdpaCall& c) {
  const bool gqa = c.query.size(-3) != c.key.size(-3);
  at::OptionalIntArrayRef window;
  if (c.window) window = at::IntArrayRef(*c.window);
  return mhsa::scaled_dot_product_attention(c.query, c.key, c.value, c.attn_mask, 0.0, c.is_causal,
                                            c.scale, gqa, window);
}

SdpaCall make_call(at::IntArrayRef q_shape, int64_t H_kv, int64_t S, int64_t Ev,
                   at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  std::vector<int64_t> k_shape(q_shape.begin(), q_shape.end());
  k_shape[k_shape.size() - 3] = H_kv;
  k_shape[k_shape.size() - 2] = S;
  std::vector<int64_t> v_shape = k_shape;
  v_shape.back() = Ev;
  SdpaCall c;
  c.query = at::randn(q_shape, opts).requires_grad_(true);
  c.key = at::randn(k_shape, opts).requires_grad_(true);
  c.value = at::randn(v_shape, opts).requires_grad_(true);
  return c;
}

// Output and the gradients of query, key and value of sum(out * g) against the formula's (in
// float64 on the same values), with the tolerances of the query's dtype.
void expect_matches_reference(const SdpaCall& c) {
  const Tol tol = tolerance(c.query.scalar_type());
  const at::Tensor out = run_mhsa(c);
  SdpaCall c64 = c;
  for (at::Tensor* t : {&c64.query, &c64.key, &c64.value}) {
    *t = t->detach().to(at::kDouble).requires_grad_(true);
  }
  if (c.attn_mask && c.attn_mask->is_floating_point()) c64.attn_mask = c.attn_mask->to(at::kDouble);
  const at::Tensor expected = reference_sdpa(c64);
  ASSERT_EQ(out.scalar_type(), c.query.scalar_type());
  EXPECT_TRUE(all_close(out, expected, tol)) << "output";
  EXPECT_FALSE(out.isnan().any().item<bool>());

  const at::Tensor g = at::randn(expected.sizes(), expected.options());
  const auto grads =
      torch::autograd::grad({(out * g.to(out.scalar_type())).sum()}, {c.query, c.key, c.value});
  const auto ref_grads =
      torch::autograd::grad({(expected * g).sum()}, {c64.query, c64.key, c64.value});
  const char* names[] = {"query", "key", "value"};
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(grads[i].defined()) << names[i];
    EXPECT_EQ(grads[i].sizes(), ref_grads[i].sizes()) << names[i];
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tol)) << "gradient of " << names[i];
  }
}

class Sdpa : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

// 8 query heads over 2 key/value heads, causal, L != S both ways and across the kernels' tiles
// (64 queries, 128 keys), Ev != E.
TEST_F(Sdpa, GqaCausalLengthsDiffer) {
  for (auto [L, S] : {std::pair<int64_t, int64_t>{5, 9}, {9, 5}, {67, 130}, {130, 40}}) {
    SCOPED_TRACE(testing::Message() << "L " << L << " S " << S);
    SdpaCall c = make_call({2, 8, L, 16}, /*H_kv=*/2, S, /*Ev=*/12, at::kDouble);
    c.is_causal = true;
    expect_matches_reference(c);
  }
}

TEST_F(Sdpa, GqaOneKeyValueHeadWithMaskAndScale) {
  SdpaCall c = make_call({2, 4, 7, 8}, /*H_kv=*/1, /*S=*/11, /*Ev=*/8, at::kDouble);
  c.attn_mask = at::rand({2, 1, 7, 11}) < 0.7;  // bool, true = may attend
  c.scale = 0.3;
  expect_matches_reference(c);
}

TEST_F(Sdpa, FloatMaskCausalAndWindow) {
  SdpaCall c = make_call({1, 4, 20, 8}, /*H_kv=*/2, /*S=*/16, /*Ev=*/6, at::kDouble);
  c.attn_mask = at::randn({4, 20, 16}, at::kDouble);
  c.is_causal = true;
  c.window = std::array<int64_t, 2>{3, 2};
  expect_matches_reference(c);
}

TEST_F(Sdpa, PaddingMaskFloat32) {
  SdpaCall c = make_call({3, 8, 33, 16}, /*H_kv=*/2, /*S=*/33, /*Ev=*/16, at::kFloat);
  at::Tensor attend = at::ones({3, 1, 1, 33}, at::kBool);
  attend.index_put_({1, at::indexing::Ellipsis, at::indexing::Slice(20, at::indexing::None)},
                    false);
  c.attn_mask = attend;
  c.is_causal = true;
  expect_matches_reference(c);
}

TEST_F(Sdpa, ThreeDimensionalInputs) {
  SdpaCall c = make_call({4, 6, 8}, /*H_kv=*/2, /*S=*/9, /*Ev=*/5, at::kDouble);
  c.is_causal = true;
  expect_matches_reference(c);
}

TEST_F(Sdpa, FullyMaskedRowsAreZero) {
  SdpaCall c = make_call({2, 4, 6, 8}, /*H_kv=*/2, /*S=*/6, /*Ev=*/8, at::kDouble);
  at::Tensor attend = at::rand({2, 1, 6, 6}) < 0.8;
  attend.index_put_({0, at::indexing::Slice(), 2}, false);  // query 2 of entry 0 sees no key
  c.attn_mask = attend;
  const at::Tensor out = run_mhsa(c);
  EXPECT_TRUE(at::equal(out.select(0, 0).select(1, 2), at::zeros({4, 8}, at::kDouble)));
  expect_matches_reference(c);
}

}  // namespace
}  // namespace mhsa_test
