#pragma once
// The keys of a forward call transposed once, for its float32 scores on the tile GEMM: K^T per
// (batch, key/value head) as D rows of S (ForwardArgs::keys_t). Without it each (query block, key
// block) tile transposes its K_j itself (score_pack), once per query block: L / forward_q times.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "engine/tile_gemm.h"
#include "engine/transpose_tile.h"
#include "kernels/attention_args.h"

namespace mhsa::cpu {

// A K^T of at most this many floats (8 MiB) is written into storage that the calling thread
// keeps between calls, grown to twice what a call needs: one-token calls over a growing cache
// would otherwise take a fresh, slightly larger allocation every call (where glibc maps it
// afresh, a page fault per 4 KiB). Larger ones (long sequences) are allocated per call.
constexpr int64_t kKeptKeysFloats = int64_t{1} << 21;

inline float* kept_keys_storage(int64_t floats) {
  thread_local std::vector<float> storage;
  const auto needed = static_cast<size_t>(floats);
  if (storage.size() < needed) {
    storage = std::vector<float>();  // the old storage freed before the new one is taken
    storage.resize(std::min<size_t>(kKeptKeysFloats, 2 * needed));
  }
  return storage.data();
}

// Fills and points a.keys_t at K^T where the scores run on the tile GEMM and more than one
// (query block, query head) reads each key: several query blocks, or the query heads of a
// grouped-query group (one-token calls in generation); returns its storage (undefined where the
// one tile that reads K_j transposes it itself).
template <typename scalar_t>
at::Tensor transpose_keys_once(ForwardArgs<scalar_t>& a, const at::TensorOptions& options) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const AttentionGeometry& g = a.g;
    const bool read_once = g.L <= a.tiles.forward_q && g.H == g.H_kv;
    if (!tile_gemm_f32_chain_order() || read_once || g.N * g.S * g.D == 0) return {};
    const int64_t floats = g.N * g.H_kv * g.D * g.S;
    at::Tensor keys_t = floats <= kKeptKeysFloats
                            ? at::from_blob(kept_keys_storage(floats), {g.N, g.H_kv, g.D, g.S},
                                            options.dtype(at::kFloat))
                            : at::empty({g.N, g.H_kv, g.D, g.S}, options.dtype(at::kFloat));
    float* out = keys_t.mutable_data_ptr<float>();
    constexpr int64_t kKeys = 256;  // keys per task: 64 KiB of K at D = 64
    const int64_t chunks = (g.S + kKeys - 1) / kKeys;
    at::parallel_for(0, g.N * g.H_kv * chunks, 8, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t head = t / chunks, n = head / g.H_kv, hk = head % g.H_kv;
        const int64_t j0 = (t % chunks) * kKeys, j1 = j0 + kKeys < g.S ? j0 + kKeys : g.S;
        transpose_tile(a.k + g.k.at(n, j0, hk), g.k.seq, j1 - j0, g.D, out + head * g.D * g.S + j0,
                       g.S);
      }
    });
    a.keys_t = out;
    return keys_t;
  } else {
    (void)a, (void)options;
    return {};
  }
}

}  // namespace mhsa::cpu
