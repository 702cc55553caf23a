// The portable loop GEMM (csrc/engine/portable_gemm.cpp), every instruction-set copy this CPU can
// run, bitwise against the plain loops it replaced: each 512-deep K chunk summed from zero with
// fused multiply-adds in increasing k, the chunk sums added to beta * C in order (alpha == 1) or
// summed apart and combined as beta * C + alpha * sum. Shapes across the register blocks, the
// packing blocks and the K chunks, every transpose, alpha and beta, 16-bit inputs.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu_capability.h"
#include "engine/portable_gemm.h"

// The reference's roundings are part of what is compared: no fused contraction here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace mhsa_test {
namespace {

using mhsa::cpu::PortableGemm;
using mhsa::cpu::Trans;

template <typename in_t>
void reference(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const in_t* A,
               int64_t lda, const in_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr int64_t kChunk = 512;
  const bool direct = alpha == 1.0f;
  std::vector<float> chunk(N), total(N);
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (direct) {
      for (int64_t j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    } else {
      std::fill(total.begin(), total.end(), 0.0f);
    }
    float* target = direct ? c : total.data();
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t k1 = K - k0 < kChunk ? K : k0 + kChunk;
      std::fill(chunk.begin(), chunk.end(), 0.0f);
      for (int64_t k = k0; k < k1; ++k) {
        const float a = static_cast<float>(ta == Trans::No ? A[i * lda + k] : A[k * lda + i]);
        for (int64_t j = 0; j < N; ++j) {
          const float b = static_cast<float>(tb == Trans::No ? B[k * ldb + j] : B[j * ldb + k]);
          chunk[j] = std::fma(a, b, chunk[j]);
        }
      }
      for (int64_t j = 0; j < N; ++j) target[j] += chunk[j];
    }
    if (!direct) {
      for (int64_t j = 0; j < N; ++j) {
        c[j] = beta == 0.0f   ? alpha * total[j]
               : beta == 1.0f ? c[j] + alpha * total[j]
                              : beta * c[j] + alpha * total[j];
      }
    }
  }
}

std::vector<std::pair<std::string, PortableGemm>> copies_this_cpu_runs() {
  std::vector<std::pair<std::string, PortableGemm>> all{
      {"default", mhsa::cpu::isa_default::make_portable_gemm()}};
#ifdef MHSA_X86_KERNEL_COPIES
  const auto best = static_cast<int>(mhsa::cpu::cpu_capability());
  if (best >= static_cast<int>(mhsa::cpu::CpuCapability::Avx2))
    all.emplace_back("avx2", mhsa::cpu::isa_avx2::make_portable_gemm());
  if (best >= static_cast<int>(mhsa::cpu::CpuCapability::Avx512))
    all.emplace_back("avx512", mhsa::cpu::isa_avx512::make_portable_gemm());
#endif
  return all;
}

template <typename in_t>
void check_bitwise(const PortableGemm& gemm, const std::string& name, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{1, 1, 1},     {3, 5, 7},      {13, 33, 17},  {15, 40, 64},
                          {29, 65, 513}, {7, 130, 1030}, {270, 20, 33}, {2, 530, 40}};
  for (const Shape& s : shapes) {
    for (Trans ta : {Trans::No, Trans::Yes}) {
      for (Trans tb : {Trans::No, Trans::Yes}) {
        for (auto [alpha, beta] :
             {std::pair{1.0f, 0.0f}, std::pair{1.0f, 1.0f}, std::pair{1.0f, 0.7f},
              std::pair{0.3f, 0.0f}, std::pair{0.3f, 1.0f}, std::pair{0.3f, 0.7f}}) {
          const int64_t lda = (ta == Trans::No ? s.K : s.M) + 3;
          const int64_t ldb = (tb == Trans::No ? s.N : s.K) + 1, ldc = s.N + 2;
          std::vector<in_t> A((ta == Trans::No ? s.M : s.K) * lda);
          std::vector<in_t> B((tb == Trans::No ? s.K : s.N) * ldb);
          std::vector<float> C(s.M * ldc);
          for (auto& v : A) v = static_cast<in_t>(normal(rng));
          for (auto& v : B) v = static_cast<in_t>(normal(rng));
          for (auto& v : C) v = normal(rng);
          std::vector<float> want = C, got = C;
          reference(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(),
                    ldc);
          if constexpr (std::is_same_v<in_t, float>) {
            gemm.f32(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(),
                     ldc);
          } else if constexpr (std::is_same_v<in_t, c10::BFloat16>) {
            gemm.bf16(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(),
                      ldc);
          } else {
            gemm.f16(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(),
                     ldc);
          }
          ASSERT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
              << name << " M=" << s.M << " N=" << s.N << " K=" << s.K
              << " ta=" << (ta == Trans::Yes) << " tb=" << (tb == Trans::Yes) << " alpha=" << alpha
              << " beta=" << beta;
        }
      }
    }
  }
}

TEST(PortableGemm, EveryCopyGivesTheReferenceLoopsBits) {
  std::mt19937 rng(3);
  for (const auto& [name, gemm] : copies_this_cpu_runs()) {
    check_bitwise<float>(gemm, name, rng);
    check_bitwise<c10::BFloat16>(gemm, name, rng);
    check_bitwise<c10::Half>(gemm, name, rng);
  }
}

}  // namespace
}  // namespace mhsa_test
