#pragma once
// 16-bit packing: B operands laid out for the 16-bit micro-kernels in their layout (VNNI pairs,
// cpublas::pack's matrix-unit layout, or plain rows; see packed_layout.h). Internal to the
// engine, micro-kernel build only.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "engine/brgemm.h"
#include "engine/packed_layout.h"

#ifdef MHSA_USE_BRGEMM

namespace mhsa::cpu {

// cpublas::pack, or the stand-in a test put on this thread (probe_micro_kernel16): how tests
// feed the probe another CPU's packing rules. nullptr restores cpublas::pack.
void set_pack_stand_in(PackFunction pack);

// Rows k0..k0+kc of op(B) (K x N), columns j0..j0+nb (nb <= kBlockN), as one block of the
// 16-bit micro-kernel's B in `layout`, kc rounded up to an even number of rows with zeros
// (VNNI pairs need it; the other layouts get the same shapes, so one code path serves all).
// A transposed B (rows of B^T, e.g. a weight matrix for x W^T) packs as cheaply as a plain one.
template <typename half_t>
void pack_b_block(Trans tb, const half_t* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0,
                  int64_t nb, Layout16 layout, half_t* pb, Scratch& s);

// B^T in the 16-bit micro-kernel's layout: column c of B is row c of `rows` (stride ld), K long
// (even), nb <= kBlockN columns (the keys of a score block, a transposed weight block).
template <typename half_t>
void pack_rows_as_columns(const half_t* rows, int64_t ld, int64_t nb, int64_t K, Layout16 layout,
                          half_t* out, Scratch& s);

}  // namespace mhsa::cpu

#endif  // MHSA_USE_BRGEMM
