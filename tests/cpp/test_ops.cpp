// mhsa::multi_head_self_attention through the C++ API against the ATen reference of
// reference.h: outputs, attention weights and the gradients of the input and the 4 parameter
// tensors (the reference's from autograd), for every mask kind, layout and weight option.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <mhsa/internal_ops.h>
#include <mhsa/ops.h>

#include "reference.h"

namespace mhsa_test {
namespace {

std::tuple<at::Tensor, at::Tensor> run_mhsa(const Args& a, double dropout_p = 0.0,
                                            bool training = true) {
  return mhsa::multi_head_self_attention(
      a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, a.num_heads,
      dropout_p, training, a.batch_first, a.key_padding_mask, a.need_weights, a.attn_mask,
      a.average_attn_weights, a.is_causal);
}

// Gradients of sum(out * g_out) + sum(weights * g_weights) w.r.t. the differentiable tensors.
std::vector<at::Tensor> gradients(const at::Tensor& out, const at::Tensor& weights,
                                  const at::Tensor& g_out, const at::Tensor& g_weights,
                                  const Args& a) {
  at::Tensor loss = (out * g_out).sum();
  if (weights.defined()) loss = loss + (weights * g_weights).sum();
  return torch::autograd::grad({loss}, a.differentiable());
}

const char* const kGradNames[] = {"query", "in_proj_weight", "in_proj_bias", "out_proj_weight",
                                  "out_proj_bias"};

// Forward and backward of mhsa against the reference.
void expect_matches_reference(const Args& a, std::optional<Tol> tol_override = std::nullopt) {
  const Tol tol = tol_override.value_or(tolerance(a.query.scalar_type()));
  auto [out, weights] = run_mhsa(a);
  auto [ref_out, ref_weights] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref_out, tol)) << "attn_output";
  if (a.need_weights) {
    ASSERT_TRUE(weights.defined()) << "need_weights=true must return the weights";
    EXPECT_TRUE(all_close(weights, ref_weights, tol)) << "attn_weights";
  } else {
    EXPECT_FALSE(weights.defined()) << "need_weights=false must return an undefined tensor";
  }

  const at::Tensor g_out = at::randn_like(ref_out);
  const at::Tensor g_weights = a.need_weights ? at::randn_like(ref_weights) : at::Tensor();
  const auto grads = gradients(out, weights, g_out, g_weights, a);
  const auto ref_grads = gradients(ref_out, ref_weights, g_out, g_weights, a);
  ASSERT_EQ(grads.size(), ref_grads.size());
  const bool bias = a.in_proj_bias.has_value();
  for (size_t i = 0; i < grads.size(); ++i) {
    // Without biases the list is query, in_proj_weight, out_proj_weight.
    const char* name = bias ? kGradNames[i] : kGradNames[i == 2 ? 3 : i];
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tol)) << "gradient of " << name;
  }
}

at::Tensor random_bool_mask(at::IntArrayRef shape, double p_masked = 0.3) {
  return at::rand(shape) < p_masked;
}

// Float additive mask with some -inf entries.
at::Tensor random_float_mask(at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor m = at::randn(shape, at::TensorOptions().dtype(dtype));
  return m.masked_fill(at::rand(shape) < 0.2, -std::numeric_limits<double>::infinity());
}

class MhsaReference : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

TEST_F(MhsaReference, Float64) { expect_matches_reference(make_args({7, 3, 16}, 4, at::kDouble)); }

TEST_F(MhsaReference, Float32) { expect_matches_reference(make_args({7, 3, 16}, 4, at::kFloat)); }

TEST_F(MhsaReference, SingleHead) {
  expect_matches_reference(make_args({5, 2, 8}, 1, at::kDouble));
}

TEST_F(MhsaReference, HeadDimOne) {
  expect_matches_reference(make_args({5, 2, 6}, 6, at::kDouble));
}

TEST_F(MhsaReference, SequenceLengthOne) {
  expect_matches_reference(make_args({1, 3, 8}, 2, at::kDouble));
}

TEST_F(MhsaReference, BatchFirst) {
  Args a = make_args({3, 7, 16}, 4, at::kDouble);
  a.batch_first = true;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, BatchFirstFloat32) {
  Args a = make_args({3, 7, 16}, 4, at::kFloat);
  a.batch_first = true;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, Unbatched) { expect_matches_reference(make_args({6, 8}, 2, at::kDouble)); }

TEST_F(MhsaReference, UnbatchedIgnoresBatchFirst) {
  Args a = make_args({6, 8}, 2, at::kDouble);
  a.batch_first = true;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, UnbatchedWithMasks) {
  Args a = make_args({6, 8}, 2, at::kDouble);
  a.key_padding_mask = random_bool_mask({6}, 0.2);
  a.attn_mask = random_float_mask({2, 6, 6}, at::kDouble);  // (num_heads, L, L)
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, BoolAttnMask2D) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.attn_mask = random_bool_mask({7, 7});
  expect_matches_reference(a);
}

TEST_F(MhsaReference, FloatAttnMask2D) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.attn_mask = random_float_mask({7, 7}, at::kDouble);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, BoolAttnMask3D) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.attn_mask = random_bool_mask({3 * 4, 7, 7});
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, FloatAttnMask3D) {
  Args a = make_args({7, 3, 16}, 4, at::kFloat);
  a.attn_mask = random_float_mask({3 * 4, 7, 7}, at::kFloat);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, FloatAttnMaskOfOtherFloatDtype) {
  Args a = make_args({7, 3, 16}, 4, at::kFloat);
  a.attn_mask = random_float_mask({7, 7}, at::kDouble);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, BoolKeyPaddingMask) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.key_padding_mask = random_bool_mask({3, 7});
  expect_matches_reference(a);
}

TEST_F(MhsaReference, FloatKeyPaddingMask) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.key_padding_mask = random_float_mask({3, 7}, at::kDouble);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, BoolKeyPaddingMaskBatchFirst) {
  Args a = make_args({3, 7, 16}, 4, at::kFloat);
  a.batch_first = true;
  a.key_padding_mask = random_bool_mask({3, 7});
  expect_matches_reference(a);
}

TEST_F(MhsaReference, IsCausal) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.is_causal = true;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, IsCausalCombinedWithAttnMaskAndKeyPaddingMask) {
  Args a = make_args({3, 7, 16}, 4, at::kDouble);
  a.batch_first = true;
  a.is_causal = true;
  a.attn_mask = random_float_mask({7, 7}, at::kDouble);
  a.key_padding_mask = random_bool_mask({3, 7}, 0.2);
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, AllMaskKindsTogetherFloat32) {
  Args a = make_args({9, 2, 12}, 3, at::kFloat);
  a.is_causal = true;
  a.attn_mask = random_bool_mask({2 * 3, 9, 9}, 0.2);
  a.key_padding_mask = random_float_mask({2, 9}, at::kFloat);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, PerHeadWeights) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, NeedWeightsFalse) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.need_weights = false;
  a.attn_mask = random_bool_mask({7, 7}, 0.2);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, NeedWeightsFalseIgnoresAverage) {
  Args a = make_args({7, 3, 16}, 4, at::kFloat);
  a.need_weights = false;
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, NoBias) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble, /*bias=*/false);
  a.is_causal = true;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, OnlyInProjBias) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble);
  a.out_proj_bias = std::nullopt;
  auto [out, w] = run_mhsa(a);
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
}

TEST_F(MhsaReference, NonContiguousQuery) {
  Args a = make_args({3, 7, 16}, 4, at::kDouble, true, /*requires_grad=*/false);
  a.query = a.query.transpose(0, 1);  // (7, 3, 16) view, not contiguous
  ASSERT_FALSE(a.query.is_contiguous());
  for (const auto& t : a.differentiable()) t.requires_grad_(true);
  a.attn_mask = random_bool_mask({7, 7}, 0.2);
  expect_matches_reference(a);
}

TEST_F(MhsaReference, NonContiguousParameters) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble, true, /*requires_grad=*/false);
  a.in_proj_weight = at::randn({16, 48}, at::kDouble).t().requires_grad_(true);
  a.out_proj_weight = at::randn({16, 16}, at::kDouble).t().requires_grad_(true);
  ASSERT_FALSE(a.in_proj_weight.is_contiguous());
  for (const auto& t : a.differentiable()) t.requires_grad_(true);
  expect_matches_reference(a);
}

// Sequences longer than one query block (64) and one key block (256) of the fused kernel.
TEST_F(MhsaReference, LongSequenceSeveralTilesFloat32) {
  Args a = make_args({300, 2, 16}, 2, at::kFloat);
  a.key_padding_mask = random_bool_mask({2, 300}, 0.1);
  expect_matches_reference(a, tolerance(at::kFloat, Kind::kLongSum));
}

TEST_F(MhsaReference, LongSequenceCausalFloat64) {
  Args a = make_args({2, 270, 8}, 2, at::kDouble);
  a.batch_first = true;
  a.is_causal = true;
  a.average_attn_weights = false;
  expect_matches_reference(a);
}

TEST_F(MhsaReference, LongSequencePerHeadMaskFloat32) {
  Args a = make_args({130, 2, 8}, 2, at::kFloat);
  a.attn_mask = random_float_mask({4, 130, 130}, at::kFloat);
  a.need_weights = false;
  expect_matches_reference(a, tolerance(at::kFloat, Kind::kLongSum));
}

TEST_F(MhsaReference, BFloat16Loose) {
  Args a = make_args({8, 2, 16}, 2, at::kDouble, true, /*requires_grad=*/false);
  Args b = a;
  for (auto* t : {&b.query, &b.in_proj_weight, &b.out_proj_weight}) *t = t->to(at::kBFloat16);
  b.in_proj_bias = b.in_proj_bias->to(at::kBFloat16);
  b.out_proj_bias = b.out_proj_bias->to(at::kBFloat16);
  auto [out, w] = run_mhsa(b);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(w.scalar_type(), at::kBFloat16);
  // Reference in float64 from the same bfloat16-rounded values.
  Args r = b;
  for (auto* t : {&r.query, &r.in_proj_weight, &r.out_proj_weight}) *t = t->to(at::kDouble);
  r.in_proj_bias = r.in_proj_bias->to(at::kDouble);
  r.out_proj_bias = r.out_proj_bias->to(at::kDouble);
  auto [ref, ref_w] = reference_mhsa(r);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kBFloat16)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kBFloat16, Kind::kWeights)));
}

TEST_F(MhsaReference, WeightsRowsSumToOne) {
  Args a = make_args({7, 3, 16}, 4, at::kFloat, true, false);
  a.average_attn_weights = false;
  a.is_causal = true;
  auto [out, w] = run_mhsa(a);
  ASSERT_EQ(w.sizes(), (at::IntArrayRef{3, 4, 7, 7}));
  EXPECT_TRUE(all_close(w.sum(-1), at::ones({3, 4, 7}), tolerance(at::kFloat, Kind::kRowSum)));
  // Causal: nothing above the diagonal.
  EXPECT_EQ(w.triu(1).abs().max().item<float>(), 0.0f);
}

TEST_F(MhsaReference, GradientOfWeightsOnly) {
  // A loss that depends on the weights only: the output's gradient is undefined.
  Args a = make_args({5, 2, 8}, 2, at::kDouble);
  auto [out, w] = run_mhsa(a);
  auto [ref_out, ref_w] = reference_mhsa(a);
  const at::Tensor g = at::randn_like(ref_w);
  const auto grads = torch::autograd::grad({(w * g).sum()}, a.differentiable(), {}, false, false,
                                           /*allow_unused=*/true);
  const auto ref_grads = torch::autograd::grad({(ref_w * g).sum()}, a.differentiable(), {}, false,
                                               false, /*allow_unused=*/true);
  // query, in_proj_weight, in_proj_bias get gradients; out_proj has no effect on the weights.
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(at::kDouble))) << kGradNames[i];
  }
  for (size_t i = 3; i < 5; ++i) {
    if (grads[i].defined()) {
      EXPECT_EQ(grads[i].abs().max().item<double>(), 0.0) << kGradNames[i];
    }
  }
}

TEST_F(MhsaReference, NoGradWhenNothingRequiresGrad) {
  Args a = make_args({5, 2, 8}, 2, at::kFloat, true, /*requires_grad=*/false);
  auto [out, w] = run_mhsa(a);
  EXPECT_FALSE(out.requires_grad());
  EXPECT_FALSE(w.requires_grad());
}

TEST_F(MhsaReference, NoBiasWithoutGrad) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble, /*bias=*/false, /*requires_grad=*/false);
  auto [out, w] = run_mhsa(a);
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
}

TEST_F(MhsaReference, InferenceMode) {
  Args a = make_args({7, 3, 16}, 4, at::kFloat);
  a.is_causal = true;
  auto [ref, ref_w] = reference_mhsa(a);
  c10::InferenceMode guard;
  auto [out, w] = run_mhsa(a);
  EXPECT_TRUE(out.is_inference());
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kFloat)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kFloat)));
}

TEST_F(MhsaReference, EvalModeDisablesDropout) {
  Args a = make_args({7, 3, 16}, 4, at::kDouble, true, false);
  auto [out, w] = run_mhsa(a, /*dropout_p=*/0.9, /*training=*/false);
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
}

// Dropout: the returned per-head weights are the probabilities after dropout (0 or p/(1-p)),
// and the output is exactly what those weights produce (the reference with the keep mask read
// off them); the same seed gives the same result.
TEST_F(MhsaReference, DropoutWeightsMatchOutput) {
  const double p = 0.4;
  Args a = make_args({40, 2, 16}, 4, at::kDouble, true, false);
  a.average_attn_weights = false;
  auto [out, w] = run_mhsa(a, p, /*training=*/true);

  const at::Tensor kept = w != 0;
  const double dropped_fraction = 1.0 - kept.to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(dropped_fraction, p, 0.05);
  auto [expected, ref_w] = reference_mhsa(a, kept, p);  // (N, H, L, L) weights after dropout
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(out, expected, tolerance(at::kDouble)));

  // Reproducible from the default generator's seed; a different draw gives other weights.
  at::manual_seed(42);
  auto [out1, w1] = run_mhsa(a, p, true);
  at::manual_seed(42);
  auto [out2, w2] = run_mhsa(a, p, true);
  EXPECT_TRUE(at::equal(out1, out2));
  EXPECT_TRUE(at::equal(w1, w2));
  auto [out3, w3] = run_mhsa(a, p, true);
  EXPECT_FALSE(at::equal(w1, w3));
}

TEST_F(MhsaReference, DropoutOneDropsEverything) {
  Args a = make_args({6, 2, 8}, 2, at::kDouble, true, false);
  auto [out, w] = run_mhsa(a, 1.0, true);
  EXPECT_EQ(w.abs().max().item<double>(), 0.0);
  const at::Tensor bias = a.out_proj_bias->expand_as(out);
  EXPECT_TRUE(all_close(out, bias, tolerance(at::kDouble)));
}

// Dropout gradients: the backward regenerates the same dropout mask as the forward. Compare
// with the reference math applied to the mask read back from the per-head weights.
TEST_F(MhsaReference, DropoutGradientsUseTheForwardMask) {
  const double p = 0.3;
  Args a = make_args({9, 2, 8}, 2, at::kDouble);
  a.average_attn_weights = false;
  at::manual_seed(7);
  auto [out, w] = run_mhsa(a, p, true);
  const at::Tensor keep = (w != 0).detach();

  // Reference: the probabilities times keep / (1 - p), differentiable.
  auto [ref_out, ref_w] = reference_mhsa(a, keep, p);
  EXPECT_TRUE(all_close(out, ref_out, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));

  const at::Tensor g = at::randn_like(ref_out), gw = at::randn_like(ref_w);
  const auto grads = gradients(out, w, g, gw, a);
  const auto ref_grads = gradients(ref_out, ref_w, g, gw, a);
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(at::kDouble))) << kGradNames[i];
  }
}

// Gradients when only some of the 5 differentiable tensors require grad, or a bias is absent:
// common in practice (raw float features as input, frozen layers, bias=false).
class MhsaPartialGrad : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(4); }
  // Every tensor of `a` gets requires_grad = wanted[i]; compares the gradients that exist.
  static void check(Args a, std::vector<bool> wanted) {
    std::vector<at::Tensor> all = a.differentiable(), needed;
    for (auto& t : all) t.requires_grad_(false);
    for (size_t i = 0; i < all.size(); ++i) {
      if (wanted[i]) {
        all[i].requires_grad_(true);
        needed.push_back(all[i]);
      }
    }
    auto [out, w] = run_mhsa(a);
    auto [ref, ref_w] = reference_mhsa(a);
    EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
    const at::Tensor g = at::randn_like(ref);
    const auto grads = torch::autograd::grad({(out * g).sum()}, needed);
    const auto ref_grads = torch::autograd::grad({(ref * g).sum()}, needed);
    for (size_t i = 0; i < grads.size(); ++i) {
      EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(at::kDouble))) << "gradient " << i;
    }
  }
};

TEST_F(MhsaPartialGrad, InputWithoutGradParametersWithGrad) {
  check(make_args({5, 2, 8}, 2, at::kDouble), {false, true, true, true, true});
}

TEST_F(MhsaPartialGrad, OnlyInputRequiresGrad) {
  check(make_args({5, 2, 8}, 2, at::kDouble), {true, false, false, false, false});
}

TEST_F(MhsaPartialGrad, FrozenOutProjection) {
  check(make_args({5, 2, 8}, 2, at::kDouble), {true, true, true, false, false});
}

TEST_F(MhsaPartialGrad, NoBiasesAllRequireGrad) {
  check(make_args({5, 2, 8}, 2, at::kDouble, /*bias=*/false), {true, true, true});
}

TEST_F(MhsaPartialGrad, OnlyOutProjBiasAbsent) {
  Args a = make_args({5, 2, 8}, 2, at::kDouble);
  a.out_proj_bias = std::nullopt;
  check(a, {true, true, true, true});
}

TEST_F(MhsaPartialGrad, BackwardOfOutputOnlyWhileAllRequireGrad) {
  // autograd::grad for the input only: the parameters' slots are not needed by this graph task.
  Args a = make_args({5, 2, 8}, 2, at::kDouble);
  auto [out, w] = run_mhsa(a);
  auto [ref, ref_w] = reference_mhsa(a);
  const auto grads = torch::autograd::grad({out.sum()}, {a.query});
  const auto ref_grads = torch::autograd::grad({ref.sum()}, {a.query});
  EXPECT_TRUE(all_close(grads[0], ref_grads[0], tolerance(at::kDouble)));
}

TEST(MhsaOps, SchemasAreRegistered) {
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const char* name :
       {"mhsa::multi_head_self_attention", "mhsa::_mha_forward", "mhsa::_mha_backward"}) {
    EXPECT_TRUE(dispatcher.findSchema({name, ""}).has_value()) << name;
  }
}

TEST(MhsaOps, ForwardAndBackwardOpsDirectly) {
  at::manual_seed(0);
  Args a = make_args({6, 2, 8}, 2, at::kDouble, true, false);
  mhsa::internal::AttentionOptions options;
  options.num_heads = 2;
  options.is_causal = true;
  auto [out, weights, qkv, context, lse, rng_state] =
      mhsa::internal::mha_forward(a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight,
                                  a.out_proj_bias, options, /*need_weights=*/false);
  EXPECT_EQ(qkv.sizes(), (at::IntArrayRef{6, 2, 24}));
  EXPECT_EQ(context.sizes(), (at::IntArrayRef{6, 2, 8}));
  EXPECT_EQ(lse.sizes(), (at::IntArrayRef{2, 2, 6}));
  EXPECT_EQ(rng_state.sizes(), (at::IntArrayRef{2}));
  EXPECT_EQ(weights.numel(), 0);

  const at::Tensor g = at::randn_like(out);
  // Only the gradients of x and out_proj_weight requested: the others are undefined.
  auto [gx, gw_in, gb_in, gw_out, gb_out] = mhsa::internal::mha_backward(
      g, std::nullopt, a.query, a.in_proj_weight, a.out_proj_weight, qkv, context, lse, rng_state,
      options, {true, false, false, true, false});
  EXPECT_FALSE(gw_in.defined());
  EXPECT_FALSE(gb_in.defined());
  EXPECT_FALSE(gb_out.defined());

  Args r = make_args({6, 2, 8}, 2, at::kDouble, true, false);
  r.query = a.query.clone().requires_grad_(true);
  r.in_proj_weight = a.in_proj_weight;
  r.in_proj_bias = a.in_proj_bias;
  r.out_proj_weight = a.out_proj_weight.clone().requires_grad_(true);
  r.out_proj_bias = a.out_proj_bias;
  r.is_causal = true;
  auto [ref_out, unused] = reference_mhsa(r);
  const auto ref = torch::autograd::grad({(ref_out * g).sum()}, {r.query, r.out_proj_weight});
  EXPECT_TRUE(all_close(out, ref_out, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(gx, ref[0], tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(gw_out, ref[1], tolerance(at::kDouble)));
}

}  // namespace
}  // namespace mhsa_test
