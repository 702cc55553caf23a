#pragma once
// The workload of the leak checks: one round of forward + backward calls through every path
// of the library (each dtype, every mask form, causal, dropout, the three weight options,
// unbatched input, the C++ module, the raw mha_forward / mha_backward ops, refused double
// backward and bad inputs that throw), run by test_leaks.cpp: under LeakSanitizer in the
// sanitizer build (scripts/sanitize.sh), for resident-memory growth in the release build.
#include <torch/autograd.h>

#include <mhsa/internal_ops.h>
#include <mhsa/mhsa.h>
#include <mhsa/module.h>

#include <c10/util/Exception.h>

#include <limits>

namespace mhsa_leak {

inline at::Tensor bool_mask(at::IntArrayRef shape) {
  at::Tensor m = at::rand(shape) < 0.3;
  m.select(-1, 0).fill_(false);
  return m;
}

inline at::Tensor float_mask(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::randn(shape, at::TensorOptions().dtype(dtype))
      .masked_fill(bool_mask(shape), -std::numeric_limits<double>::infinity());
}

// One forward + backward through mhsa::multi_head_self_attention; returns a checksum so the
// work cannot be optimized away.
inline double forward_backward(at::ScalarType dtype, int64_t L, int64_t N, int64_t E, int64_t H,
                               int variant) {
  const auto opts = at::TensorOptions().dtype(dtype);
  at::Tensor x = at::randn({L, N, E}, opts).requires_grad_();
  at::Tensor w_in = (at::randn({3 * E, E}, opts) / 8).requires_grad_();
  at::Tensor b_in = at::randn({3 * E}, opts).requires_grad_();
  at::Tensor w_out = (at::randn({E, E}, opts) / 8).requires_grad_();
  at::Tensor b_out = at::randn({E}, opts).requires_grad_();
  std::optional<at::Tensor> am, kpm;
  double dropout = 0.0;
  bool need_weights = true, average = true, causal = false;
  switch (variant % 6) {
    case 0:
      am = bool_mask({L, L});
      kpm = bool_mask({N, L});
      break;
    case 1:
      am = float_mask({N * H, L, L}, dtype);
      average = false;
      break;
    case 2:
      kpm = float_mask({N, L}, dtype);
      causal = true;
      need_weights = false;
      break;
    case 3:
      dropout = 0.2;
      average = false;
      am = bool_mask({N * H, L, L});
      break;
    case 4:
      dropout = 0.2;
      causal = true;
      break;
    default:  // a fully masked batch (zero attention rows)
      kpm = at::zeros({N, L}, at::kBool);
      kpm->select(0, 0).fill_(true);
      break;
  }
  auto [out, w] = mhsa::multi_head_self_attention(x, w_in, b_in, w_out, b_out, H, dropout, true,
                                                  false, kpm, need_weights, am, average, causal);
  at::Tensor loss = out.to(at::kFloat).square().sum();
  if (w.defined()) loss = loss + w.to(at::kFloat).sum();
  const auto grads = torch::autograd::grad({loss}, {x, w_in, b_in, w_out, b_out});
  double sum = 0;
  for (const auto& g : grads) sum += g.to(at::kDouble).abs().sum().item<double>();
  return sum;
}

inline double run_round(int round) {
  double checksum = 0;
  int variant = round;
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (int v = 0; v < 6; ++v) checksum += forward_backward(dtype, 70, 2, 32, 4, variant++);
  }
  // A longer sequence: several tiles in both directions.
  checksum += forward_backward(at::kFloat, 300, 1, 32, 2, round);

  // Unbatched, through the C++ module, with the per-head weights.
  {
    mhsa::MultiheadSelfAttention attn(mhsa::MultiheadSelfAttentionOptions(16, 4).dropout(0.1));
    at::Tensor x = at::randn({9, 16}).requires_grad_();
    auto [out, w] = attn->forward(x, {}, true, {}, false, true);
    (out.sum() + w.sum()).backward();
    checksum += x.grad().abs().sum().item<double>();
  }

  // The raw ops, with only some gradients requested.
  {
    at::Tensor x = at::randn({2, 20, 16});
    at::Tensor w_in = at::randn({48, 16}), w_out = at::randn({16, 16});
    mhsa::internal::AttentionOptions options;
    options.num_heads = 2;
    options.batch_first = true;
    options.is_causal = true;
    options.dropout_p = 0.1;
    auto [out, w, qkv, ctx, lse, rng] = mhsa::internal::mha_forward(
        x, w_in, std::nullopt, w_out, std::nullopt, options, /*need_weights=*/true);
    auto grads =
        mhsa::internal::mha_backward(at::ones_like(out), at::ones_like(w), x, w_in, w_out, qkv, ctx,
                                     lse, rng, options, {true, false, true, true, false});
    checksum += std::get<0>(grads).abs().sum().item<double>();
  }

  // Errors: a bad input, and the refused double backward, each throw c10::Error.
  {
    at::Tensor x = at::randn({5, 2, 8});
    try {
      mhsa::multi_head_self_attention(x, at::randn({24, 8}), std::nullopt, at::randn({8, 8}),
                                      std::nullopt, 3);
    } catch (const c10::Error&) {
      checksum += 1;
    }
    at::Tensor q = x.clone().requires_grad_();
    at::Tensor w_in = at::randn({24, 8}).requires_grad_();
    auto [out, w] =
        mhsa::multi_head_self_attention(q, w_in, std::nullopt, at::randn({8, 8}), std::nullopt, 2);
    auto g = torch::autograd::grad({out.pow(2).sum()}, {q}, {}, true, true);
    try {
      torch::autograd::grad({g[0].sum()}, {q});
    } catch (const c10::Error&) {
      checksum += 1;
    }
  }
  return checksum;
}

}  // namespace mhsa_leak
