#pragma once
// Attention scores of 16-bit inputs on their micro-kernel, the same bits whichever tile asks for
// them (forward, the weights sweep and backward's recompute use tiles of different shapes, and
// backward's probabilities must be bitwise the forward's): the (query, key) plane is cut into a
// fixed grid of kScoreBlock x kScoreBlock blocks, each one identical micro-kernel call into a
// scratch block, of which a tile copies the part it needs.
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#include "engine/packed_layout.h"

namespace mhsa::cpu {

constexpr int64_t kScoreBlock = 64;

// q.length positions of one operand: position p at data + p * ld, K (head dimension) elements.
template <typename T>
struct ScoreOperand {
  const T* data;
  int64_t ld, length;
};

// The packed key blocks of one head's keys, kept across the score tiles of one task run (one
// thread, one call): each 64-key block is packed once, not once per query tile that reads it.
// Keyed by the keys' address; its owner (a kernel's scratch) lives no longer than the call.
class ScoreKeyCache {
 public:
  // Out of line (score_blocks.cpp): the kernels' instruction-set copies must not each emit them.
  ScoreKeyCache();
  ~ScoreKeyCache();
  ScoreKeyCache(const ScoreKeyCache&) = delete;
  ScoreKeyCache& operator=(const ScoreKeyCache&) = delete;

 private:
  template <typename half_t>
  friend const half_t* cached_key_block(ScoreKeyCache*, const half_t*, int64_t, int64_t, int64_t,
                                        int64_t, Layout16);
  const void* keys_ = nullptr;
  int64_t length_ = 0, K_ = 0, block_elements_ = 0;
  std::vector<uint16_t> packed_;  // bfloat16 or float16 bits, block b at b * block_elements_
  std::vector<uint8_t> ready_;    // per block: packed for keys_
};

// Whether dtype's micro-kernel runs here for head dimension K (bfloat16 or float16 only).
bool score_blocks_available(c10::ScalarType dtype, int64_t K);

// S[i - i0][j - j0] (row stride lds) = scale * q_i . k_j for i0 <= i < i1, j0 <= j < j1; the
// key blocks packed through cache where one is given (the same bits either way).
void score_blocks(ScoreOperand<c10::BFloat16> q, ScoreOperand<c10::BFloat16> k, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds, ScoreKeyCache* cache = nullptr);
void score_blocks(ScoreOperand<c10::Half> q, ScoreOperand<c10::Half> k, int64_t K, float scale,
                  int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                  ScoreKeyCache* cache = nullptr);

}  // namespace mhsa::cpu
