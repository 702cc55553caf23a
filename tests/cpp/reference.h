#pragma once
// Shared helpers of the GoogleTest suite: a reference multi-head self-attention written with
// plain ATen ops (autograd differentiates it, so it also supplies the reference gradients),
// random inputs, and assertion helpers.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace mhsa_test {

// Arguments of one call, in the order of mhsa::multi_head_self_attention.
struct Args {
  at::Tensor query;
  at::Tensor in_proj_weight;
  std::optional<at::Tensor> in_proj_bias;
  at::Tensor out_proj_weight;
  std::optional<at::Tensor> out_proj_bias;
  int64_t num_heads = 1;
  bool batch_first = false;
  std::optional<at::Tensor> key_padding_mask;
  bool need_weights = true;
  std::optional<at::Tensor> attn_mask;
  bool average_attn_weights = true;
  bool is_causal = false;

  // The differentiable tensors: query and the (up to) 4 parameters.
  std::vector<at::Tensor> differentiable() const {
    std::vector<at::Tensor> v{query, in_proj_weight};
    if (in_proj_bias) v.push_back(*in_proj_bias);
    v.push_back(out_proj_weight);
    if (out_proj_bias) v.push_back(*out_proj_bias);
    return v;
  }
};

// Random inputs for a query of the given shape ((L, N, E), (N, L, E) or (L, E)).
inline Args make_args(at::IntArrayRef query_shape, int64_t num_heads, at::ScalarType dtype,
                      bool bias = true, bool requires_grad = true) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const int64_t E = query_shape.back();
  Args a;
  a.query = at::randn(query_shape, opts);
  a.in_proj_weight = at::randn({3 * E, E}, opts) / std::sqrt(static_cast<double>(E));
  a.out_proj_weight = at::randn({E, E}, opts) / std::sqrt(static_cast<double>(E));
  if (bias) {
    a.in_proj_bias = at::randn({3 * E}, opts) * 0.1;
    a.out_proj_bias = at::randn({E}, opts) * 0.1;
  }
  a.num_heads = num_heads;
  if (requires_grad) {
    a.query.requires_grad_(true);
    a.in_proj_weight.requires_grad_(true);
    a.out_proj_weight.requires_grad_(true);
    if (bias) {
      a.in_proj_bias->requires_grad_(true);
      a.out_proj_bias->requires_grad_(true);
    }
  }
  return a;
}

// nn.MultiheadAttention's self-attention math with query = key = value, step by step, with
// mhsa's documented differences: is_causal adds its own causal mask (combined with attn_mask),
// and a query whose keys are all masked gets zero attention (output = out_proj bias) and zero
// weights instead of NaN. No dropout.
inline std::tuple<at::Tensor, at::Tensor> reference_mhsa(const Args& a) {
  const bool unbatched = a.query.dim() == 2;
  at::Tensor x = unbatched ? a.query.unsqueeze(1) : a.query;  // (L, 1, E)
  if (a.batch_first && !unbatched) x = x.transpose(0, 1);     // -> (L, N, E)
  const int64_t L = x.size(0), N = x.size(1), E = x.size(2), H = a.num_heads, D = E / H;

  // In-projection, then heads: (L, N, E) -> (L, N*H, D) -> (N*H, L, D); row b = n * H + h.
  const at::Tensor qkv = at::linear(x, a.in_proj_weight, a.in_proj_bias);
  const auto chunks = qkv.chunk(3, -1);
  auto heads = [&](const at::Tensor& t) { return t.reshape({L, N * H, D}).transpose(0, 1); };
  const at::Tensor q = heads(chunks[0]), k = heads(chunks[1]), v = heads(chunks[2]);

  at::Tensor scores = at::bmm(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(D));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (a.attn_mask) {
    const at::Tensor& m = *a.attn_mask;  // (L, L) or (N*H, L, L)
    scores = m.scalar_type() == at::kBool ? scores.masked_fill(m, neg_inf)
                                          : scores + m.to(scores.scalar_type());
  }
  if (a.key_padding_mask) {
    at::Tensor m = *a.key_padding_mask;  // (N, L) or (L) unbatched
    if (unbatched) m = m.unsqueeze(0);
    m = m.view({N, 1, 1, L}).expand({N, H, 1, L}).reshape({N * H, 1, L});
    scores = m.scalar_type() == at::kBool ? scores.masked_fill(m, neg_inf)
                                          : scores + m.to(scores.scalar_type());
  }
  if (a.is_causal) {
    const at::Tensor future = at::ones({L, L}, at::kBool).triu(1);
    scores = scores.masked_fill(future, neg_inf);
  }
  // Rows that see no key: softmax would give NaN; give them zero weights instead (filling the
  // scores first keeps NaN out of the backward pass too).
  const at::Tensor empty_row = at::isneginf(scores).all(-1, /*keepdim=*/true);
  scores = scores.masked_fill(empty_row, 0.0);
  const at::Tensor probs = at::softmax(scores, -1).masked_fill(empty_row, 0.0);  // (N*H, L, L)

  const at::Tensor context = at::bmm(probs, v).transpose(0, 1).reshape({L, N, E});
  at::Tensor out = at::linear(context, a.out_proj_weight, a.out_proj_bias);  // (L, N, E)
  if (a.batch_first && !unbatched) out = out.transpose(0, 1);
  if (unbatched) out = out.squeeze(1);

  at::Tensor weights;
  if (a.need_weights) {
    weights = probs.view({N, H, L, L});
    if (a.average_attn_weights) weights = weights.mean(1);
    if (unbatched) weights = weights.squeeze(0);
  }
  return {out, weights};
}

// Tolerances per dtype for comparing mhsa with the reference.
struct Tol {
  double rtol, atol;
};
inline Tol tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return {1e-9, 1e-10};
    case at::kFloat: return {1e-4, 1e-5};
    default: return {3e-2, 3e-2};  // bfloat16
  }
}

// allclose with a message that says where and by how much two tensors differ.
inline ::testing::AssertionResult all_close(const at::Tensor& actual, const at::Tensor& expected,
                                            Tol tol) {
  if (actual.defined() != expected.defined()) {
    return ::testing::AssertionFailure()
           << "one tensor is undefined (actual defined: " << actual.defined()
           << ", expected defined: " << expected.defined() << ")";
  }
  if (!actual.defined()) return ::testing::AssertionSuccess();
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  const at::Tensor a = actual.detach().to(at::kDouble), e = expected.detach().to(at::kDouble);
  if (at::allclose(a, e, tol.rtol, tol.atol, /*equal_nan=*/false)) {
    return ::testing::AssertionSuccess();
  }
  const at::Tensor diff = (a - e).abs();
  return ::testing::AssertionFailure()
         << "max abs diff " << diff.max().item<double>() << " at flat index "
         << diff.argmax().item<int64_t>() << " (rtol " << tol.rtol << ", atol " << tol.atol
         << "), shape " << actual.sizes() << ", any NaN: " << a.isnan().any().item<bool>();
}

// The message of the c10::Error that f throws, or a marker if it throws nothing / otherwise.
inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return std::string("<not a c10::Error: ") + e.what() + ">";
  }
  return "<no exception>";
}

inline void expect_error(const std::function<void()>& f,
                         std::initializer_list<const char*> mentions, const char* statement) {
  const std::string message = error_message(f);
  const bool threw_c10_error =
      message != "<no exception>" && message.rfind("<not a c10::Error", 0) == std::string::npos;
  EXPECT_TRUE(threw_c10_error) << "expected `" << statement << "` to throw a c10::Error, got "
                               << message;
  for (const char* mention : mentions) {
    EXPECT_NE(message.find(mention), std::string::npos)
        << "expected the error of `" << statement << "` to contain \"" << mention
        << "\", got: " << message;
  }
}

}  // namespace mhsa_test

// Expects statement to throw a c10::Error (never no exception, nor another exception type, nor
// a crash) whose message contains every given substring (none: any c10::Error). The one
// assertion of the bad-input suite (test_bad_inputs.cpp).
#define EXPECT_ERROR_WITH(statement, ...) \
  ::mhsa_test::expect_error([&] { (void)(statement); }, {__VA_ARGS__}, #statement)
