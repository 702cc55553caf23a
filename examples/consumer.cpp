// Minimal use of mhsa from C++: the functional op and the module, forward and backward.
#include <torch/torch.h>

#include <mhsa/module.h>
#include <mhsa/ops.h>

#include <cmath>
#include <iostream>

int main() {
  torch::manual_seed(0);
  const int64_t N = 4, L = 10, E = 32, H = 4;

  // 1. The functional op with explicit weights: (N, L, E) input with batch_first, causal.
  const double scale = 1.0 / std::sqrt(static_cast<double>(E));
  auto x = torch::randn({N, L, E}, torch::requires_grad());
  auto in_proj_weight = (torch::randn({3 * E, E}) * scale).requires_grad_();
  auto in_proj_bias = torch::zeros({3 * E}, torch::requires_grad());
  auto out_proj_weight = (torch::randn({E, E}) * scale).requires_grad_();
  auto out_proj_bias = torch::zeros({E}, torch::requires_grad());

  auto [out, weights] = mhsa::multi_head_self_attention(
      x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, H,
      /*dropout_p=*/0.0, /*training=*/true, /*batch_first=*/true,
      /*key_padding_mask=*/std::nullopt, /*need_weights=*/true, /*attn_mask=*/std::nullopt,
      /*average_attn_weights=*/true, /*is_causal=*/true);
  out.pow(2).mean().backward();
  std::cout << "functional: output " << out.sizes() << ", weights " << weights.sizes()
            << ", |d loss / d x| = " << x.grad().norm().item<double>()
            << ", |d loss / d in_proj_weight| = " << in_proj_weight.grad().norm().item<double>()
            << "\n";

  // 2. The module (same parameter names as torch::nn::MultiheadAttention), with padding:
  //    the last 3 positions of sequence 0 are padding that no query may attend to.
  mhsa::MultiheadSelfAttention attn(
      mhsa::MultiheadSelfAttentionOptions(E, H).batch_first(true).dropout(0.1));
  auto key_padding_mask = torch::zeros({N, L}, torch::kBool);
  key_padding_mask.index_put_({0, torch::indexing::Slice(L - 3)}, true);
  auto y_in = torch::randn({N, L, E}, torch::requires_grad());
  auto [y, y_weights] = attn(y_in, key_padding_mask);
  y.sum().backward();
  std::cout << "module:     output " << y.sizes() << ", weights " << y_weights.sizes() << "\n";
  bool finite = torch::isfinite(y).all().item<bool>();
  for (const auto& p : attn->named_parameters()) {
    const double norm = p.value().grad().norm().item<double>();
    finite = finite && std::isfinite(norm);
    std::cout << "  grad norm " << p.key() << " = " << norm << "\n";
  }
  std::cout << "  grad norm input = " << y_in.grad().norm().item<double>() << "\n";

  // Evaluation mode: no dropout, no autograd graph.
  attn->eval();
  torch::NoGradGuard no_grad;
  auto [y_eval, unused] = attn(y_in, key_padding_mask, /*need_weights=*/false);
  std::cout << "eval:       output " << y_eval.sizes() << "\n";

  if (!finite) {
    std::cerr << "non-finite values\n";
    return 1;
  }
  return 0;
}
