// Bad inputs throw c10::Error with a message that names the offending argument.
#include <torch/autograd.h>

#include <mhsa/ops.h>

#include "reference.h"

namespace mhsa_test {
namespace {

class Errors : public ::testing::Test {
 protected:
  // Valid (L, N, E) = (5, 2, 8) inputs with 2 heads; each test breaks one thing.
  at::Tensor x = at::randn({5, 2, 8});
  at::Tensor w_in = at::randn({24, 8});
  at::Tensor b_in = at::randn({24});
  at::Tensor w_out = at::randn({8, 8});
  at::Tensor b_out = at::randn({8});

  std::tuple<at::Tensor, at::Tensor> call(const at::Tensor& query,
                                          std::optional<at::Tensor> key_padding_mask = {},
                                          std::optional<at::Tensor> attn_mask = {},
                                          int64_t num_heads = 2, double dropout_p = 0.0,
                                          bool batch_first = false) {
    return mhsa::multi_head_self_attention(query, w_in, b_in, w_out, b_out, num_heads, dropout_p,
                                           true, batch_first, key_padding_mask, true, attn_mask,
                                           true, false);
  }
};

TEST_F(Errors, ValidInputsDoNotThrow) {
  EXPECT_NO_THROW(call(x));
  EXPECT_NO_THROW(call(x, at::zeros({2, 5}, at::kBool), at::zeros({5, 5})));
}

TEST_F(Errors, QueryOfWrongRank) {
  EXPECT_ERROR_WITH(call(at::randn({1, 5, 2, 8})), "query", "4-D");
  EXPECT_ERROR_WITH(call(at::randn({8})), "query", "1-D");
}

TEST_F(Errors, QueryOfUnsupportedDtype) {
  EXPECT_ERROR_WITH(call(at::ones({5, 2, 8}, at::kLong)), "dtype");
}

TEST_F(Errors, EmbedDimMismatch) {
  // The query's E (6) does not match the parameters (E = 8).
  EXPECT_ERROR_WITH(call(at::randn({5, 2, 6})), "in_proj_weight", "shape");
}

TEST_F(Errors, InProjWeightShape) {
  w_in = at::randn({24, 9});
  EXPECT_ERROR_WITH(call(x), "in_proj_weight", "shape");
}

TEST_F(Errors, InProjBiasShape) {
  b_in = at::randn({8});
  EXPECT_ERROR_WITH(call(x), "in_proj_bias", "shape");
}

TEST_F(Errors, OutProjWeightShape) {
  w_out = at::randn({8, 7});
  EXPECT_ERROR_WITH(call(x), "out_proj_weight", "shape");
}

TEST_F(Errors, OutProjBiasShape) {
  b_out = at::randn({24});
  EXPECT_ERROR_WITH(call(x), "out_proj_bias", "shape");
}

TEST_F(Errors, NumHeadsDoesNotDivideEmbedDim) {
  EXPECT_ERROR_WITH(call(x, {}, {}, /*num_heads=*/3), "num_heads", "divisible", "8");
}

TEST_F(Errors, NumHeadsNotPositive) {
  EXPECT_ERROR_WITH(call(x, {}, {}, /*num_heads=*/0), "num_heads");
  EXPECT_ERROR_WITH(call(x, {}, {}, /*num_heads=*/-2), "num_heads");
}

TEST_F(Errors, DropoutOutOfRange) {
  EXPECT_ERROR_WITH(call(x, {}, {}, 2, /*dropout_p=*/1.5), "dropout_p");
  EXPECT_ERROR_WITH(call(x, {}, {}, 2, /*dropout_p=*/-0.1), "dropout_p");
}

TEST_F(Errors, ParameterDtypeMismatch) {
  w_in = w_in.to(at::kDouble);
  EXPECT_ERROR_WITH(call(x), "in_proj_weight", "dtype", "Double");
}

TEST_F(Errors, BiasDtypeMismatch) {
  b_out = b_out.to(at::kDouble);
  EXPECT_ERROR_WITH(call(x), "out_proj_bias", "dtype");
}

TEST_F(Errors, AttnMask2DWrongShape) {
  EXPECT_ERROR_WITH(call(x, {}, at::zeros({5, 4}, at::kBool)), "attn_mask", "shape");
}

TEST_F(Errors, AttnMask3DWrongShape) {
  // 3-D masks are (N * num_heads, L, L) = (4, 5, 5).
  EXPECT_ERROR_WITH(call(x, {}, at::zeros({2, 5, 5})), "attn_mask", "shape");
}

TEST_F(Errors, AttnMaskWrongRank) {
  EXPECT_ERROR_WITH(call(x, {}, at::zeros({2, 2, 5, 5})), "attn_mask", "4-D");
  EXPECT_ERROR_WITH(call(x, {}, at::zeros({5})), "attn_mask");
}

TEST_F(Errors, AttnMaskWrongDtype) {
  EXPECT_ERROR_WITH(call(x, {}, at::zeros({5, 5}, at::kInt)), "attn_mask", "Int");
}

TEST_F(Errors, KeyPaddingMaskWrongShape) {
  EXPECT_ERROR_WITH(call(x, at::zeros({5, 2}, at::kBool)), "key_padding_mask", "shape");
  // batch_first does not change the (N, L) shape of key_padding_mask.
  EXPECT_ERROR_WITH(call(x.transpose(0, 1), at::zeros({5, 2}, at::kBool), {}, 2, 0.0, true),
                    "key_padding_mask", "shape");
}

TEST_F(Errors, KeyPaddingMaskWrongDtype) {
  EXPECT_ERROR_WITH(call(x, at::zeros({2, 5}, at::kLong)), "key_padding_mask", "Long");
}

TEST_F(Errors, UnbatchedKeyPaddingMaskMustBe1D) {
  EXPECT_ERROR_WITH(call(x.select(1, 0), at::zeros({1, 5}, at::kBool)), "key_padding_mask");
}

TEST_F(Errors, UnbatchedAttnMask3DIsPerHead) {
  // Unbatched: a 3-D mask is (num_heads, L, L).
  EXPECT_NO_THROW(call(x.select(1, 0), {}, at::zeros({2, 5, 5})));
  EXPECT_ERROR_WITH(call(x.select(1, 0), {}, at::zeros({4, 5, 5})), "attn_mask");
}

TEST_F(Errors, MaskThatRequiresGrad) {
  const at::Tensor mask = at::zeros({5, 5}).requires_grad_(true);
  EXPECT_ERROR_WITH(call(x, {}, mask), "attn_mask", "detach");
}

TEST_F(Errors, DoubleBackwardIsRefused) {
  const at::Tensor q = x.clone().requires_grad_(true);
  for (auto* t : {&w_in, &b_in, &w_out, &b_out}) t->requires_grad_(true);
  auto [out, w] = call(q);
  const auto grads = torch::autograd::grad({out.pow(2).sum()}, {q, w_in, b_in, w_out, b_out}, {},
                                           /*retain_graph=*/true, /*create_graph=*/true);
  ASSERT_TRUE(grads[0].requires_grad());
  EXPECT_ERROR_WITH(torch::autograd::grad({grads[0].sum()}, {q}), "double backward");
}

TEST_F(Errors, ErrorsAreC10Errors) {
  EXPECT_THROW(call(x, {}, {}, 3), c10::Error);
  // and derive from std::exception for callers that only know the standard library.
  EXPECT_THROW(call(x, {}, {}, 3), std::exception);
}

}  // namespace
}  // namespace mhsa_test
