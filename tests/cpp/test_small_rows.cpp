// The few-rows projection kernel (csrc/engine/small_rows_gemm.h), every instruction-set copy this
// CPU can run: against a float64 sum, K around the vector widths (tails), every row count it
// takes, with and without bias; and every split of the weight rows into calls gives the same
// bits (what makes it independent of the thread count).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu_capability.h"
#include "engine/small_rows_gemm.h"
#include "reference.h"

namespace mhsa_test {
namespace {

using mhsa::cpu::CpuCapability;
using mhsa::cpu::SmallRowsGemm;

std::vector<std::pair<std::string, SmallRowsGemm>> kernels_this_cpu_runs() {
  std::vector<std::pair<std::string, SmallRowsGemm>> all{
      {"default", mhsa::cpu::isa_default::make_small_rows_gemm()}};
#ifdef MHSA_X86_KERNEL_COPIES
  const auto best = static_cast<int>(mhsa::cpu::cpu_capability());
  if (best >= static_cast<int>(CpuCapability::Avx2))
    all.emplace_back("avx2", mhsa::cpu::isa_avx2::make_small_rows_gemm());
  if (best >= static_cast<int>(CpuCapability::Avx512))
    all.emplace_back("avx512", mhsa::cpu::isa_avx512::make_small_rows_gemm());
#endif
  return all;
}

TEST(SmallRows, MatchesFloat64SumsOnEveryCopy) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const mhsa_test::Tol rows_tol = mhsa_test::tolerance(at::kFloat, mhsa_test::Kind::kGemmRows);
  for (const auto& [name, kernel] : kernels_this_cpu_runs()) {
    for (int64_t K : {1, 3, 8, 15, 16, 17, 31, 33, 64, 100, 512, 1027}) {
      for (int64_t M = 1; M <= mhsa::cpu::kSmallRows; ++M) {
        for (bool with_bias : {false, true}) {
          const int64_t N = 13, lda = K + 3, ldw = K + 5, ldc = N + 2;
          const float alpha = 0.37f;
          std::vector<float> A(M * lda), W(N * ldw), bias(N), C(M * ldc, -7.0f);
          for (auto& v : A) v = normal(rng);
          for (auto& v : W) v = normal(rng);
          for (auto& v : bias) v = normal(rng);
          kernel(M, 0, N, K, alpha, A.data(), lda, W.data(), ldw, with_bias ? bias.data() : nullptr,
                 C.data(), ldc);
          for (int64_t i = 0; i < M; ++i) {
            for (int64_t j = 0; j < N; ++j) {
              double sum = 0, magnitude = 0;
              for (int64_t k = 0; k < K; ++k) {
                sum += static_cast<double>(A[i * lda + k]) * W[j * ldw + k];
                magnitude += std::fabs(static_cast<double>(A[i * lda + k]) * W[j * ldw + k]);
              }
              const double want = alpha * sum + (with_bias ? bias[j] : 0.0);
              // fp32 accumulation: a few ulps of the sum of magnitudes.
              const double tol =
                  rows_tol.rtol * (alpha * magnitude + std::fabs(want)) + rows_tol.atol;
              ASSERT_NEAR(C[i * ldc + j], want, tol)
                  << name << " M=" << M << " K=" << K << " i=" << i << " j=" << j;
            }
            for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(C[i * ldc + j], -7.0f);  // padding kept
          }
        }
      }
    }
  }
}

TEST(SmallRows, AnySplitOfTheWeightRowsGivesTheSameBits) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  const int64_t M = 5, N = 37, K = 133;
  std::vector<float> A(M * K), W(N * K), bias(N);
  for (auto& v : A) v = normal(rng);
  for (auto& v : W) v = normal(rng);
  for (auto& v : bias) v = normal(rng);
  for (const auto& [name, kernel] : kernels_this_cpu_runs()) {
    std::vector<float> whole(M * N), pieces(M * N);
    kernel(M, 0, N, K, 1.0f, A.data(), K, W.data(), K, bias.data(), whole.data(), N);
    for (int64_t j0 = 0; j0 < N; j0 += 3)  // splits that cut the 4-row weight blocks
      kernel(M, j0, std::min(N, j0 + 3), K, 1.0f, A.data(), K, W.data(), K, bias.data(),
             pieces.data(), N);
    EXPECT_EQ(whole, pieces) << name;
    // A row's bits do not depend on the other rows of the call either.
    std::vector<float> one(N);
    kernel(1, 0, N, K, 1.0f, A.data() + 3 * K, K, W.data(), K, bias.data(), one.data(), N);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), whole.begin() + 3 * N)) << name;
  }
}

}  // namespace
}  // namespace mhsa_test
