#include "engine/brgemm.h"

#ifdef MHSA_USE_BRGEMM

#include "engine/packing16.h"

namespace mhsa::cpu {

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

Target prepare_target(int64_t M, int64_t N, float alpha, float beta, float* C, int64_t ldc,
                      Scratch& s) {
  if (alpha == 1.0f) {
    if (beta != 0.0f && beta != 1.0f) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * ldc + j] *= beta;
    }
    return {C, ldc, beta != 0.0f};
  }
  return {sized(s.c, M * N), N, false};
}

void finish_target(const Target& t, int64_t M, int64_t N, float alpha, float beta, float* C,
                   int64_t ldc) {
  if (t.c == C) return;
  for (int64_t i = 0; i < M; ++i) {
    const float* p = t.c + i * t.ldc;
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < N; ++j) c[j] = alpha * p[j];
    } else if (beta == 1.0f) {
      for (int64_t j = 0; j < N; ++j) c[j] += alpha * p[j];
    } else {
      for (int64_t j = 0; j < N; ++j) c[j] = beta * c[j] + alpha * p[j];
    }
  }
}

namespace {

// Rows k0..k0+kc of op(B) (K x N) as a row-major kc x N float block.
template <typename in_t>
void copy_b_block(Trans tb, const in_t* B, int64_t ldb, int64_t k0, int64_t kc, int64_t N,
                  float* out) {
  for (int64_t k = 0; k < kc; ++k) {
    float* row = out + k * N;
    if (tb == Trans::No) {
      const in_t* b = B + (k0 + k) * ldb;
      for (int64_t j = 0; j < N; ++j) row[j] = to_float(b[j]);
    } else {
      for (int64_t j = 0; j < N; ++j) row[j] = to_float(B[j * ldb + k0 + k]);
    }
  }
}

}  // namespace

template <typename in_t>
void brgemm_f32(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const in_t* A,
                int64_t lda, const in_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  constexpr bool kFloat = std::is_same_v<in_t, float>;
  Scratch& s = scratch();
  const Target t = prepare_target(M, N, alpha, beta, C, ldc, s);
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t kc = K - k0 < kChunkK ? K - k0 : kChunkK;
    const float* a = nullptr;
    int64_t ld_a = 0;
    if constexpr (kFloat) {
      if (ta == Trans::No) {
        a = A + k0;
        ld_a = lda;
      }
    }
    if (a == nullptr) {
      float* buf = sized(s.a, M * kc);
      copy_a_block(ta, A, lda, k0, kc, M, kc, buf);
      a = buf;
      ld_a = kc;
    }
    const float* b = nullptr;
    int64_t ld_b = 0;
    if constexpr (kFloat) {
      if (tb == Trans::No) {
        b = B + k0 * ldb;
        ld_b = ldb;
      }
    }
    if (b == nullptr) {
      float* buf = sized(s.b, kc * N);
      copy_b_block(tb, B, ldb, k0, kc, N, buf);
      b = buf;
      ld_b = N;
    }
    const bool add_C = k0 > 0 || t.add_first;
    cpublas::brgemm(M, N, kc, ld_a, ld_b, t.ldc, add_C, a, b, t.c, false);
  }
  finish_target(t, M, N, alpha, beta, C, ldc);
}

template void brgemm_f32<float>(Trans, Trans, int64_t, int64_t, int64_t, float, const float*,
                                int64_t, const float*, int64_t, float, float*, int64_t);
template void brgemm_f32<c10::BFloat16>(Trans, Trans, int64_t, int64_t, int64_t, float,
                                        const c10::BFloat16*, int64_t, const c10::BFloat16*,
                                        int64_t, float, float*, int64_t);
template void brgemm_f32<c10::Half>(Trans, Trans, int64_t, int64_t, int64_t, float,
                                    const c10::Half*, int64_t, const c10::Half*, int64_t, float,
                                    float*, int64_t);

template <typename half_t>
void brgemm16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const half_t* A,
              int64_t lda, const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc,
              Layout16 layout) {
  Scratch& s = scratch();
  brgemm16_blocks(ta, M, N, K, alpha, A, lda, beta, C, ldc, layout, s,
                  [&](int64_t k0, int64_t kc, int64_t j0, int64_t nb) {
                    half_t* pb =
                        sized16<half_t>(s.b16, packed_block_shape(layout, kc, nb).elements);
                    pack_b_block(tb, B, ldb, k0, kc, j0, nb, layout, pb, s);
                    return static_cast<const half_t*>(pb);
                  });
}

template void brgemm16<c10::BFloat16>(Trans, Trans, int64_t, int64_t, int64_t, float,
                                      const c10::BFloat16*, int64_t, const c10::BFloat16*, int64_t,
                                      float, float*, int64_t, Layout16);
template void brgemm16<c10::Half>(Trans, Trans, int64_t, int64_t, int64_t, float, const c10::Half*,
                                  int64_t, const c10::Half*, int64_t, float, float*, int64_t,
                                  Layout16);

}  // namespace mhsa::cpu

#endif  // MHSA_USE_BRGEMM
