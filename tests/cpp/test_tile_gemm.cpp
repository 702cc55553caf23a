// The tile GEMM engine (csrc/engine/tile_gemm.cpp) on its own, whichever engine this CPU runs (the
// oneDNN brgemm micro-kernels: VNNI/AMX packing for bfloat16, the layout the probe found for
// float16 where the CPU has a float16 kernel, float16 on the float32 one elsewhere; or the
// portable loops; the ASan build runs this file both ways): every combination of transposes,
// alpha, beta, K chunking, odd K and ragged tails against a float64 sum, and the padding between
// rows left untouched.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/micro_kernel_probe.h"
#include "engine/tile_gemm.h"
#include "reference.h"

namespace mhsa_test {
namespace {

using mhsa::cpu::tile_gemm;
using mhsa::cpu::Trans;

struct Shape {
  int64_t M, N, K;
  bool ta, tb;
  float alpha, beta;
};

// The grid: tails around the micro-kernels' 16/64-wide blocks, K across the 512-deep chunks,
// odd K (bfloat16 VNNI pairs), thinned where K is large.
std::vector<Shape> shapes() {
  std::vector<Shape> all;
  for (int64_t M : {1, 5, 64, 130})
    for (int64_t N : {1, 17, 64, 130})
      for (int64_t K : {1, 3, 33, 64, 512, 513, 1100})
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (float alpha : {1.f, 0.37f})
              for (float beta : {0.f, 1.f, 0.3f}) {
                if ((M * N * K) % 7 != 0 && !(alpha == 1.f && beta == 1.f) && K > 64) continue;
                all.push_back({M, N, K, ta, tb, alpha, beta});
              }
  return all;
}

// Runs one shape with inputs of type T (float, BFloat16 or Half) and checks every element of C.
template <typename T>
void check_shape(const Shape& s, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t lda = (s.ta ? s.M : s.K) + 3, ldb = (s.tb ? s.K : s.N) + 2, ldc = s.N + 5;
  std::vector<T> A((s.ta ? s.K : s.M) * lda), B((s.tb ? s.N : s.K) * ldb);
  std::vector<float> C(s.M * ldc);
  for (auto& v : A) v = static_cast<T>(normal(rng));
  for (auto& v : B) v = static_cast<T>(normal(rng));
  for (auto& v : C) v = normal(rng);
  const std::vector<float> C0 = C;
  tile_gemm(s.ta ? Trans::Yes : Trans::No, s.tb ? Trans::Yes : Trans::No, s.M, s.N, s.K, s.alpha,
            A.data(), lda, B.data(), ldb, s.beta, C.data(), ldc);
  const mhsa_test::Tol tol = mhsa_test::tolerance(at::kFloat, mhsa_test::Kind::kGemmTiles);
  int bad = 0;
  for (int64_t i = 0; i < s.M && bad < 3; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = C[i * ldc + j];
      if (j >= s.N) {
        if (got != C0[i * ldc + j]) ++bad;
        EXPECT_EQ(got, C0[i * ldc + j]) << "padding column " << j << " of row " << i;
        continue;
      }
      double sum = 0, magnitude = 0;
      for (int64_t k = 0; k < s.K; ++k) {
        const double a = static_cast<float>(s.ta ? A[k * lda + i] : A[i * lda + k]);
        const double b = static_cast<float>(s.tb ? B[j * ldb + k] : B[k * ldb + j]);
        sum += a * b;
        magnitude += std::fabs(a * b);
      }
      const double c0 = s.beta == 0.f ? 0.0 : static_cast<double>(s.beta) * C0[i * ldc + j];
      const double want = s.alpha * sum + c0;
      // fp32 accumulation of exact products: the table's bound (reference.h).
      const double bound = tol.rtol * (std::fabs(s.alpha) * magnitude + std::fabs(c0)) + tol.atol;
      if (std::fabs(got - want) > bound) ++bad;
      EXPECT_LE(std::fabs(got - want), bound)
          << "M=" << s.M << " N=" << s.N << " K=" << s.K << " ta=" << s.ta << " tb=" << s.tb
          << " alpha=" << s.alpha << " beta=" << s.beta << " at (" << i << ", " << j << ")";
    }
  }
}

TEST(TileGemm, Float32MatchesFloat64Sums) {
  std::mt19937 rng(1);
  for (const Shape& s : shapes()) check_shape<float>(s, rng);
}

TEST(TileGemm, BFloat16MatchesFloat64Sums) {
  std::mt19937 rng(2);
  for (const Shape& s : shapes()) check_shape<c10::BFloat16>(s, rng);
}

TEST(TileGemm, Float16MatchesFloat64Sums) {
  std::mt19937 rng(4);
  for (const Shape& s : shapes()) check_shape<c10::Half>(s, rng);
}

TEST(TileGemm, SameCallSameBits) {
  // Backward recomputes the forward's scores with the same tile call: it must give the same
  // bits every time (no state carried between calls, e.g. in packed scratch buffers).
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const int64_t M = 64, N = 64, K = 96;
  std::vector<c10::BFloat16> A(M * K), B(K * N);
  for (auto& v : A) v = static_cast<c10::BFloat16>(normal(rng));
  for (auto& v : B) v = static_cast<c10::BFloat16>(normal(rng));
  std::vector<float> first(M * N), again(M * N);
  tile_gemm(Trans::No, Trans::No, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, first.data(), N);
  std::vector<float> other(M * N);
  tile_gemm(Trans::No, Trans::Yes, M, M, K, 0.5f, A.data(), K, A.data(), K, 0.f, other.data(), M);
  tile_gemm(Trans::No, Trans::No, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, again.data(), N);
  EXPECT_EQ(first, again);
}

TEST(TileGemm, PackedBGivesThePlainCallsBits) {
  // A projection packs one column tile of B once and runs its row tiles against it: each
  // result must be bitwise the plain call's, over transposes, K chunks, odd K and ragged
  // column blocks, and after the same PackedB16 was packed again for another B.
  if (!mhsa::cpu::tile_gemm_bf16_packs_b()) {
    GTEST_SKIP() << "no bfloat16 micro-kernel with B packing on this CPU/build ("
                 << mhsa::cpu::tile_gemm_backend() << "); projections use the plain call";
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  mhsa::cpu::PackedB16 packed;  // reused across the cases
  for (int64_t K : {2, 33, 64, 513, 1100}) {
    for (int64_t N : {17, 64, 130}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          const int64_t M = 37, lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 3;
          std::vector<c10::BFloat16> A((ta ? K : M) * lda), B((tb ? N : K) * ldb);
          for (auto& v : A) v = static_cast<c10::BFloat16>(normal(rng));
          for (auto& v : B) v = static_cast<c10::BFloat16>(normal(rng));
          std::vector<float> plain(M * ldc, 0.25f), from_packed(M * ldc, 0.25f);
          const Trans op_a = ta ? Trans::Yes : Trans::No, op_b = tb ? Trans::Yes : Trans::No;
          tile_gemm(op_a, op_b, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.f, plain.data(),
                    ldc);
          packed.pack(op_b, B.data(), ldb, K, N);
          tile_gemm(op_a, M, K, 0.5f, A.data(), lda, packed, 1.f, from_packed.data(), ldc);
          EXPECT_EQ(plain, from_packed) << "K=" << K << " N=" << N << " ta=" << ta << " tb=" << tb;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mhsa_test
