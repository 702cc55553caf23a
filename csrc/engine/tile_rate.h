#pragma once
// The single-thread GFLOP/s of the tile GEMM engine on one (m x k) by (k x n) tile shape in
// dtype, timed for at least min_seconds: torch.ops.mhsa._tile_gemm_rate (scripts/bench).
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace mhsa::cpu {

double tile_gemm_rate(at::ScalarType dtype, int64_t m, int64_t n, int64_t k, double min_seconds);

}  // namespace mhsa::cpu
