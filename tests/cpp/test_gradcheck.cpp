// Gradients of mhsa against central finite differences in float64 (no reference involved),
// and the fully-masked-row contract: finite output equal to the out_proj bias, zero weights,
// finite gradients.
#include <torch/autograd.h>

#include <mhsa/ops.h>

#include "reference.h"

namespace mhsa_test {
namespace {

struct Call {
  Args args;
  double dropout_p = 0.0;
  // Reseed the default generator before every forward, so dropout draws the same mask.
  std::optional<uint64_t> seed;

  std::tuple<at::Tensor, at::Tensor> run() const {
    if (seed) at::manual_seed(*seed);
    const Args& a = args;
    return mhsa::multi_head_self_attention(
        a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, a.num_heads,
        dropout_p, /*training=*/true, a.batch_first, a.key_padding_mask, a.need_weights,
        a.attn_mask, a.average_attn_weights, a.is_causal);
  }
};

// Compares autograd's gradient of loss = sum(out * g) + sum(weights * gw) with central
// differences on `samples` random entries of each differentiable tensor.
void finite_difference_check(const Call& call, int samples = 4, double eps = 1e-6) {
  auto [out, weights] = call.run();
  const at::Tensor g = at::randn_like(out);
  const at::Tensor gw = weights.defined() ? at::randn_like(weights) : at::Tensor();
  auto loss_of = [&](const at::Tensor& o, const at::Tensor& w) {
    at::Tensor l = (o * g).sum();
    if (w.defined()) l = l + (w * gw).sum();
    return l;
  };
  const std::vector<at::Tensor> inputs = call.args.differentiable();
  const auto grads = torch::autograd::grad({loss_of(out, weights)}, inputs);

  at::NoGradGuard no_grad;
  for (size_t t = 0; t < inputs.size(); ++t) {
    at::Tensor flat = inputs[t].view(-1);  // shares storage with the input
    ASSERT_TRUE(grads[t].defined()) << "input " << t;
    const at::Tensor grad_flat = grads[t].reshape(-1);
    for (int s = 0; s < samples; ++s) {
      const int64_t i = at::randint(flat.numel(), {1}, at::kLong).item<int64_t>();
      const double orig = flat[i].item<double>();
      flat[i].fill_(orig + eps);
      auto [o_plus, w_plus] = call.run();
      const double plus = loss_of(o_plus, w_plus).item<double>();
      flat[i].fill_(orig - eps);
      auto [o_minus, w_minus] = call.run();
      const double minus = loss_of(o_minus, w_minus).item<double>();
      flat[i].fill_(orig);
      const double numeric = (plus - minus) / (2 * eps);
      const double analytic = grad_flat[i].item<double>();
      const Tol tol = tolerance(at::kDouble, Kind::kFiniteDifference);
      EXPECT_NEAR(analytic, numeric, tol.atol + tol.rtol * std::abs(numeric))
          << "differentiable input " << t << " (query, in_proj_weight, [in_proj_bias], "
          << "out_proj_weight, [out_proj_bias]), flat index " << i;
    }
  }
}

class FiniteDifference : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(1); }
};

TEST_F(FiniteDifference, Plain) { finite_difference_check({make_args({5, 2, 8}, 2, at::kDouble)}); }

TEST_F(FiniteDifference, BatchFirstCausalPerHeadWeights) {
  Call c{make_args({2, 6, 8}, 2, at::kDouble)};
  c.args.batch_first = true;
  c.args.is_causal = true;
  c.args.average_attn_weights = false;
  finite_difference_check(c);
}

TEST_F(FiniteDifference, MasksAndNoWeights) {
  Call c{make_args({6, 2, 12}, 3, at::kDouble)};
  c.args.attn_mask = at::randn({6, 6}, at::kDouble);
  c.args.key_padding_mask = at::rand({2, 6}) < 0.25;
  c.args.need_weights = false;
  finite_difference_check(c);
}

TEST_F(FiniteDifference, UnbatchedNoBias) {
  finite_difference_check({make_args({5, 6}, 3, at::kDouble, /*bias=*/false)});
}

TEST_F(FiniteDifference, DropoutWithFixedSeed) {
  Call c{make_args({6, 2, 8}, 2, at::kDouble)};
  c.dropout_p = 0.3;
  c.seed = 1234;
  finite_difference_check(c);
}

TEST_F(FiniteDifference, FullyMaskedRows) {
  Call c{make_args({5, 2, 8}, 2, at::kDouble)};
  at::Tensor m = at::zeros({5, 5}, at::kBool);
  m[2].fill_(true);  // query 2 sees no key
  c.args.attn_mask = m;
  c.args.average_attn_weights = false;
  finite_difference_check(c);
}

// --- fully masked rows -------------------------------------------------------------------

void expect_finite(const at::Tensor& t, const char* what) {
  ASSERT_TRUE(t.defined()) << what;
  EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << what << " has NaN or inf";
}

TEST(FullyMaskedRow, KeyPaddingMaskMasksEveryKeyOfABatchElement) {
  at::manual_seed(2);
  for (auto dtype : {at::kDouble, at::kFloat}) {
    Args a = make_args({6, 3, 8}, 2, dtype);
    at::Tensor kpm = at::zeros({3, 6}, at::kBool);
    kpm[1].fill_(true);  // batch element 1: every key masked
    kpm[0][5].fill_(true);
    a.key_padding_mask = kpm;
    a.average_attn_weights = false;
    auto [out, w] = mhsa::multi_head_self_attention(
        a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, 2, 0.0, true,
        false, a.key_padding_mask, true, std::nullopt, false, false);
    expect_finite(out, "attn_output");
    expect_finite(w, "attn_weights");
    // Zero attention: the output of batch element 1 is the out_proj bias at every position.
    const at::Tensor out1 = out.select(1, 1);
    EXPECT_TRUE(all_close(out1, a.out_proj_bias->expand_as(out1), tolerance(dtype)));
    EXPECT_EQ(w.select(0, 1).abs().max().item<double>(), 0.0);
    // The other batch elements are unaffected and match the reference.
    auto [ref, ref_w] = reference_mhsa(a);
    EXPECT_TRUE(all_close(out, ref, tolerance(dtype)));
    EXPECT_TRUE(all_close(w, ref_w, tolerance(dtype)));

    const at::Tensor g = at::randn_like(out);
    const auto grads = torch::autograd::grad({(out * g).sum() + w.sum()}, a.differentiable());
    const auto ref_grads =
        torch::autograd::grad({(ref * g).sum() + ref_w.sum()}, a.differentiable());
    for (size_t i = 0; i < grads.size(); ++i) {
      expect_finite(grads[i], "gradient");
      EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(dtype))) << "gradient " << i;
    }
    // Batch element 1's queries and keys influence nothing but through values of masked keys:
    // its input gets no gradient at all.
    EXPECT_EQ(grads[0].select(1, 1).abs().max().item<double>(), 0.0);
  }
}

TEST(FullyMaskedRow, AttnMaskRowAndCausal) {
  at::manual_seed(3);
  Args a = make_args({2, 5, 8}, 2, at::kDouble);
  a.batch_first = true;
  a.is_causal = true;
  // With is_causal query 0 sees only key 0; masking key 0 for it leaves it nothing.
  at::Tensor m = at::zeros({5, 5}, at::kDouble);
  m[0][0].fill_(-std::numeric_limits<double>::infinity());
  a.attn_mask = m;
  auto [out, w] = mhsa::multi_head_self_attention(
      a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, 2, 0.0, true,
      true, std::nullopt, true, a.attn_mask, true, true);
  expect_finite(out, "attn_output");
  expect_finite(w, "attn_weights");
  const at::Tensor row0 = out.select(1, 0);  // (N, E): position 0 of every batch element
  EXPECT_TRUE(all_close(row0, a.out_proj_bias->expand_as(row0), tolerance(at::kDouble)));
  EXPECT_EQ(w.select(1, 0).abs().max().item<double>(), 0.0);
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));

  const auto grads = torch::autograd::grad({(out * out).sum()}, a.differentiable());
  const auto ref_grads = torch::autograd::grad({(ref * ref).sum()}, a.differentiable());
  for (size_t i = 0; i < grads.size(); ++i) {
    expect_finite(grads[i], "gradient");
    EXPECT_TRUE(all_close(grads[i], ref_grads[i], tolerance(at::kDouble))) << "gradient " << i;
  }
}

TEST(FullyMaskedRow, EverythingMaskedWithoutBias) {
  Args a = make_args({4, 2, 8}, 2, at::kFloat, /*bias=*/false);
  a.attn_mask = at::ones({4, 4}, at::kBool);
  auto [out, w] = mhsa::multi_head_self_attention(
      a.query, a.in_proj_weight, std::nullopt, a.out_proj_weight, std::nullopt, 2, 0.0, true, false,
      std::nullopt, true, a.attn_mask, true, false);
  EXPECT_EQ(out.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(w.abs().max().item<float>(), 0.0f);
  const auto grads = torch::autograd::grad({out.sum()}, a.differentiable());
  for (const auto& gr : grads) expect_finite(gr, "gradient");
}

}  // namespace
}  // namespace mhsa_test
