#include "engine/score_blocks.h"

#include <c10/util/Exception.h>

#include <type_traits>

#include "engine/brgemm.h"
#include "engine/micro_kernel_probe.h"
#include "engine/packing16.h"

namespace mhsa::cpu {

#ifdef MHSA_USE_BRGEMM
namespace {

// The scores S[i - i0][j - j0] = scale * q_i . k_j on the fixed grid of score blocks (see
// score_blocks.h), for either 16-bit type on its micro-kernel.
template <typename half_t>
void score_blocks16(ScoreOperand<half_t> q, ScoreOperand<half_t> k, int64_t K, float scale,
                    int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds,
                    Layout16 layout) {
  static_assert(kScoreBlock == kBlockN, "a score block's keys are one packed B block");
  if (i1 <= i0 || j1 <= j0) return;
  Scratch& s = scratch();
  half_t* packed = sized16<half_t>(s.b16, packed_block_shape(layout, K, kScoreBlock).elements);
  float* block = sized(s.c, kScoreBlock * kScoreBlock);
  for (int64_t kb = j0 / kScoreBlock * kScoreBlock; kb < j1; kb += kScoreBlock) {
    const int64_t nb = k.length - kb < kScoreBlock ? k.length - kb : kScoreBlock;
    pack_rows_as_columns(k.data + kb * k.ld, k.ld, nb, K, layout, packed, s);
    const int64_t c0 = j0 > kb ? j0 : kb, c1 = j1 < kb + nb ? j1 : kb + nb;
    for (int64_t qb = i0 / kScoreBlock * kScoreBlock; qb < i1; qb += kScoreBlock) {
      const int64_t mb = q.length - qb < kScoreBlock ? q.length - qb : kScoreBlock;
      // The one call that computes these scores, whichever tile asked for them.
      cpublas::brgemm(mb, nb, K, q.ld, packed_block_shape(layout, K, nb).ld, kScoreBlock, false,
                      q.data + qb * q.ld, packed, block, true);
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
                          int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds) {
  const char* name = std::is_same_v<half_t, c10::BFloat16> ? "bfloat16" : "float16";
#ifdef MHSA_USE_BRGEMM
  TORCH_CHECK(score_blocks_available(dtype16<half_t>(), K), "mhsa: ", name,
              " score blocks are not available");
  score_blocks16(q, k, K, scale, i0, i1, j0, j1, S, lds, kernel16<half_t>(support()).layout);
#else
  (void)q, (void)k, (void)K, (void)scale, (void)i0, (void)i1, (void)j0, (void)j1, (void)S,
      (void)lds;
  TORCH_CHECK(false, "mhsa: ", name, " score blocks are not available in this build");
#endif
}

}  // namespace

void score_blocks(ScoreOperand<c10::BFloat16> q, ScoreOperand<c10::BFloat16> k, int64_t K,
                  float scale, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S,
                  int64_t lds) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds);
}

void score_blocks(ScoreOperand<c10::Half> q, ScoreOperand<c10::Half> k, int64_t K, float scale,
                  int64_t i0, int64_t i1, int64_t j0, int64_t j1, float* S, int64_t lds) {
  checked_score_blocks(q, k, K, scale, i0, i1, j0, j1, S, lds);
}

}  // namespace mhsa::cpu
