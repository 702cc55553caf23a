// torch.ops.mhsa._tile_gemm_rate: the single-thread rate of the tile GEMM engine (the oneDNN
// micro-kernel, or the portable loops where those run) on one tile shape, for scripts/bench's
// efficiency column: mhsa's GFLOP/s as a share of its own engine's rate carries from one CPU to
// another, where a ratio against torch depends on torch's GEMM library there.
#include "engine/tile_rate.h"

#include <ATen/ATen.h>

#include <chrono>

#include "engine/tile_gemm.h"

namespace mhsa::cpu {
namespace {

template <typename T>
double rate(int64_t M, int64_t N, int64_t K, double min_seconds) {
  const at::Tensor a = at::randn({M, K}).to(c10::CppTypeToScalarType<T>::value);
  const at::Tensor b = at::randn({K, N}).to(c10::CppTypeToScalarType<T>::value);
  at::Tensor c = at::zeros({M, N}, at::kFloat);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  float* pc = c.mutable_data_ptr<float>();
  auto once = [&] { tile_gemm(Trans::No, Trans::No, M, N, K, 1.0f, pa, K, pb, N, 0.0f, pc, N); };
  for (int i = 0; i < 3; ++i) once();  // JIT and caches warm
  using clock = std::chrono::steady_clock;
  int64_t calls = 0;
  const auto start = clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 16; ++i) once();
    calls += 16;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  } while (elapsed < min_seconds);
  tile_gemm_release();
  return 2.0 * M * N * K * calls / elapsed / 1e9;
}

}  // namespace

double tile_gemm_rate(at::ScalarType dtype, int64_t m, int64_t n, int64_t k, double min_seconds) {
  TORCH_CHECK(m > 0 && n > 0 && k > 0, "_tile_gemm_rate: m, n and k must be positive, got ", m,
              ", ", n, ", ", k);
  switch (dtype) {
    case at::kFloat: return rate<float>(m, n, k, min_seconds);
    case at::kBFloat16: return rate<c10::BFloat16>(m, n, k, min_seconds);
    case at::kHalf: return rate<c10::Half>(m, n, k, min_seconds);
    default:
      TORCH_CHECK(false, "_tile_gemm_rate: dtype must be float32, bfloat16 or float16, got ",
                  dtype);
  }
}

}  // namespace mhsa::cpu
