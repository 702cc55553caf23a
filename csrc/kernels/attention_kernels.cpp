#include "kernels/attention_kernels.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>

namespace mhsa::cpu {

TileSizes choose_tile_sizes(int64_t L) {
  TileSizes t;
  if (const char* env = std::getenv("MHSA_TILES")) {
    long fq = 0, fk = 0, bq = 0, bkv = 0;
    if (std::sscanf(env, "%ld,%ld,%ld,%ld", &fq, &fk, &bq, &bkv) == 4 && fq > 0 && fk > 0 &&
        bq > 0 && bkv > 0) {
      return TileSizes{fq, fk, bq, bkv};
    }
    TORCH_WARN("mhsa: ignoring malformed MHSA_TILES=", env, " (expected fq,fk,bq,bkv)");
  }
  // Small sequences: small tiles keep enough tasks for every thread. Long ones: larger tiles
  // amortize the per-call GEMM overhead (operand copies and packing) over more work.
  t.forward_q = L < 768 ? 64 : 128;
  t.forward_k = 512;
  t.backward_q = 64;
  t.backward_kv = L < 1024 ? 128 : 256;
  return t;
}

template <typename scalar_t>
const AttentionKernels<scalar_t>& attention_kernels() {
  static const AttentionKernels<scalar_t> kernels = MHSA_ISA_COPY(make_attention_kernels<scalar_t>);
  return kernels;
}

template const AttentionKernels<float>& attention_kernels<float>();
template const AttentionKernels<double>& attention_kernels<double>();
template const AttentionKernels<c10::BFloat16>& attention_kernels<c10::BFloat16>();
template const AttentionKernels<c10::Half>& attention_kernels<c10::Half>();

}  // namespace mhsa::cpu
