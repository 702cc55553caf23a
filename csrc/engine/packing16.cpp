#include "engine/packing16.h"

#ifdef MHSA_USE_BRGEMM

#include <immintrin.h>

#include <cstring>

#include "engine/transpose.h"

namespace mhsa::cpu {
namespace {

thread_local PackFunction pack_stand_in = nullptr;

void pack16(int64_t K, int64_t N, int64_t ld_in, int64_t ld_out, at::ScalarType dtype,
            const void* in, void* out) {
  if (pack_stand_in != nullptr) {
    pack_stand_in(K, N, ld_in, ld_out, dtype, in, out);
  } else {
    cpublas::pack(K, N, ld_in, ld_out, dtype, dtype, in, out);
  }
}

// out[2j] = r0[j], out[2j + 1] = r1[j] (0 where r1 is null) for j < n: two rows of a row-major
// B as one row of VNNI pairs.
template <typename half_t>
void interleave_rows(const half_t* r0, const half_t* r1, int64_t n, half_t* out) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 8 <= n; j += 8) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + j));
    const __m128i b = r1 != nullptr ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + j))
                                    : _mm_setzero_si128();
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j), _mm_unpacklo_epi16(a, b));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j + 8), _mm_unpackhi_epi16(a, b));
  }
#endif
  const half_t zero(0.0f);
  for (; j < n; ++j) {
    out[2 * j] = r0[j];
    out[2 * j + 1] = r1 != nullptr ? r1[j] : zero;
  }
}

}  // namespace

void set_pack_stand_in(PackFunction pack) { pack_stand_in = pack; }

template <typename half_t>
void pack_b_block(Trans tb, const half_t* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0,
                  int64_t nb, Layout16 layout, half_t* pb, Scratch& s) {
  const half_t zero(0.0f);
  const int64_t kp = (kc + 1) / 2 * 2;
  auto b_at = [&](int64_t k, int64_t j) -> half_t {
    if (k >= kc) return zero;
    return tb == Trans::No ? B[(k0 + k) * ldb + j0 + j] : B[(j0 + j) * ldb + k0 + k];
  };
  if (tb == Trans::Yes && kp == kc) {
    pack_rows_as_columns(B + j0 * ldb + k0, ldb, nb, kc, layout, pb, s);
  } else if (layout != Layout16::Vnni) {
    // Row-major kp x nb: the plain layout itself, or cpublas::pack's input.
    half_t* plain = layout == Layout16::Plain ? pb : sized16<half_t>(s.plain16, kp * nb);
    if (tb == Trans::No) {
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(plain + k * nb, B + (k0 + k) * ldb + j0, static_cast<size_t>(nb) * 2);
    } else {
      transpose_block(B + j0 * ldb + k0, ldb, nb, kc, plain, nb);
    }
    for (int64_t k = kc; k < kp; ++k)
      for (int64_t j = 0; j < nb; ++j) plain[k * nb + j] = zero;
    if (layout == Layout16::Pack)
      pack16(kp, nb, nb, packed_block_shape(layout, kc, nb).ld, dtype16<half_t>(), plain, pb);
  } else if (tb == Trans::No) {
    for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
      const half_t* r0 = B + (k0 + 2 * k2) * ldb + j0;
      interleave_rows(r0, 2 * k2 + 1 < kc ? r0 + ldb : nullptr, nb, pb + k2 * 2 * nb);
    }
  } else {
    for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
      half_t* row = pb + k2 * 2 * nb;
      for (int64_t j = 0; j < nb; ++j) {
        row[2 * j] = b_at(2 * k2, j);
        row[2 * j + 1] = b_at(2 * k2 + 1, j);
      }
    }
  }
}

// The plain layout is a transpose of 16-bit words (cpublas::pack starts from it); the VNNI
// layout is a transpose of 32-bit words: packed row d/2 holds the pairs (rows[c][d],
// rows[c][d+1]) for c = 0..nb, so each pair moves as one word.
template <typename half_t>
void pack_rows_as_columns(const half_t* rows, int64_t ld, int64_t nb, int64_t K, Layout16 layout,
                          half_t* out, Scratch& s) {
  if (layout == Layout16::Plain) {
    transpose_block(rows, ld, nb, K, out, nb);
  } else if (layout == Layout16::Pack) {
    half_t* plain = sized16<half_t>(s.plain16, K * nb);
    transpose_block(rows, ld, nb, K, plain, nb);
    pack16(K, nb, nb, packed_block_shape(layout, K, nb).ld, dtype16<half_t>(), plain, out);
  } else if (K % 2 == 0 && ld % 2 == 0) {
    transpose_words(rows, ld / 2, nb, K / 2, out, nb);
  } else {
    for (int64_t c = 0; c < nb; ++c) {
      const half_t* r = rows + c * ld;
      for (int64_t d = 0; d < K; ++d) out[(d / 2) * 2 * nb + 2 * c + d % 2] = r[d];
    }
  }
}

template void pack_b_block<c10::BFloat16>(Trans, const c10::BFloat16*, int64_t, int64_t, int64_t,
                                          int64_t, int64_t, Layout16, c10::BFloat16*, Scratch&);
template void pack_b_block<c10::Half>(Trans, const c10::Half*, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, Layout16, c10::Half*, Scratch&);
template void pack_rows_as_columns<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t,
                                                  Layout16, c10::BFloat16*, Scratch&);
template void pack_rows_as_columns<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t, Layout16,
                                              c10::Half*, Scratch&);

}  // namespace mhsa::cpu

#endif  // MHSA_USE_BRGEMM
