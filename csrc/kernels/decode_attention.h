#pragma once
// The attention of decode_step (mha_decode.cpp): each new query over the cached keys and
// values, compiled once per instruction set like the attention kernels (a token's step is
// mostly this pass over the cache and the two projections).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace mhsa::cpu {

// Where the new tokens' rows are: x_new (and its qkv and context) is (T, N, .) or (N, T, .).
struct DecodeRows {
  int64_t N, T;
  bool batch_first;
};

template <typename scalar_t>
struct DecodeAttentionArgs {
  const scalar_t* qkv;  // the new tokens' projections, rows of 3E
  const scalar_t* key_cache;
  const scalar_t* value_cache;  // (N, H, max_len, D)
  scalar_t* context;            // rows of E
  DecodeRows rows;
  int64_t H, D, max_len;
  int64_t length;  // cached tokens before the new ones
};

// Tasks [begin, end) of N * H * T, task (n, h, t): softmax(q k_j / sqrt(D)) over the cached keys
// j <= length + t, times the cached values, into the context row.
template <typename scalar_t>
using DecodeAttentionTasks = void (*)(const DecodeAttentionArgs<scalar_t>&, int64_t begin,
                                      int64_t end);

#define MHSA_DECLARE_DECODE_ATTENTION(isa)                                                    \
  namespace isa {                                                                             \
  template <typename scalar_t>                                                                \
  DecodeAttentionTasks<scalar_t> make_decode_attention();                                     \
  extern template DecodeAttentionTasks<float> make_decode_attention<float>();                 \
  extern template DecodeAttentionTasks<double> make_decode_attention<double>();               \
  extern template DecodeAttentionTasks<c10::BFloat16> make_decode_attention<c10::BFloat16>(); \
  extern template DecodeAttentionTasks<c10::Half> make_decode_attention<c10::Half>();         \
  }

MHSA_DECLARE_DECODE_ATTENTION(isa_default)
#if defined(__x86_64__) || defined(__i386__)
MHSA_DECLARE_DECODE_ATTENTION(isa_avx2)
MHSA_DECLARE_DECODE_ATTENTION(isa_avx512)
#endif
#undef MHSA_DECLARE_DECODE_ATTENTION

}  // namespace mhsa::cpu
