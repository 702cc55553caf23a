#pragma once
// Shared helpers of the GoogleTest suite: the suite's one attention reference written with plain
// ATen ops (attention_core, and reference_mhsa around it; autograd differentiates them, so they
// also supply the reference gradients), random inputs, the tolerance table and assertion
// helpers.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
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

// The attention step of the reference: mhsa's semantics on heads. q is (..., H, L, D), k and v
// (..., H_kv, S, D) and (..., H_kv, S, Dv) with H a multiple of H_kv (each key/value head serves
// H / H_kv query heads). The scores are q k^T times scale, or divided by sqrt(D). Each of
// `masks`, broadcastable to the scores, applies in turn: bool true = may not attend, float added
// to the scores. A query row that sees no key gets zero weights and a zero output. `keep`
// (broadcastable to the weights), if defined, is dropout's keep mask: kept weights are divided
// by 1 - dropout_p. Returns (output, weights after dropout).
inline std::tuple<at::Tensor, at::Tensor> attention_core(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const std::vector<at::Tensor>& masks,
                                                         std::optional<double> scale = std::nullopt,
                                                         const at::Tensor& keep = {},
                                                         double dropout_p = 0.0) {
  const int64_t group = q.size(-3) / k.size(-3);
  const at::Tensor kk = group > 1 ? k.repeat_interleave(group, -3) : k;
  const at::Tensor vv = group > 1 ? v.repeat_interleave(group, -3) : v;
  const at::Tensor products = at::matmul(q, kk.transpose(-1, -2));
  at::Tensor scores =
      scale ? products * *scale : products / std::sqrt(static_cast<double>(q.size(-1)));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (const at::Tensor& m : masks) {
    scores = m.scalar_type() == at::kBool ? scores.masked_fill(m, neg_inf)
                                          : scores + m.to(scores.scalar_type());
  }
  // Rows that see no key: softmax would give NaN; give them zero weights instead (filling the
  // scores first keeps NaN out of the backward pass too).
  const at::Tensor empty_row = at::isneginf(scores).all(-1, /*keepdim=*/true);
  at::Tensor probs =
      at::softmax(scores.masked_fill(empty_row, 0.0), -1).masked_fill(empty_row, 0.0);
  if (keep.defined()) probs = probs * keep.to(probs.scalar_type()) / (1.0 - dropout_p);
  return {at::matmul(probs, vv), probs};
}

// nn.MultiheadAttention's self-attention math with query = key = value, step by step, with
// mhsa's documented differences: is_causal adds its own causal mask (combined with attn_mask),
// and a query whose keys are all masked gets zero attention (output = out_proj bias) and zero
// weights instead of NaN. `keep` ((N, H, L, L), or (H, L, L) unbatched: true where kept, as read
// off mhsa's per-head weights), if defined, applies dropout with probability dropout_p.
inline std::tuple<at::Tensor, at::Tensor> reference_mhsa(const Args& a, const at::Tensor& keep = {},
                                                         double dropout_p = 0.0) {
  const bool unbatched = a.query.dim() == 2;
  at::Tensor x = unbatched ? a.query.unsqueeze(1) : a.query;  // (L, 1, E)
  if (a.batch_first && !unbatched) x = x.transpose(0, 1);     // -> (L, N, E)
  const int64_t L = x.size(0), N = x.size(1), E = x.size(2), H = a.num_heads, D = E / H;

  // In-projection, then heads: (L, N, E) -> (L, N*H, D) -> (N*H, L, D); row b = n * H + h.
  const at::Tensor qkv = at::linear(x, a.in_proj_weight, a.in_proj_bias);
  const auto chunks = qkv.chunk(3, -1);
  auto heads = [&](const at::Tensor& t) { return t.reshape({L, N * H, D}).transpose(0, 1); };

  std::vector<at::Tensor> masks;
  if (a.attn_mask) masks.push_back(*a.attn_mask);  // (L, L) or (N*H, L, L)
  if (a.key_padding_mask) {
    const at::Tensor m = *a.key_padding_mask;  // (N, L) or (L) unbatched
    masks.push_back(m.reshape({N, 1, 1, L}).expand({N, H, 1, L}).reshape({N * H, 1, L}));
  }
  if (a.is_causal) masks.push_back(at::ones({L, L}, at::kBool).triu(1));
  const at::Tensor keep3 = keep.defined() ? keep.reshape({N * H, L, L}) : keep;
  auto [context, probs] = attention_core(heads(chunks[0]), heads(chunks[1]), heads(chunks[2]),
                                         masks, std::nullopt, keep3, dropout_p);  // (N*H, L, *)

  at::Tensor out = at::linear(context.transpose(0, 1).reshape({L, N, E}), a.out_proj_weight,
                              a.out_proj_bias);  // (L, N, E)
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

// The tolerance table of the C++ suite: tolerance(dtype, kind) is where every test takes a
// tolerance from (the Python suite's table is mhsa_testutils.TOLERANCES; the kinds mean the same
// there). An entry is {rtol, atol} for all_close (|actual - expected| <= atol + rtol |expected|)
// unless its comment says otherwise.
struct Tol {
  double rtol, atol;
};
enum class Kind {
  kOut,               // mhsa against the reference (or LibTorch) in the same dtype, every tensor
  kWeights,           // the attention weights alone, against the reference (at most 1)
  kLongSum,           // kOut over long sequences: sums over hundreds of keys
  kRowSum,            // a row of weights summed, against 1
  kReordered,         // mhsa against mhsa on another route to the same values
  kFromWeights,       // the output recomputed from mhsa's own returned weights
  kFiniteDifference,  // autograd against central differences
  kGemmRows,          // a float32-accumulated GEMM entry against its float64 sum (small rows)
  kGemmTiles,         // the same for the tile GEMM engine
  kBitwise,           // the very same bits
};
struct TolEntry {
  at::ScalarType dtype;
  Kind kind;
  Tol tol;
};
inline const std::vector<TolEntry>& tolerance_table() {
  static const std::vector<TolEntry> table{
      // float64: both sides round at 1e-16; sums over a few hundred terms stay below 1e-12, so
      // these leave two orders of margin and still catch any float32 rounding in the kernels.
      {at::kDouble, Kind::kOut, {1e-9, 1e-10}},
      // Decode against the causal forward, a window against the dense band mask, packed against
      // each sequence alone: only the order of float64 roundings differs, a few ulps.
      {at::kDouble, Kind::kReordered, {1e-12, 1e-12}},
      // out_proj(W V) from the returned weights: two more GEMMs in float64.
      {at::kDouble, Kind::kFromWeights, {1e-10, 1e-10}},
      // Central differences with a step of 1e-6: truncation O(step^2) relative, rounding
      // ~1e-16 / 1e-6 absolute; both well inside. (rtol of |numeric|, atol.)
      {at::kDouble, Kind::kFiniteDifference, {1e-5, 1e-6}},
      // float32 (unit roundoff 6e-8): outputs of magnitude ~1 carry ~1e-6 from the sums over E
      // and L, gradients more (sums over N*L rows).
      {at::kFloat, Kind::kOut, {1e-4, 1e-5}},
      // Sequences of 130-300 keys (several kernel tiles), per-head float masks: twice kOut.
      {at::kFloat, Kind::kLongSum, {2e-4, 2e-5}},
      // Seven weights summed in float32: a few ulps of 1.
      {at::kFloat, Kind::kRowSum, {1e-5, 1e-5}},
      // Decode against the causal forward in float32: roundings in another order.
      {at::kFloat, Kind::kReordered, {1e-5, 1e-5}},
      // A window against the equivalent dense band mask: the kernels skip the tiles the window
      // hides, which add exact zeros, so nothing else changes.
      {at::kFloat, Kind::kBitwise, {0.0, 0.0}},
      // fp32 accumulation against float64 sums: a few ulps of the sum of magnitudes. The bound
      // is rtol * (|alpha| sum |a b| + |expected|) + atol (test_small_rows.cpp).
      {at::kFloat, Kind::kGemmRows, {4e-7, 4e-7}},
      // fp32 accumulation of exact products (16-bit products are exact in fp32): the error is
      // bounded by K * eps * sum |a b|; 1e-5 of the magnitude allows K up to ~80 chunks. The
      // bound is rtol * (|alpha| sum |a b| + |beta c0|) + atol (test_tile_gemm.cpp).
      {at::kFloat, Kind::kGemmTiles, {1e-5, 1e-30}},
      // bfloat16 keeps 8 significant bits (2^-8 relative per rounding); the three GEMMs and the
      // softmax add a few of those, against float64 on the same bfloat16 values.
      {at::kBFloat16, Kind::kOut, {3e-2, 3e-2}},
      // The weights are at most 1: the same relative bound, a tighter absolute one.
      {at::kBFloat16, Kind::kWeights, {3e-2, 1e-2}},
  };
  return table;
}
inline Tol tolerance(at::ScalarType dtype, Kind kind = Kind::kOut) {
  for (const TolEntry& e : tolerance_table()) {
    if (e.dtype == dtype && e.kind == kind) return e.tol;
  }
  ADD_FAILURE() << "no tolerance for " << dtype << " of kind " << static_cast<int>(kind)
                << " in tolerance_table() (reference.h)";
  return {0.0, 0.0};
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
