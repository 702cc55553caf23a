#include "engine/score_blocks.h"

#include <c10/util/Exception.h>

#include <type_traits>

#include "engine/brgemm.h"
#include "engine/micro_kernel_probe.h"
#include "engine/packing16.h"

namespace mhsa::cpu {

ScoreKeyCache::ScoreKeyCache() = default;
ScoreKeyCache::~ScoreKeyCache() = default;

#ifdef MHSA_USE_BRGEMM
// The packed block of keys kb.. (kb a multiple of kScoreBlock) of the keys at `keys` (row stride
// ld, length keys), from the cache, packed on first use; a new keys address restarts the cache.
template <typename half_t>
const half_t* cached_key_block(ScoreKeyCache* c, const half_t* keys, int64_t ld, int64_t length,
                               int64_t K, int64_t kb, Layout16 layout) {
  if (c->keys_ != keys || c->length_ != length || c->K_ != K) {
    c->keys_ = keys;
    c->length_ = length;
    c->K_ = K;
    c->block_elements_ = packed_block_shape(layout, K, kScoreBlock).elements;
    const int64_t blocks = (length + kScoreBlock - 1) / kScoreBlock;
    c->packed_.resize(static_cast<size_t>(blocks * c->block_elements_));
    c->ready_.assign(static_cast<size_t>(blocks), 0);
  }
  const int64_t b = kb / kScoreBlock;
  half_t* out = reinterpret_cast<half_t*>(c->packed_.data()) + b * c->block_elements_;
  if (!c->ready_[static_cast<size_t>(b)]) {
    const int64_t nb = length - kb < kScoreBlock ? length - kb : kScoreBlock;
    pack_rows_as_columns(keys + kb * ld, ld, nb, K, layout, out, scratch());
    c->ready_[static_cast<size_t>(b)] = 1;
  }
  return out;
}

namespace {

// The scores S[i - i0][j - j0] = scale * q_i . k_j on the fixed grid of score blocks (see
// score_blocks.h), for either 16-bit type on its micro-kernel.
template <typename half_t>
void score_blocks16(ScoreOperand<half_t> q, ScoreOperand<half_t> k, int64_t K, float scale,
                    int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                    Layout16 layout, ScoreKeyCache* cache) {
  static_assert(kScoreBlock == kBlockN, "a score block's keys are one packed B block");
  if (i1 <= i0 || j1 <= j0) return;
  Scratch& s = scratch();
  half_t* scratch_block =
      cache != nullptr
          ? nullptr
          : sized16<half_t>(s.b16, packed_block_shape(layout, K, kScoreBlock).elements);
  float* block = sized(s.c, kScoreBlock * kScoreBlock);
  for (int64_t kb = j0 / kScoreBlock * kScoreBlock; kb < j1; kb += kScoreBlock) {
    const int64_t nb = k.length - kb < kScoreBlock ? k.length - kb : kScoreBlock;
    const half_t* packed = scratch_block;
    if (cache != nullptr) {
      packed = cached_key_block(cache, k.data, k.ld, k.length, K, kb, layout);
    } else {
      pack_rows_as_columns(k.data + kb * k.ld, k.ld, nb, K, layout, scratch_block, s);
    }
    const int64_t c0 = j0 > kb ? j0 : kb, c1 = j1 < kb + nb ? j1 : kb + nb;
    const int64_t ld_b = packed_block_shape(layout, K, nb).ld;
    for (int64_t qb = i0 / kScoreBlock * kScoreBlock; qb < i1; qb += kScoreBlock) {
      const int64_t mb = q.length - qb < kScoreBlock ? q.length - qb : kScoreBlock;
      if (scale == 1.0f && qb >= i0 && qb + mb <= i1 && kb >= j0 && kb + nb <= j1) {
        // A whole block inside the tile, unscaled: written in place, no copy.
        cpublas::brgemm(mb, nb, K, q.ld, ld_b, lds, false, q.data + qb * q.ld, packed,
                        S + (qb - i0) * lds + (kb - j0), true);
        continue;
      }
      // The one call that computes these scores, whichever tile asked for them.
      cpublas::brgemm(mb, nb, K, q.ld, ld_b, kScoreBlock, false, q.data + qb * q.ld, packed, block,
                      true);
      const int64_t r0 = i0 > qb ? i0 : qb, r1 = i1 < qb + mb ? i1 : qb + mb;
      for (int64_t i = r0; i < r1; ++i) {
        const float* b = block + (i - qb) * kScoreBlock;
        float* out = S + (i - i0) * lds;
        for (int64_t j = c0; j < c1; ++j) out[j - j0] = scale * b[j - kb];
      }
    }
  }
}

}  // namespace
#endif  // MHSA_USE_BRGEMM

bool score_blocks_available(c10::ScalarType dtype, int64_t K) {
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  const bool kernel = dtype == c10::ScalarType::BFloat16 ? s.bf16
                      : dtype == c10::ScalarType::Half   ? s.f16
                                                         : false;
  // An even head dimension: Q is read in place, in VNNI pairs where that is the layout.
  return kernel && K > 0 && K % 2 == 0 && K <= kChunkK;
#else
  (void)dtype, (void)K;
  return false;
#endif
}

namespace {

// score_blocks for either 16-bit type: checked, on that type's micro-kernel and B layout.
template <typename half_t>
void checked_score_blocks(ScoreOperand<half_t> q, ScoreOperand<half_t> k, int64_t K, float scale,
                          int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                          ScoreKeyCache* cache) {
  const char* name = std::is_same_v<half_t, c10::BFloat16> ? "bfloat16" : "float16";
#ifdef MHSA_USE_BRGEMM
  TORCH_CHECK(score_blocks_available(dtype16<half_t>(), K), "mhsa: ", name,
              " score blocks are not available");
  score_blocks16(q, k, K, scale, i0, i1, j0, j1, S, lds, kernel16<half_t>(support()).layout, cache);
#else
  (void)q, (void)k, (void)K, (void)scale, (void)i0, (void)i1, (void)j0, (void)j1, (void)S,
      (void)lds, (void)cache;
  TORCH_CHECK(false, "mhsa: ", name, " score blocks are not available in this build");
#endif
}

}  // namespace

void score_blocks(ScoreOperand<c10::BFloat16> q, ScoreOperand<c10::BFloat16> k, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds, ScoreKeyCache* cache) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds, cache);
}

void score_blocks(ScoreOperand<c10::Half> q, ScoreOperand<c10::Half> k, int64_t K, float scale,
                  int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                  ScoreKeyCache* cache) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds, cache);
}

}  // namespace mhsa::cpu
