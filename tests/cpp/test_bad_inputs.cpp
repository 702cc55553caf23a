// The C++ bad-input suite: every bad input to the ops (multi_head_self_attention, _mha_forward,
// _mha_backward) and the other entry points (modules, decoding, packed sequences, windows,
// scaled_dot_product_attention, MultiheadAttention) throws c10::Error, never aborts or crashes,
// and the message names the argument and what was expected. One assertion throughout:
// EXPECT_ERROR_WITH (reference.h). The inputs go one by one, including the absurd.
#include <torch/autograd.h>

#include <mhsa/internal_ops.h>
#include <mhsa/mhsa.h>
#include <mhsa/ops.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

#include "reference.h"

namespace mhsa_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Valid inputs: (L, N, E) = (5, 2, 8), 2 heads. Each test breaks one argument at a time.
struct Inputs {
  at::Tensor x = at::randn({5, 2, 8});
  at::Tensor w_in = at::randn({24, 8});
  std::optional<at::Tensor> b_in = at::randn({24});
  at::Tensor w_out = at::randn({8, 8});
  std::optional<at::Tensor> b_out = at::randn({8});
  int64_t heads = 2;
  double dropout_p = 0.0;
  bool batch_first = false;
  std::optional<at::Tensor> kpm;
  std::optional<at::Tensor> attn_mask;
  bool need_weights = true;
  bool average = true;
  bool is_causal = false;

  std::tuple<at::Tensor, at::Tensor> call() const {
    return mhsa::multi_head_self_attention(x, w_in, b_in, w_out, b_out, heads, dropout_p, true,
                                           batch_first, kpm, need_weights, attn_mask, average,
                                           is_causal);
  }
  mhsa::internal::AttentionOptions options() const {
    mhsa::internal::AttentionOptions o;
    o.num_heads = heads;
    o.batch_first = batch_first;
    o.attn_mask = attn_mask;
    o.key_padding_mask = kpm;
    o.is_causal = is_causal;
    o.dropout_p = dropout_p;
    o.average_attn_weights = average;
    return o;
  }
  auto forward() const {
    return mhsa::internal::mha_forward(x, w_in, b_in, w_out, b_out, options(), need_weights);
  }
};

// Each bad variant goes through the public op and through _mha_forward; both errors must
// mention each of `mentions` (the argument's name, what was expected).
template <typename Break>
void expect_both_throw(Break breaker, std::initializer_list<const char*> mentions = {}) {
  Inputs in;
  breaker(in);
  ::mhsa_test::expect_error([&] { in.call(); }, mentions, "multi_head_self_attention");
  if (in.x.defined() && in.x.dim() == 2) return;  // 2-D is valid for the public op only
  ::mhsa_test::expect_error([&] { in.forward(); }, mentions, "_mha_forward");
}

TEST(BadInputs, ValidInputsWork) {
  Inputs in;
  EXPECT_NO_THROW(in.call());
  EXPECT_NO_THROW(in.forward());
}

TEST(BadInputs, UndefinedTensors) {
  expect_both_throw([](Inputs& in) { in.x = at::Tensor(); });
  expect_both_throw([](Inputs& in) { in.w_in = at::Tensor(); });
  expect_both_throw([](Inputs& in) { in.w_out = at::Tensor(); });
  // An undefined optional tensor means "absent": valid.
  Inputs in;
  in.b_in = at::Tensor();
  in.attn_mask = at::Tensor();
  EXPECT_NO_THROW(in.call());
}

TEST(BadInputs, QueryRank) {
  for (auto shape : {std::vector<int64_t>{}, {8}, {1, 5, 2, 8}, {1, 1, 5, 2, 8}}) {
    expect_both_throw([&](Inputs& in) { in.x = at::randn(shape); });
  }
  // 2-D is unbatched for the public op, but mha_forward takes 3-D only.
  Inputs in;
  in.x = at::randn({5, 8});
  EXPECT_ERROR_WITH(in.forward());
}

TEST(BadInputs, QueryDtype) {
  for (auto dtype : {at::kLong, at::kInt, at::kBool, at::kComplexFloat, at::kByte}) {
    expect_both_throw([&](Inputs& in) {
      in.x = at::ones({5, 2, 8}, at::TensorOptions().dtype(dtype));
      in.w_in = in.w_in.to(dtype);
      in.w_out = in.w_out.to(dtype);
      in.b_in = in.b_in->to(dtype);
      in.b_out = in.b_out->to(dtype);
    });
  }
}

TEST(BadInputs, EmbedDim) {
  expect_both_throw([](Inputs& in) {  // E = 0
    in.x = at::randn({5, 2, 0});
    in.w_in = at::randn({0, 0});
    in.w_out = at::randn({0, 0});
    in.b_in = at::randn({0});
    in.b_out = at::randn({0});
  });
  expect_both_throw([](Inputs& in) { in.x = at::randn({5, 2, 6}); });
  expect_both_throw([](Inputs& in) { in.x = at::randn({5, 2, 16}); });
}

TEST(BadInputs, NumHeads) {
  for (int64_t h : {int64_t{0}, int64_t{-1}, int64_t{-2}, int64_t{3}, int64_t{16},
                    std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()}) {
    expect_both_throw([&](Inputs& in) { in.heads = h; });
  }
}

TEST(BadInputs, DropoutProbability) {
  for (double p : {-1e-300, -0.5, 1.0000001, 2.0, kInf, -kInf, kNaN}) {
    expect_both_throw([&](Inputs& in) { in.dropout_p = p; });
  }
}

TEST(BadInputs, ParameterShapes) {
  for (auto shape : {std::vector<int64_t>{24}, {8, 24}, {24, 8, 1}, {25, 8}, {24, 9}, {}}) {
    expect_both_throw([&](Inputs& in) { in.w_in = at::randn(shape); });
  }
  for (auto shape : {std::vector<int64_t>{8}, {8, 7}, {9, 8}, {8, 8, 1}, {}}) {
    expect_both_throw([&](Inputs& in) { in.w_out = at::randn(shape); });
  }
  for (auto shape : {std::vector<int64_t>{23}, {24, 1}, {8}, {}}) {
    expect_both_throw([&](Inputs& in) { in.b_in = at::randn(shape); });
  }
  for (auto shape : {std::vector<int64_t>{7}, {8, 1}, {24}, {}}) {
    expect_both_throw([&](Inputs& in) { in.b_out = at::randn(shape); });
  }
}

TEST(BadInputs, ParameterDtypes) {
  for (auto dtype : {at::kDouble, at::kBFloat16, at::kHalf, at::kLong}) {
    expect_both_throw([&](Inputs& in) { in.w_in = in.w_in.to(dtype); });
    expect_both_throw([&](Inputs& in) { in.w_out = in.w_out.to(dtype); });
    expect_both_throw([&](Inputs& in) { in.b_out = in.b_out->to(dtype); });
  }
  // An in_proj_bias of an integer dtype is refused everywhere.
  expect_both_throw([&](Inputs& in) { in.b_in = in.b_in->to(at::kLong); });
}

TEST(BadInputs, InProjBiasOfAnotherFloatingDtypeIsCastLikeNn) {
  // nn.MultiheadAttention accepts it (F.linear casts the bias to the input's dtype); the
  // public op does the same, the internal mha_forward keeps requiring one dtype.
  for (auto dtype : {at::kDouble, at::kBFloat16, at::kHalf}) {
    Inputs in;
    in.b_in = in.b_in->to(dtype);
    Inputs same = in;  // the same tensors, with the bias cast to the input's dtype by hand
    same.b_in = in.b_in->to(at::kFloat);
    at::Tensor out;
    ASSERT_NO_THROW(out = std::get<0>(in.call()));
    EXPECT_EQ(out.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(out, std::get<0>(same.call())));
    EXPECT_ERROR_WITH(in.forward());
  }
}

TEST(BadInputs, ParametersOnAnotherDevice) {
  // The meta device stands in for any other device; CPU inputs with a meta parameter must be
  // refused (whichever kernel the dispatcher picks).
  const auto meta = at::TensorOptions().device(at::kMeta);
  expect_both_throw([&](Inputs& in) { in.w_in = at::empty({24, 8}, meta); });
  expect_both_throw([&](Inputs& in) { in.w_out = at::empty({8, 8}, meta); });
  expect_both_throw([&](Inputs& in) { in.b_in = at::empty({24}, meta); });
  expect_both_throw([&](Inputs& in) { in.b_out = at::empty({8}, meta); });
  expect_both_throw([&](Inputs& in) { in.attn_mask = at::empty({5, 5}, meta.dtype(at::kBool)); });
  expect_both_throw([&](Inputs& in) { in.kpm = at::empty({2, 5}, meta.dtype(at::kBool)); });
}

TEST(BadInputs, AttnMask) {
  for (auto shape : {std::vector<int64_t>{},
                     {5},
                     {5, 4},
                     {4, 5},
                     {6, 6},
                     {3, 5, 5},
                     {5, 5, 5},
                     {1, 5, 5},
                     {4, 5, 4},
                     {2, 2, 5, 5},
                     {1, 1, 1, 5, 5}}) {
    expect_both_throw([&](Inputs& in) { in.attn_mask = at::zeros(shape, at::kBool); });
    expect_both_throw([&](Inputs& in) { in.attn_mask = at::zeros(shape); });
  }
  for (auto dtype : {at::kInt, at::kLong, at::kByte, at::kComplexFloat}) {
    expect_both_throw([&](Inputs& in) {
      in.attn_mask = at::zeros({5, 5}, at::TensorOptions().dtype(dtype));
    });
  }
  expect_both_throw([](Inputs& in) { in.attn_mask = at::zeros({5, 5}).requires_grad_(); });
}

TEST(BadInputs, KeyPaddingMask) {
  for (auto shape : {std::vector<int64_t>{}, {5}, {2}, {5, 2}, {2, 4}, {2, 6}, {1, 5}, {2, 5, 1}}) {
    expect_both_throw([&](Inputs& in) { in.kpm = at::zeros(shape, at::kBool); });
    expect_both_throw([&](Inputs& in) { in.kpm = at::zeros(shape); });
  }
  for (auto dtype : {at::kInt, at::kLong, at::kByte, at::kComplexDouble}) {
    expect_both_throw([&](Inputs& in) {
      in.kpm = at::zeros({2, 5}, at::TensorOptions().dtype(dtype));
    });
  }
  expect_both_throw([](Inputs& in) { in.kpm = at::zeros({2, 5}).requires_grad_(); });
  expect_both_throw([](Inputs& in) {  // batch_first does not change the (N, L) shape
    in.batch_first = true;
    in.x = in.x.transpose(0, 1).contiguous();
    in.kpm = at::zeros({5, 2}, at::kBool);
  });
}

TEST(BadInputs, UnbatchedMasks) {
  for (auto shape : {std::vector<int64_t>{1, 5}, {2, 5}, {4}, {6}, {}}) {
    Inputs in;
    in.x = at::randn({5, 8});
    in.kpm = at::zeros(shape, at::kBool);
    EXPECT_ERROR_WITH(in.call());
  }
  for (auto shape : {std::vector<int64_t>{1, 5, 5}, {4, 5, 5}, {5}, {2, 1, 5, 5}}) {
    Inputs in;
    in.x = at::randn({5, 8});
    in.attn_mask = at::zeros(shape, at::kBool);
    EXPECT_ERROR_WITH(in.call());
  }
}

TEST(BadInputs, AllocationTooLargeIsAnError) {
  // (N, L, L) weights of 2^20 x 2^20 floats (4 TiB) for a small input: the allocation fails
  // with c10::Error (OutOfMemoryError). Only where the kernel refuses impossible allocations
  // (heuristic or strict overcommit); with overcommit_memory = 1 it could succeed lazily.
  std::ifstream overcommit("/proc/sys/vm/overcommit_memory");
  int mode = -1;
  if (!(overcommit >> mode) || mode == 1) GTEST_SKIP() << "vm.overcommit_memory = " << mode;
  Inputs in;
  in.x = at::zeros({1 << 20, 1, 8});
  in.need_weights = true;
  in.average = true;
  EXPECT_ERROR_WITH(in.call());
}

// ---------------------------------------------------------------------------------------
// mha_backward: valid saved state from a real forward, then one argument broken at a time.
struct BackwardInputs {
  Inputs f;
  at::Tensor grad_output, qkv, context, lse, rng_state;
  std::optional<at::Tensor> grad_weights;
  std::array<bool, 5> output_mask{true, true, true, true, true};

  BackwardInputs() {
    auto [out, w, qkv_, ctx, lse_, rng] = f.forward();
    grad_output = at::randn_like(out);
    grad_weights = at::randn_like(w);
    qkv = qkv_;
    context = ctx;
    lse = lse_;
    rng_state = rng;
  }
  auto call() const {
    return mhsa::internal::mha_backward(grad_output, grad_weights, f.x, f.w_in, f.w_out, qkv,
                                        context, lse, rng_state, f.options(), output_mask);
  }
};

template <typename Break>
void expect_backward_throws(Break breaker) {
  BackwardInputs in;
  breaker(in);
  EXPECT_ERROR_WITH(in.call());
}

TEST(BadInputs, BackwardValidInputsWork) {
  BackwardInputs in;
  EXPECT_NO_THROW(in.call());
  in.output_mask = {false, false, false, false, false};
  EXPECT_NO_THROW(in.call());
}

TEST(BadInputs, BackwardSavedState) {
  expect_backward_throws([](BackwardInputs& b) { b.grad_output = at::Tensor(); });
  expect_backward_throws([](BackwardInputs& b) { b.grad_output = at::randn({5, 2, 7}); });
  expect_backward_throws([](BackwardInputs& b) { b.grad_output = at::randn({2, 5, 8}); });
  expect_backward_throws([](BackwardInputs& b) { b.grad_output = b.grad_output.to(at::kDouble); });
  expect_backward_throws([](BackwardInputs& b) { b.grad_weights = at::randn({2, 2, 5, 5}); });
  expect_backward_throws([](BackwardInputs& b) { b.grad_weights = at::randn({2, 5, 4}); });
  expect_backward_throws(
      [](BackwardInputs& b) { b.grad_weights = b.grad_weights->to(at::kDouble); });
  expect_backward_throws([](BackwardInputs& b) { b.qkv = at::randn({5, 2, 8}); });
  expect_backward_throws([](BackwardInputs& b) { b.qkv = at::randn({10, 24}); });
  expect_backward_throws([](BackwardInputs& b) { b.qkv = b.qkv.to(at::kDouble); });
  expect_backward_throws([](BackwardInputs& b) { b.context = at::randn({5, 2, 24}); });
  expect_backward_throws([](BackwardInputs& b) { b.context = at::Tensor(); });
  expect_backward_throws([](BackwardInputs& b) { b.lse = at::randn({2, 2, 4}); });
  expect_backward_throws([](BackwardInputs& b) { b.lse = at::randn({2, 5}); });
  expect_backward_throws([](BackwardInputs& b) { b.lse = b.lse.to(at::kDouble); });
  expect_backward_throws([](BackwardInputs& b) { b.lse = at::Tensor(); });
  expect_backward_throws([](BackwardInputs& b) { b.rng_state = at::zeros({2}, at::kInt); });
  expect_backward_throws([](BackwardInputs& b) { b.rng_state = at::zeros({3}, at::kLong); });
  expect_backward_throws([](BackwardInputs& b) { b.rng_state = at::zeros({0}, at::kLong); });
  expect_backward_throws([](BackwardInputs& b) { b.rng_state = at::zeros({}, at::kLong); });
  expect_backward_throws([](BackwardInputs& b) { b.rng_state = at::Tensor(); });
}

TEST(BadInputs, BackwardArguments) {
  expect_backward_throws([](BackwardInputs& b) { b.f.heads = 4; });  // lse is (N, 2, L)
  expect_backward_throws([](BackwardInputs& b) { b.f.heads = 0; });
  expect_backward_throws([](BackwardInputs& b) { b.f.heads = -2; });
  expect_backward_throws([](BackwardInputs& b) { b.f.dropout_p = kNaN; });
  expect_backward_throws([](BackwardInputs& b) { b.f.dropout_p = 1.5; });
  expect_backward_throws(
      [](BackwardInputs& b) { b.f.average = false; });  // grad_weights is (N, L, L)
  expect_backward_throws([](BackwardInputs& b) { b.f.x = at::randn({5, 2, 16}); });
  expect_backward_throws([](BackwardInputs& b) { b.f.x = at::Tensor(); });
  expect_backward_throws([](BackwardInputs& b) { b.f.w_in = at::randn({24, 7}); });
  expect_backward_throws([](BackwardInputs& b) { b.f.w_out = at::randn({8, 8}, at::kDouble); });
  expect_backward_throws([](BackwardInputs& b) { b.f.attn_mask = at::zeros({5, 4}, at::kBool); });
  expect_backward_throws([](BackwardInputs& b) { b.f.attn_mask = at::zeros({5, 5}, at::kInt); });
  expect_backward_throws([](BackwardInputs& b) { b.f.kpm = at::zeros({5, 2}, at::kBool); });
  expect_backward_throws([](BackwardInputs& b) {  // batch_first flips (L, N) = (5, 2)
    b.f.batch_first = true;
  });
}

TEST(BadInputs, ErrorsLeaveTheLibraryUsable) {
  // After all the errors above (and more here), a valid call still gives the right answer.
  Inputs bad;
  bad.heads = 3;
  for (int i = 0; i < 10; ++i) EXPECT_ERROR_WITH(bad.call());
  at::manual_seed(3);
  Args a = make_args({6, 2, 8}, 2, at::kDouble, true, false);
  auto [out, w] = mhsa::multi_head_self_attention(a.query, a.in_proj_weight, a.in_proj_bias,
                                                  a.out_proj_weight, a.out_proj_bias, 2);
  auto [ref_out, ref_w] = reference_mhsa(a);
  EXPECT_TRUE(all_close(out, ref_out, tolerance(at::kDouble)));
  EXPECT_TRUE(all_close(w, ref_w, tolerance(at::kDouble)));
}

// The common mistakes: the message names the argument and says what was expected.

TEST(BadInputs, MessagesNameTheQuery) {
  Inputs in;
  in.x = at::randn({1, 5, 2, 8});
  EXPECT_ERROR_WITH(in.call(), "query", "4-D");
  in.x = at::randn({8});
  EXPECT_ERROR_WITH(in.call(), "query", "1-D");
  expect_both_throw([](Inputs& in) { in.x = at::ones({5, 2, 8}, at::kLong); }, {"dtype"});
}

TEST(BadInputs, MessagesNameTheParameter) {
  // The query's E (6) does not match the parameters (E = 8).
  expect_both_throw([](Inputs& in) { in.x = at::randn({5, 2, 6}); }, {"in_proj_weight", "shape"});
  expect_both_throw([](Inputs& in) { in.w_in = at::randn({24, 9}); }, {"in_proj_weight", "shape"});
  expect_both_throw([](Inputs& in) { in.b_in = at::randn({8}); }, {"in_proj_bias", "shape"});
  expect_both_throw([](Inputs& in) { in.w_out = at::randn({8, 7}); }, {"out_proj_weight", "shape"});
  expect_both_throw([](Inputs& in) { in.b_out = at::randn({24}); }, {"out_proj_bias", "shape"});
  expect_both_throw([](Inputs& in) { in.w_in = in.w_in.to(at::kDouble); },
                    {"in_proj_weight", "dtype", "Double"});
  expect_both_throw([](Inputs& in) { in.b_out = in.b_out->to(at::kDouble); },
                    {"out_proj_bias", "dtype"});
}

TEST(BadInputs, MessagesNameTheScalarArgument) {
  expect_both_throw([](Inputs& in) { in.heads = 3; }, {"num_heads", "divisible", "8"});
  expect_both_throw([](Inputs& in) { in.heads = 0; }, {"num_heads"});
  expect_both_throw([](Inputs& in) { in.heads = -2; }, {"num_heads"});
  expect_both_throw([](Inputs& in) { in.dropout_p = 1.5; }, {"dropout_p"});
  expect_both_throw([](Inputs& in) { in.dropout_p = -0.1; }, {"dropout_p"});
}

TEST(BadInputs, MessagesNameTheMask) {
  expect_both_throw(
      [](Inputs& in) {
        in.attn_mask = at::zeros({5, 4}, at::kBool);
      },
      {"attn_mask", "shape"});
  // 3-D masks are (N * num_heads, L, L) = (4, 5, 5).
  expect_both_throw(
      [](Inputs& in) {
        in.attn_mask = at::zeros({2, 5, 5});
      },
      {"attn_mask", "shape"});
  expect_both_throw(
      [](Inputs& in) {
        in.attn_mask = at::zeros({2, 2, 5, 5});
      },
      {"attn_mask", "4-D"});
  expect_both_throw([](Inputs& in) { in.attn_mask = at::zeros({5}); }, {"attn_mask"});
  expect_both_throw(
      [](Inputs& in) {
        in.attn_mask = at::zeros({5, 5}, at::kInt);
      },
      {"attn_mask", "Int"});
  expect_both_throw(
      [](Inputs& in) {
        in.attn_mask = at::zeros({5, 5}).requires_grad_(true);
      },
      {"attn_mask", "detach"});
  expect_both_throw(
      [](Inputs& in) {
        in.kpm = at::zeros({5, 2}, at::kBool);
      },
      {"key_padding_mask", "shape"});
  // batch_first does not change the (N, L) shape of key_padding_mask.
  expect_both_throw(
      [](Inputs& in) {
        in.x = in.x.transpose(0, 1);
        in.batch_first = true;
        in.kpm = at::zeros({5, 2}, at::kBool);
      },
      {"key_padding_mask", "shape"});
  expect_both_throw(
      [](Inputs& in) {
        in.kpm = at::zeros({2, 5}, at::kLong);
      },
      {"key_padding_mask", "Long"});
}

TEST(BadInputs, MessagesOfUnbatchedMasks) {
  Inputs in;
  in.x = in.x.select(1, 0);
  in.kpm = at::zeros({1, 5}, at::kBool);
  EXPECT_ERROR_WITH(in.call(), "key_padding_mask");
  // Unbatched: a 3-D mask is (num_heads, L, L).
  in.kpm.reset();
  in.attn_mask = at::zeros({2, 5, 5});
  EXPECT_NO_THROW(in.call());
  in.attn_mask = at::zeros({4, 5, 5});
  EXPECT_ERROR_WITH(in.call(), "attn_mask");
}

TEST(BadInputs, DoubleBackwardIsRefused) {
  Inputs in;
  const at::Tensor q = in.x.clone().requires_grad_(true);
  in.x = q;
  for (auto* t : {&in.w_in, &in.w_out}) t->requires_grad_(true);
  in.b_in->requires_grad_(true);
  in.b_out->requires_grad_(true);
  auto [out, w] = in.call();
  const auto grads =
      torch::autograd::grad({out.pow(2).sum()}, {q, in.w_in, *in.b_in, in.w_out, *in.b_out}, {},
                            /*retain_graph=*/true, /*create_graph=*/true);
  ASSERT_TRUE(grads[0].requires_grad());
  EXPECT_ERROR_WITH(torch::autograd::grad({grads[0].sum()}, {q}), "double backward");
}

TEST(BadInputs, ErrorsAreStandardExceptions) {
  // c10::Error derives from std::exception, for callers that only know the standard library.
  Inputs in;
  in.heads = 3;
  EXPECT_THROW(in.call(), c10::Error);
  EXPECT_THROW(in.call(), std::exception);
}

// ---------------------------------------------------------------------------------------
// The other entry points: the modules' options, KV-cache decoding, packed sequences, the
// sliding window, scaled_dot_product_attention and MultiheadAttention (cross-attention).

TEST(BadInputs, ModuleOptions) {
  EXPECT_ERROR_WITH(mhsa::MultiheadSelfAttention(10, 3), "divisible", "num_heads");
  EXPECT_ERROR_WITH(mhsa::MultiheadSelfAttention(8, 0), "num_heads");
  EXPECT_ERROR_WITH(
      mhsa::MultiheadSelfAttention(mhsa::MultiheadSelfAttentionOptions(8, 2).dropout(1.5)),
      "dropout");
}

TEST(BadInputs, DecodeFullCacheAndBatchMismatch) {
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2).batch_first(true));
  mhsa::KVCache cache = m->new_kv_cache(2, 3);
  m->decode(torch::randn({2, 3, 8}), cache);
  EXPECT_EQ(cache.current_length(), 3);
  EXPECT_ERROR_WITH(m->decode(torch::randn({2, 1, 8}), cache),
                    "KV cache is full: max_len 3, current length 3, cannot append T = 1");
  EXPECT_EQ(cache.current_length(), 3);
  mhsa::KVCache other = m->new_kv_cache(4, 3);
  EXPECT_ERROR_WITH(m->decode(torch::randn({2, 1, 8}), other),
                    "batch size mismatch: the cache holds 4 sequences");
  EXPECT_ERROR_WITH(m->new_kv_cache(2, 0));
  // the op itself refuses inputs that require grad while grad mode is on
  mhsa::KVCache fresh = m->new_kv_cache(2, 3);
  EXPECT_ERROR_WITH(mhsa::decode_step(torch::randn({2, 1, 8}), m->in_proj_weight, m->in_proj_bias,
                                      m->out_proj->weight, m->out_proj->bias, 2, true, fresh.key,
                                      fresh.value, fresh.length));
}

TEST(BadInputs, PackedCuSeqlens) {
  mhsa::MultiheadSelfAttention m(mhsa::MultiheadSelfAttentionOptions(8, 2));
  const at::Tensor x = torch::randn({8, 8});
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({0, 5, 3, 8})),
                    "expected cu_seqlens to be non-decreasing");
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({1, 5, 8})),
                    "expected cu_seqlens to start at 0");
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({0, 5, 7})),
                    "expected cu_seqlens to end at T = 8");
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({0.0, 5.0, 8.0})),
                    "expected cu_seqlens of dtype int32 or int64, got Float");
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({0, 5, 8}).view({1, 3})),
                    "expected cu_seqlens to be 1-D");
  EXPECT_ERROR_WITH(m->forward_packed(x, torch::tensor({0, 5, 8}), /*max_seqlen=*/4),
                    "max_seqlen = 4 but cu_seqlens holds a sequence of length 5");
}

TEST(BadInputs, WindowSize) {
  mhsa::MultiheadSelfAttention attn(16, 4);
  const at::Tensor x = at::randn({5, 2, 16});
  EXPECT_ERROR_WITH(attn->forward(x, {}, true, {}, true, false, {-3, 0}),
                    "expected window_size entries >= -1");
}

TEST(BadInputs, SdpaHeadsMismatchWithoutEnableGqa) {
  const at::Tensor q = at::randn({2, 8, 5, 16}).requires_grad_(true);
  const at::Tensor k = at::randn({2, 2, 5, 16}).requires_grad_(true);
  const at::Tensor v = at::randn({2, 2, 5, 16}).requires_grad_(true);
  EXPECT_ERROR_WITH(mhsa::scaled_dot_product_attention(q, k, v), "same number of heads",
                    "enable_gqa");
  EXPECT_ERROR_WITH(mhsa::scaled_dot_product_attention(q, k, v.narrow(2, 0, 4), std::nullopt, 0.0,
                                                       false, std::nullopt, /*enable_gqa=*/true),
                    "key and value with the same heads and length");
}

TEST(BadInputs, MultiheadAttentionOptionsAndInputs) {
  EXPECT_ERROR_WITH(mhsa::MultiheadAttention(10, 3), "divisible", "num_heads");
  EXPECT_ERROR_WITH(mhsa::MultiheadAttention(8, 0), "num_heads");
  EXPECT_ERROR_WITH(mhsa::MultiheadAttention(mhsa::MultiheadAttentionOptions(8, 2).dropout(1.5)),
                    "dropout");
  EXPECT_ERROR_WITH(mhsa::MultiheadAttention(mhsa::MultiheadAttentionOptions(8, 2).kdim(0)),
                    "kdim");
  // A key of another width than kdim.
  mhsa::MultiheadAttention m(mhsa::MultiheadAttentionOptions(8, 2).kdim(4).vdim(4));
  const at::Tensor q = at::randn({3, 2, 8}), v = at::randn({5, 2, 4});
  EXPECT_ERROR_WITH(m(q, at::randn({5, 2, 6}), v), "k_proj_weight");
}

}  // namespace
}  // namespace mhsa_test
