// The C++ frontend module mhsa::MultiheadSelfAttention: parameter names and shapes, forward
// equal to the functional op, train/eval with dropout, bias=false, batch_first, clone.
#include <torch/autograd.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/serialize.h>

#include <mhsa/module.h>

#include <set>
#include <sstream>

#include "reference.h"

namespace mhsa_test {
namespace {

std::set<std::string> parameter_names(const torch::nn::Module& m) {
  std::set<std::string> names;
  for (const auto& item : m.named_parameters()) names.insert(item.key());
  return names;
}

std::tuple<at::Tensor, at::Tensor> functional(const mhsa::MultiheadSelfAttention& m,
                                              const at::Tensor& x, double dropout_p,
                                              bool training) {
  auto opt = [](const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  };
  return mhsa::multi_head_self_attention(
      x, m->in_proj_weight, opt(m->in_proj_bias), m->out_proj->weight, opt(m->out_proj->bias),
      m->options.num_heads(), dropout_p, training, m->options.batch_first());
}

TEST(Module, ParameterNamesAndShapes) {
  mhsa::MultiheadSelfAttention m(16, 4);
  EXPECT_EQ(parameter_names(*m), (std::set<std::string>{"in_proj_weight", "in_proj_bias",
                                                        "out_proj.weight", "out_proj.bias"}));
  const auto params = m->named_parameters();
  EXPECT_EQ(params["in_proj_weight"].sizes(), (at::IntArrayRef{48, 16}));
  EXPECT_EQ(params["in_proj_bias"].sizes(), (at::IntArrayRef{48}));
  EXPECT_EQ(params["out_proj.weight"].sizes(), (at::IntArrayRef{16, 16}));
  EXPECT_EQ(params["out_proj.bias"].sizes(), (at::IntArrayRef{16}));
  for (const auto& p : params) EXPECT_TRUE(p.value().requires_grad()) << p.key();
  // The same tensors as the public members.
  EXPECT_TRUE(params["in_proj_weight"].is_same(m->in_proj_weight));
  EXPECT_TRUE(params["out_proj.weight"].is_same(m->out_proj->weight));
}

TEST(Module, Initialization) {
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(16, 4);
  // xavier_uniform_ on (48, 16): bound sqrt(6 / (16 + 48)).
  const double bound = std::sqrt(6.0 / (16 + 48));
  EXPECT_LE(m->in_proj_weight.abs().max().item<double>(), bound);
  EXPECT_GT(m->in_proj_weight.abs().max().item<double>(), 0.5 * bound);
  EXPECT_EQ(m->in_proj_bias.abs().max().item<double>(), 0.0);
  EXPECT_EQ(m->out_proj->bias.abs().max().item<double>(), 0.0);
  EXPECT_GT(m->out_proj->weight.abs().max().item<double>(), 0.0);
}

TEST(Module, NoBias) {
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2).bias(false));
  EXPECT_EQ(parameter_names(*m), (std::set<std::string>{"in_proj_weight", "out_proj.weight"}));
  EXPECT_FALSE(m->in_proj_bias.defined());
  EXPECT_FALSE(m->out_proj->bias.defined());
  const at::Tensor x = at::randn({5, 2, 8});
  auto [out, w] = m(x);
  auto [ref, ref_w] = functional(m, x, 0.0, true);
  EXPECT_TRUE(at::equal(out, ref));
  EXPECT_TRUE(at::equal(w, ref_w));
  const auto grads = torch::autograd::grad({out.sum()}, m->parameters());
  EXPECT_EQ(grads.size(), 2u);
  for (const auto& g : grads) EXPECT_TRUE(at::isfinite(g).all().item<bool>());
}

TEST(Module, ForwardMatchesFunctionalAndReference) {
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(16, 4);
  m->to(at::kDouble);
  // Non-zero biases so that they are checked too.
  {
    at::NoGradGuard no_grad;
    m->in_proj_bias.normal_();
    m->out_proj->bias.normal_();
  }
  const at::Tensor x = at::randn({7, 3, 16}, at::kDouble);
  const at::Tensor kpm = at::rand({3, 7}) < 0.2;
  const at::Tensor mask = at::randn({7, 7}, at::kDouble);
  auto [out, w] = m(x, kpm, /*need_weights=*/true, mask, /*average_attn_weights=*/false,
                    /*is_causal=*/true);
  auto [fout, fw] = mhsa::multi_head_self_attention(x, m->in_proj_weight, m->in_proj_bias,
                                                    m->out_proj->weight, m->out_proj->bias, 4, 0.0,
                                                    true, false, kpm, true, mask, false, true);
  EXPECT_TRUE(at::equal(out, fout));
  EXPECT_TRUE(at::equal(w, fw));

  Args a;
  a.query = x;
  a.in_proj_weight = m->in_proj_weight;
  a.in_proj_bias = m->in_proj_bias;
  a.out_proj_weight = m->out_proj->weight;
  a.out_proj_bias = m->out_proj->bias;
  a.num_heads = 4;
  a.key_padding_mask = kpm;
  a.attn_mask = mask;
  a.average_attn_weights = false;
  a.is_causal = true;
  auto [ref, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));

  // Gradients land on the module's parameters.
  (out.sum() + w.sum()).backward();
  for (const auto& p : m->named_parameters()) {
    EXPECT_TRUE(p.value().grad().defined()) << p.key();
  }
}

TEST(Module, DefaultArgumentsAndNeedWeightsFalse) {
  mhsa::MultiheadSelfAttention m(8, 2);
  const at::Tensor x = at::randn({4, 2, 8});
  auto [out, w] = m(x);
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_EQ(w.sizes(), (at::IntArrayRef{2, 4, 4}));
  auto [out2, w2] = m(x, at::Tensor(), /*need_weights=*/false);
  EXPECT_TRUE(at::equal(out, out2));
  EXPECT_FALSE(w2.defined());
}

TEST(Module, BatchFirstAndUnbatched) {
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2).batch_first(true));
  const at::Tensor x = at::randn({3, 5, 8});  // (N, L, E)
  auto [out, w] = m(x);
  EXPECT_EQ(out.sizes(), x.sizes());
  auto [fout, fw] = functional(m, x, 0.0, true);
  EXPECT_TRUE(at::equal(out, fout));
  // Same as the (L, N, E) layout transposed.
  auto [tout, tw] =
      mhsa::multi_head_self_attention(x.transpose(0, 1), m->in_proj_weight, m->in_proj_bias,
                                      m->out_proj->weight, m->out_proj->bias, 2, 0.0, true, false);
  EXPECT_TRUE(all_close(out, tout.transpose(0, 1), tolerance(at::kFloat)));
  EXPECT_TRUE(all_close(w, tw, tolerance(at::kFloat)));
  // Unbatched (L, E) input.
  auto [uout, uw] = m(x[0]);
  EXPECT_EQ(uout.sizes(), (at::IntArrayRef{5, 8}));
  EXPECT_EQ(uw.sizes(), (at::IntArrayRef{5, 5}));
  EXPECT_TRUE(all_close(uout, out[0], tolerance(at::kFloat)));
}

TEST(Module, DropoutOnlyInTraining) {
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(16, 4).dropout(0.5));
  const at::Tensor x = at::randn({12, 2, 16});
  auto [no_dropout, w0] = functional(m, x, 0.0, true);

  ASSERT_TRUE(m->is_training());
  auto [train1, tw1] = m(x);
  auto [train2, tw2] = m(x);
  EXPECT_FALSE(at::allclose(train1, no_dropout)) << "training mode must apply dropout";
  EXPECT_FALSE(at::equal(train1, train2)) << "each training call draws a new dropout mask";
  EXPECT_GT((tw1 == 0).sum().item<int64_t>(), 0);
  // Reproducible with torch::manual_seed.
  torch::manual_seed(5);
  auto [s1, sw1] = m(x);
  torch::manual_seed(5);
  auto [s2, sw2] = m(x);
  EXPECT_TRUE(at::equal(s1, s2));

  m->eval();
  ASSERT_FALSE(m->is_training());
  auto [eval1, ew1] = m(x);
  auto [eval2, ew2] = m(x);
  EXPECT_TRUE(at::equal(eval1, eval2));
  EXPECT_TRUE(all_close(eval1, no_dropout, tolerance(at::kFloat)));
  EXPECT_TRUE(all_close(ew1, w0, tolerance(at::kFloat)));

  m->train();
  auto [train3, tw3] = m(x);
  EXPECT_FALSE(at::allclose(train3, no_dropout));
}

TEST(Module, DropoutGradientsInTraining) {
  torch::manual_seed(0);
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2).dropout(0.2));
  m->to(at::kDouble);
  const at::Tensor x = at::randn({6, 2, 8}, at::kDouble).requires_grad_(true);
  torch::manual_seed(9);
  auto [out, w] = m(x);
  std::vector<at::Tensor> inputs = m->parameters();
  inputs.push_back(x);
  const auto grads = torch::autograd::grad({out.pow(2).sum()}, inputs);
  // Same seed, same mask: the functional op gives the same gradients.
  torch::manual_seed(9);
  auto [fout, fw] = functional(m, x, 0.2, true);
  const auto fgrads = torch::autograd::grad({fout.pow(2).sum()}, inputs);
  EXPECT_TRUE(at::equal(out, fout));
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(all_close(grads[i], fgrads[i], tolerance(at::kDouble))) << i;
  }
}

TEST(Module, CloneIsIndependent) {
  mhsa::MultiheadSelfAttention m(8, 2);
  auto copy = std::dynamic_pointer_cast<mhsa::MultiheadSelfAttentionImpl>(m->clone());
  ASSERT_TRUE(copy);
  EXPECT_EQ(parameter_names(*copy), parameter_names(*m));
  const at::Tensor x = at::randn({4, 2, 8});
  EXPECT_TRUE(at::equal(std::get<0>(m(x)), std::get<0>(copy->forward(x))));
  EXPECT_FALSE(copy->in_proj_weight.is_same(m->in_proj_weight));
  {
    at::NoGradGuard no_grad;
    copy->in_proj_weight.add_(1.0);
  }
  EXPECT_FALSE(at::equal(copy->in_proj_weight, m->in_proj_weight));
}

TEST(Module, StateDictRoundTrip) {
  mhsa::MultiheadSelfAttention a(8, 2), b(8, 2);
  std::stringstream buffer;
  torch::save(a, buffer);
  torch::load(b, buffer);
  for (const auto& p : a->named_parameters()) {
    EXPECT_TRUE(at::equal(p.value(), b->named_parameters()[p.key()])) << p.key();
  }
}

TEST(Module, InSequentialContainer) {
  // AnyModule needs FORWARD_HAS_DEFAULT_ARGS for the optional arguments.
  torch::nn::Sequential seq(mhsa::MultiheadSelfAttention(8, 2));
  const at::Tensor x = at::randn({4, 2, 8});
  auto out = seq->forward<std::tuple<at::Tensor, at::Tensor>>(x);
  EXPECT_EQ(std::get<0>(out).sizes(), x.sizes());
}

}  // namespace
}  // namespace mhsa_test
