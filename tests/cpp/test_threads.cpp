// Thread safety: several std::threads call mhsa at the same time, each with its own inputs,
// masks and flags (and some sharing read-only inputs), forward and backward. Every result is
// bitwise identical to the same call made alone before the threads start, and matches the ATen
// reference. With dropout (whose seed each call draws from the shared default generator, in an
// order that depends on scheduling) every call must be consistent with the weights it returns.
#include <torch/autograd.h>

#include <mhsa/ops.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "reference.h"

namespace mhsa_test {
namespace {

struct Config {
  std::vector<int64_t> shape;  // of the query
  int64_t heads;
  at::ScalarType dtype;
  bool batch_first = false;
  bool attn_mask = false, attn_mask_3d = false, float_masks = false;
  bool key_padding_mask = false;
  bool is_causal = false;
  bool need_weights = true, average = true;
};

struct Results {
  std::vector<at::Tensor> tensors;  // output, weights (if any), gradients
};

Args make_config_args(const Config& c, int seed) {
  at::manual_seed(seed);
  Args a = make_args(c.shape, c.heads, c.dtype);
  a.batch_first = c.batch_first;
  a.is_causal = c.is_causal;
  a.need_weights = c.need_weights;
  a.average_attn_weights = c.average;
  const bool unbatched = c.shape.size() == 2;
  const int64_t L = unbatched ? c.shape[0] : (c.batch_first ? c.shape[1] : c.shape[0]);
  const int64_t N = unbatched ? 1 : (c.batch_first ? c.shape[0] : c.shape[1]);
  auto mask = [&](at::IntArrayRef shape) {
    at::Tensor m = at::rand(shape) < 0.3;
    m.select(-1, 0).fill_(false);  // key 0 stays visible: no fully masked row
    if (!c.float_masks) return m;
    return at::randn(shape, at::TensorOptions().dtype(c.dtype))
        .masked_fill(m, -std::numeric_limits<double>::infinity());
  };
  if (c.attn_mask) {
    a.attn_mask = c.attn_mask_3d ? mask({N * c.heads, L, L}) : mask({L, L});
  }
  if (c.key_padding_mask) {
    a.key_padding_mask = unbatched ? mask({L}) : mask({N, L});
  }
  return a;
}

Results call(const Args& a, const at::Tensor& g_out, const at::Tensor& g_w) {
  auto [out, w] = mhsa::multi_head_self_attention(
      a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, a.num_heads,
      0.0, true, a.batch_first, a.key_padding_mask, a.need_weights, a.attn_mask,
      a.average_attn_weights, a.is_causal);
  at::Tensor loss = (out * g_out).sum();
  if (w.defined()) loss = loss + (w * g_w).sum();
  Results r;
  r.tensors.push_back(out.detach());
  if (w.defined()) r.tensors.push_back(w.detach());
  for (const auto& g : torch::autograd::grad({loss}, a.differentiable())) r.tensors.push_back(g);
  return r;
}

std::vector<Config> configs() {
  std::vector<Config> cs;
  cs.push_back({{70, 2, 32}, 4, at::kFloat, false, true, false, false, false, false, true, true});
  cs.push_back({{2, 130, 16}, 2, at::kDouble, true, false, false, true, true, true, true, false});
  cs.push_back({{9, 3, 24}, 3, at::kFloat, false, true, true, true, true, false, false, true});
  cs.push_back({{257, 2, 16}, 4, at::kFloat, false, false, false, false, false, true, false, true});
  cs.push_back({{33, 16}, 16, at::kDouble, false, true, true, false, true, true, true, false});
  cs.push_back({{4, 64, 64}, 8, at::kBFloat16, true, true, false, false, true, false, true, true});
  return cs;
}

TEST(Threads, ConcurrentCallsMatchSingleThreadedResults) {
  const auto cs = configs();
  std::vector<Args> args;
  std::vector<at::Tensor> g_out, g_w;
  std::vector<Results> expected;
  for (size_t i = 0; i < cs.size(); ++i) {
    args.push_back(make_config_args(cs[i], static_cast<int>(100 + i)));
    auto [ref_out, ref_w] = reference_mhsa(args.back());
    g_out.push_back(at::randn_like(ref_out));
    g_w.push_back(ref_w.defined() ? at::randn_like(ref_w) : at::Tensor());
    expected.push_back(call(args[i], g_out[i], g_w[i]));
    // The single-threaded results are right to begin with (bfloat16: see test_ops.cpp).
    if (cs[i].dtype == at::kBFloat16) continue;
    EXPECT_TRUE(all_close(expected[i].tensors[0], ref_out, tolerance(cs[i].dtype)))
        << "config " << i << " output vs reference";
    if (ref_w.defined()) {
      EXPECT_TRUE(all_close(expected[i].tensors[1], ref_w, tolerance(cs[i].dtype)))
          << "config " << i << " weights vs reference";
    }
  }

  constexpr int kRounds = 6;
  constexpr int kThreadsPerConfig = 2;  // two threads run each config (sharing its inputs)
  std::atomic<int> ready{0};
  const int total = static_cast<int>(cs.size()) * kThreadsPerConfig;
  std::vector<std::vector<Results>> got(total);
  std::vector<std::string> errors(total);
  std::vector<std::thread> threads;
  for (int t = 0; t < total; ++t) {
    threads.emplace_back([&, t] {
      const size_t i = static_cast<size_t>(t) % cs.size();
      ready.fetch_add(1);
      while (ready.load() < total) std::this_thread::yield();  // start together
      try {
        for (int r = 0; r < kRounds; ++r) got[t].push_back(call(args[i], g_out[i], g_w[i]));
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();

  for (int t = 0; t < total; ++t) {
    const size_t i = static_cast<size_t>(t) % cs.size();
    ASSERT_TRUE(errors[t].empty()) << "thread " << t << ": " << errors[t];
    ASSERT_EQ(got[t].size(), static_cast<size_t>(kRounds));
    for (int r = 0; r < kRounds; ++r) {
      const auto& a = got[t][r].tensors;
      const auto& e = expected[i].tensors;
      ASSERT_EQ(a.size(), e.size());
      for (size_t k = 0; k < a.size(); ++k) {
        EXPECT_TRUE(at::equal(a[k], e[k]))
            << "thread " << t << " (config " << i << "), round " << r << ", result " << k
            << " differs from the single-threaded call";
      }
    }
  }
}

TEST(Threads, ConcurrentDropoutCallsAreSelfConsistent) {
  // out = out_proj(W V) for the per-head weights W (after dropout) each call returns.
  constexpr int64_t L = 40, N = 2, E = 16, H = 4, D = E / H;
  at::manual_seed(7);
  const Args a = make_args({L, N, E}, H, at::kDouble, /*bias=*/true, /*requires_grad=*/false);
  constexpr int kThreads = 4, kRounds = 6;
  const Tol tol = tolerance(at::kDouble, Kind::kFromWeights);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int r = 0; r < kRounds; ++r) {
          auto [out, w] = mhsa::multi_head_self_attention(
              a.query, a.in_proj_weight, a.in_proj_bias, a.out_proj_weight, a.out_proj_bias, H,
              /*dropout_p=*/0.3, /*training=*/true, false, std::nullopt, true, std::nullopt,
              /*average_attn_weights=*/false, false);
          const at::Tensor v = at::linear(a.query, a.in_proj_weight.slice(0, 2 * E),
                                          a.in_proj_bias->slice(0, 2 * E));     // (L, N, E)
          const at::Tensor vh = v.reshape({L, N, H, D}).permute({1, 2, 0, 3});  // (N, H, L, D)
          const at::Tensor ctx = at::matmul(w, vh).permute({2, 0, 1, 3}).reshape({L, N, E});
          const at::Tensor expected = at::linear(ctx, a.out_proj_weight, a.out_proj_bias);
          if (!at::allclose(out, expected, tol.rtol, tol.atol)) {
            errors[t] = "output != out_proj(W V)";
          }
          if (!w.eq(0).any().item<bool>()) errors[t] = "dropout dropped nothing";
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t)
    EXPECT_TRUE(errors[t].empty()) << "thread " << t << ": " << errors[t];
}

}  // namespace
}  // namespace mhsa_test
