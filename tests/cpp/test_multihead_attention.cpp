// The C++ frontend module mhsa::MultiheadAttention against LibTorch's own
// torch::nn::MultiheadAttention (float64, the same parameters copied by name): cross-attention,
// kdim/vdim, add_bias_kv, add_zero_attn, masks, outputs, weights and every gradient; parameter
// names for each constructor combination; batch_first; state dicts both ways; bad options.
#include <torch/autograd.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/any.h>
#include <torch/serialize.h>

#include <mhsa/mhsa.h>

#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "reference.h"

namespace mhsa_test {
namespace {

std::vector<std::string> parameter_names(const torch::nn::Module& m) {
  return m.named_parameters().keys();
}

struct Case {
  int64_t embed_dim = 16, num_heads = 4;
  int64_t L = 5, S = 7, N = 3;
  int64_t kdim = 16, vdim = 16;  // vdim <= kdim (LibTorch needs key and value of one shape)
  bool bias = true, add_bias_kv = false, add_zero_attn = false;
  bool average_attn_weights = true;
  bool self_attention = false;  // query, key and value the same tensor
};

mhsa::MultiheadAttentionOptions mhsa_options(const Case& c) {
  return mhsa::MultiheadAttentionOptions(c.embed_dim, c.num_heads)
      .bias(c.bias)
      .add_bias_kv(c.add_bias_kv)
      .add_zero_attn(c.add_zero_attn)
      .kdim(c.kdim)
      .vdim(c.vdim);
}

// LibTorch's functional asserts key.sizes() == value.sizes(), so for vdim < kdim the reference
// gets vdim = kdim, the value zero-padded to kdim features and v_proj_weight's extra columns
// zero: the same projection.
torch::nn::MultiheadAttentionOptions torch_options(const Case& c) {
  return torch::nn::MultiheadAttentionOptions(c.embed_dim, c.num_heads)
      .bias(c.bias)
      .add_bias_kv(c.add_bias_kv)
      .add_zero_attn(c.add_zero_attn)
      .kdim(c.kdim)
      .vdim(c.kdim);
}

// The reference's parameters (non-zero biases), copied by name into m.
void copy_parameters(torch::nn::MultiheadAttention& ref, mhsa::MultiheadAttention& m,
                     const Case& c) {
  at::NoGradGuard no_grad;
  if (ref->in_proj_bias.defined()) ref->in_proj_bias.normal_();
  if (ref->out_proj->bias.defined()) ref->out_proj->bias.normal_();
  if (ref->v_proj_weight.defined()) ref->v_proj_weight.narrow(1, c.vdim, c.kdim - c.vdim).zero_();
  auto params = m->named_parameters();
  ASSERT_EQ(params.size(), ref->named_parameters().size());
  for (const auto& p : ref->named_parameters()) {
    ASSERT_TRUE(params.contains(p.key())) << p.key();
    at::Tensor& dst = params[p.key()];
    dst.copy_(p.key() == "v_proj_weight" ? p.value().narrow(1, 0, c.vdim) : p.value());
  }
}

// Bool masks (true = may not attend) that never hide key 0, and LibTorch's additive form.
struct Masks {
  at::Tensor key_padding, attn_bool, attn_float;
};
Masks make_masks(const Case& c) {
  Masks m;
  m.key_padding = at::rand({c.N, c.S}) < 0.3;
  m.key_padding.select(1, 0).fill_(false);
  m.attn_bool = at::rand({c.L, c.S}) < 0.3;
  m.attn_bool.select(1, 0).fill_(false);
  m.attn_float = at::zeros({c.L, c.S}, at::kDouble)
                     .masked_fill(m.attn_bool, -std::numeric_limits<double>::infinity());
  return m;
}

void expect_parity(const Case& c) {
  ASSERT_LE(c.vdim, c.kdim);
  torch::manual_seed(0);
  torch::nn::MultiheadAttention ref(torch_options(c));
  mhsa::MultiheadAttention m(mhsa_options(c));
  ref->to(at::kDouble);
  m->to(at::kDouble);
  copy_parameters(ref, m, c);

  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q0 = at::randn({c.L, c.N, c.embed_dim}, f64);
  const at::Tensor k0 = c.self_attention ? q0 : at::randn({c.S, c.N, c.kdim}, f64);
  const at::Tensor v0 = c.self_attention ? q0 : at::randn({c.S, c.N, c.vdim}, f64);
  const Masks masks = make_masks(c);

  // Separate leaves for the two modules; with self_attention one leaf for all three.
  const at::Tensor q = q0.clone().requires_grad_(true);
  const at::Tensor k = c.self_attention ? q : k0.clone().requires_grad_(true);
  const at::Tensor v = c.self_attention ? q : v0.clone().requires_grad_(true);
  const at::Tensor rq = q0.clone().requires_grad_(true);
  const at::Tensor rk = c.self_attention ? rq : k0.clone().requires_grad_(true);
  const at::Tensor rv = c.self_attention ? rq : v0.clone().requires_grad_(true);
  const at::Tensor rv_padded = at::constant_pad_nd(rv, {0, c.kdim - c.vdim}, 0);

  auto [out, w] =
      m(q, k, v, masks.key_padding, /*need_weights=*/true, masks.attn_bool, c.average_attn_weights);
  auto [ref_out, ref_w] = ref(rq, rk, rv_padded, masks.key_padding, /*need_weights=*/true,
                              masks.attn_float, c.average_attn_weights);
  EXPECT_TRUE(all_close(out, ref_out, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));

  const at::Tensor grad_out = at::randn(out.sizes(), f64), grad_w = at::randn(w.sizes(), f64);
  ((out * grad_out).sum() + (w * grad_w).sum()).backward();
  ((ref_out * grad_out).sum() + (ref_w * grad_w).sum()).backward();
  EXPECT_TRUE(all_close(q.grad(), rq.grad(), tolerance(at::kDouble))) << "query";
  if (!c.self_attention) {
    EXPECT_TRUE(all_close(k.grad(), rk.grad(), tolerance(at::kDouble))) << "key";
    EXPECT_TRUE(all_close(v.grad(), rv.grad(), tolerance(at::kDouble))) << "value";
  }
  auto ref_params = ref->named_parameters();
  for (const auto& p : m->named_parameters()) {
    at::Tensor expected = ref_params[p.key()].grad();
    ASSERT_TRUE(expected.defined()) << p.key();
    if (p.key() == "v_proj_weight") expected = expected.narrow(1, 0, c.vdim);
    EXPECT_TRUE(all_close(p.value().grad(), expected, tolerance(at::kDouble))) << p.key();
  }
}

TEST(MultiheadAttentionModule, ParityCrossAttention) { expect_parity(Case{}); }

TEST(MultiheadAttentionModule, ParitySelfAttention) {
  Case c;
  c.S = c.L;
  c.self_attention = true;
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParityPerHeadWeights) {
  Case c;
  c.average_attn_weights = false;
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParityKdimVdim) {
  Case c;
  c.kdim = c.vdim = 12;  // separate projections, key and value of one width
  expect_parity(c);
  c.vdim = 6;  // key and value widths differ
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParityAddBiasKv) {
  Case c;
  c.add_bias_kv = true;
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParityAddZeroAttn) {
  Case c;
  c.add_zero_attn = true;
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParityEverythingAtOnce) {
  Case c;
  c.kdim = 10;
  c.vdim = 8;
  c.add_bias_kv = true;
  c.add_zero_attn = true;
  c.average_attn_weights = false;
  expect_parity(c);
  c.bias = false;
  expect_parity(c);
}

TEST(MultiheadAttentionModule, ParameterNamesMatchLibTorch) {
  for (bool bias : {true, false}) {
    for (bool add_bias_kv : {false, true}) {
      for (bool add_zero_attn : {false, true}) {
        for (auto [kdim, vdim] :
             std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {6, 6}, {8, 4}, {4, 8}, {5, 3}}) {
          Case c;
          c.embed_dim = 8;
          c.num_heads = 2;
          c.kdim = kdim;
          c.vdim = vdim;
          c.bias = bias;
          c.add_bias_kv = add_bias_kv;
          c.add_zero_attn = add_zero_attn;
          mhsa::MultiheadAttention m(mhsa_options(c));
          torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(8, 2)
                                                .bias(bias)
                                                .add_bias_kv(add_bias_kv)
                                                .add_zero_attn(add_zero_attn)
                                                .kdim(kdim)
                                                .vdim(vdim));
          const std::string where =
              "bias=" + std::to_string(bias) + " add_bias_kv=" + std::to_string(add_bias_kv) +
              " add_zero_attn=" + std::to_string(add_zero_attn) + " kdim=" + std::to_string(kdim) +
              " vdim=" + std::to_string(vdim);
          EXPECT_EQ(parameter_names(*m), parameter_names(*ref)) << where;
          auto ref_params = ref->named_parameters();
          for (const auto& p : m->named_parameters()) {
            EXPECT_EQ(p.value().sizes(), ref_params[p.key()].sizes()) << where << " " << p.key();
            EXPECT_TRUE(p.value().requires_grad()) << where << " " << p.key();
          }
          EXPECT_EQ(m->qkv_same_embed_dim(), kdim == 8 && vdim == 8) << where;
        }
      }
    }
  }
  // The public members are the registered tensors.
  mhsa::MultiheadAttention packed(mhsa::MultiheadAttentionOptions(8, 2).add_bias_kv(true));
  auto params = packed->named_parameters();
  EXPECT_TRUE(params["in_proj_weight"].is_same(packed->in_proj_weight));
  EXPECT_TRUE(params["bias_k"].is_same(packed->bias_k));
  EXPECT_FALSE(packed->q_proj_weight.defined());
  mhsa::MultiheadAttention separate(mhsa::MultiheadAttentionOptions(8, 2).kdim(4));
  params = separate->named_parameters();
  EXPECT_TRUE(params["k_proj_weight"].is_same(separate->k_proj_weight));
  EXPECT_FALSE(separate->in_proj_weight.defined());
  EXPECT_FALSE(separate->bias_k.defined());
}

TEST(MultiheadAttentionModule, Initialization) {
  torch::manual_seed(0);
  mhsa::MultiheadAttention m(
      mhsa::MultiheadAttentionOptions(16, 4).kdim(8).vdim(24).add_bias_kv(true));
  // xavier_uniform_ on each (E, in) projection: bound sqrt(6 / (E + in)).
  for (auto [weight, fan_in] : std::vector<std::pair<at::Tensor, int64_t>>{
           {m->q_proj_weight, 16}, {m->k_proj_weight, 8}, {m->v_proj_weight, 24}}) {
    const double bound = std::sqrt(6.0 / (16 + fan_in));
    EXPECT_LE(weight.abs().max().item<double>(), bound) << fan_in;
    EXPECT_GT(weight.abs().max().item<double>(), 0.5 * bound) << fan_in;
  }
  EXPECT_EQ(m->in_proj_bias.abs().max().item<double>(), 0.0);
  EXPECT_EQ(m->out_proj->bias.abs().max().item<double>(), 0.0);
  EXPECT_GT(m->out_proj->weight.abs().max().item<double>(), 0.0);
  EXPECT_GT(m->bias_k.abs().max().item<double>(), 0.0);  // xavier_normal_
  EXPECT_GT(m->bias_v.abs().max().item<double>(), 0.0);
  mhsa::MultiheadAttention packed(16, 4);
  const double bound = std::sqrt(6.0 / (16 + 48));
  EXPECT_LE(packed->in_proj_weight.abs().max().item<double>(), bound);
  EXPECT_GT(packed->in_proj_weight.abs().max().item<double>(), 0.5 * bound);
}

TEST(MultiheadAttentionModule, BatchFirstMatchesTransposedInputs) {
  torch::manual_seed(0);
  const auto options =
      mhsa::MultiheadAttentionOptions(16, 4).kdim(12).vdim(6).add_bias_kv(true).add_zero_attn(true);
  mhsa::MultiheadAttention seq_first(options);
  mhsa::MultiheadAttention batch_first(mhsa::MultiheadAttentionOptions(options).batch_first(true));
  seq_first->to(at::kDouble);
  batch_first->to(at::kDouble);
  {
    at::NoGradGuard no_grad;
    auto dst = batch_first->named_parameters();
    for (const auto& p : seq_first->named_parameters()) dst[p.key()].copy_(p.value());
  }
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({3, 5, 16}, f64).requires_grad_(true);  // (N, L, E)
  const at::Tensor k = at::randn({3, 7, 12}, f64).requires_grad_(true);
  const at::Tensor v = at::randn({3, 7, 6}, f64).requires_grad_(true);
  const at::Tensor kpm = at::rand({3, 7}) < 0.3, mask = at::rand({5, 7}) < 0.3;
  auto [out, w] = batch_first(q, k, v, kpm, true, mask);
  EXPECT_EQ(out.sizes(), q.sizes());
  EXPECT_EQ(w.sizes(), (at::IntArrayRef{3, 5, 7 + 2}));
  const at::Tensor tq = q.detach().transpose(0, 1).requires_grad_(true);
  const at::Tensor tk = k.detach().transpose(0, 1).requires_grad_(true);
  const at::Tensor tv = v.detach().transpose(0, 1).requires_grad_(true);
  auto [tout, tw] = seq_first(tq, tk, tv, kpm, true, mask);
  EXPECT_TRUE(all_close(out, tout.transpose(0, 1), tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, tw, tolerance(at::kDouble)));
  out.pow(2).sum().backward();
  tout.pow(2).sum().backward();
  EXPECT_TRUE(all_close(q.grad(), tq.grad().transpose(0, 1), tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(k.grad(), tk.grad().transpose(0, 1), tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(v.grad(), tv.grad().transpose(0, 1), tolerance(at::kDouble)));
  auto seq_params = seq_first->named_parameters();
  for (const auto& p : batch_first->named_parameters()) {
    EXPECT_TRUE(all_close(p.value().grad(), seq_params[p.key()].grad(), tolerance(at::kDouble)))
        << p.key();
  }
  // Unbatched (L, E) inputs: batch_first does not apply.
  auto [uout, uw] = batch_first(q[1], k[1], v[1]);
  auto [bout, bw] = batch_first(q.narrow(0, 1, 1), k.narrow(0, 1, 1), v.narrow(0, 1, 1));
  EXPECT_EQ(uout.sizes(), (at::IntArrayRef{5, 16}));
  EXPECT_TRUE(all_close(uout, bout[0], tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(uw, bw[0], tolerance(at::kDouble)));
}

TEST(MultiheadAttentionModule, ForwardMatchesFunctionalWithCausalAndWindow) {
  torch::manual_seed(0);
  mhsa::MultiheadAttention m(mhsa::MultiheadAttentionOptions(8, 2).kdim(4).vdim(4));
  const at::Tensor q = at::randn({6, 2, 8}), k = at::randn({6, 2, 4}), v = at::randn({6, 2, 4});
  const std::array<int64_t, 2> window{2, 0};
  auto [out, w] = m(q, k, v, at::Tensor(), true, at::Tensor(), false, /*is_causal=*/true, window);
  auto [fout, fw] = mhsa::multi_head_attention(
      q, k, v, 2, std::nullopt, m->in_proj_bias, m->q_proj_weight, m->k_proj_weight,
      m->v_proj_weight, std::nullopt, std::nullopt, false, m->out_proj->weight, m->out_proj->bias,
      0.0, true, false, std::nullopt, true, std::nullopt, false, true, window);
  EXPECT_TRUE(at::equal(out, fout));
  EXPECT_TRUE(at::equal(w, fw));
  // Query 4 sees keys 2..4 only.
  EXPECT_EQ(w.select(2, 4).narrow(-1, 0, 2).abs().max().item<double>(), 0.0);
  EXPECT_EQ(w.select(2, 4).narrow(-1, 5, 1).abs().max().item<double>(), 0.0);
}

TEST(MultiheadAttentionModule, DefaultArgumentsNeedWeightsAndAnyModule) {
  mhsa::MultiheadAttention m(mhsa::MultiheadAttentionOptions(8, 2).kdim(6).vdim(6));
  const at::Tensor q = at::randn({4, 2, 8}), kv = at::randn({5, 2, 6});
  auto [out, w] = m(q, kv, kv);
  EXPECT_EQ(out.sizes(), q.sizes());
  EXPECT_EQ(w.sizes(), (at::IntArrayRef{2, 4, 5}));
  auto [out2, w2] = m(q, kv, kv, at::Tensor(), /*need_weights=*/false);
  EXPECT_TRUE(all_close(out, out2, tolerance(at::kFloat)));
  EXPECT_FALSE(w2.defined());
  // AnyModule (and so Sequential) needs FORWARD_HAS_DEFAULT_ARGS for the optional arguments.
  torch::nn::AnyModule any(m);
  auto [out3, w3] = any.forward<std::tuple<at::Tensor, at::Tensor>>(q, kv, kv);
  EXPECT_TRUE(at::equal(out, out3));
  EXPECT_TRUE(at::equal(w, w3));
}

TEST(MultiheadAttentionModule, DropoutOnlyInTraining) {
  torch::manual_seed(0);
  mhsa::MultiheadAttention m(mhsa::MultiheadAttentionOptions(16, 4).dropout(0.5));
  const at::Tensor q = at::randn({8, 2, 16}), k = at::randn({10, 2, 16}),
                   v = at::randn({10, 2, 16});
  auto [t1, tw1] = m(q, k, v);
  auto [t2, tw2] = m(q, k, v);
  EXPECT_FALSE(at::equal(t1, t2)) << "each training call draws a new dropout mask";
  EXPECT_GT((tw1 == 0).sum().item<int64_t>(), 0);
  m->eval();
  auto [e1, ew1] = m(q, k, v);
  auto [e2, ew2] = m(q, k, v);
  EXPECT_TRUE(at::equal(e1, e2));
  EXPECT_EQ((ew1 == 0).sum().item<int64_t>(), 0);
}

TEST(MultiheadAttentionModule, StateDictsLoadBothWaysWithLibTorch) {
  for (int64_t kdim : {8, 5}) {
    const auto opts =
        torch::nn::MultiheadAttentionOptions(8, 2).kdim(kdim).vdim(kdim).add_bias_kv(true);
    torch::nn::MultiheadAttention ref(opts);
    mhsa::MultiheadAttention m(
        mhsa::MultiheadAttentionOptions(8, 2).kdim(kdim).vdim(kdim).add_bias_kv(true));
    std::stringstream to_mhsa;
    torch::save(ref, to_mhsa);
    torch::load(m, to_mhsa);
    auto loaded = m->named_parameters();
    for (const auto& p : ref->named_parameters()) {
      EXPECT_TRUE(at::equal(p.value(), loaded[p.key()])) << kdim << " " << p.key();
    }
    torch::nn::MultiheadAttention back(opts);
    std::stringstream to_torch;
    torch::save(m, to_torch);
    torch::load(back, to_torch);
    auto reloaded = back->named_parameters();
    for (const auto& p : m->named_parameters()) {
      EXPECT_TRUE(at::equal(p.value(), reloaded[p.key()])) << kdim << " " << p.key();
    }
  }
}

TEST(MultiheadAttentionModule, CloneIsIndependent) {
  mhsa::MultiheadAttention m(mhsa::MultiheadAttentionOptions(8, 2).kdim(4).add_bias_kv(true));
  auto copy = std::dynamic_pointer_cast<mhsa::MultiheadAttentionImpl>(m->clone());
  ASSERT_TRUE(copy);
  EXPECT_EQ(parameter_names(*copy), parameter_names(*m));
  const at::Tensor q = at::randn({4, 2, 8}), k = at::randn({3, 2, 4}), v = at::randn({3, 2, 8});
  EXPECT_TRUE(at::equal(std::get<0>(m(q, k, v)), std::get<0>(copy->forward(q, k, v))));
  EXPECT_FALSE(copy->k_proj_weight.is_same(m->k_proj_weight));
  {
    at::NoGradGuard no_grad;
    copy->bias_k.add_(1.0);
  }
  EXPECT_FALSE(at::equal(copy->bias_k, m->bias_k));
}

}  // namespace
}  // namespace mhsa_test
