#include "cpu/tile_gemm.h"

#include <c10/util/Exception.h>

#include <climits>
#include <cstdint>

#ifdef MHSA_HAVE_TORCH_BLAS
// The official torch wheels link MKL into libtorch_cpu.so and export these symbols; CMake
// checked that they are there (ATen's typed cpublas::gemm overloads are not exported). Called
// inside our parallel regions, MKL runs single-threaded, which is what we want per tile.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                            float* c, int ldc);
// mkl_service.h maps mkl_set_num_threads_local to this by-value entry point (the lowercase
// symbol is the Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int nt);
}
#endif

namespace mhsa::cpu {
namespace {

// Portable fallback and reference: plain loops, accumulating in the output type.
template <typename in_t, typename acc_t>
void reference_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, acc_t alpha, const in_t* A,
                    int64_t lda, const in_t* B, int64_t ldb, acc_t beta, acc_t* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    acc_t* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = beta == acc_t(0) ? acc_t(0) : beta * c[j];
    for (int64_t k = 0; k < K; ++k) {
      const acc_t a = static_cast<acc_t>(ta == Trans::No ? A[i * lda + k] : A[k * lda + i]);
      if (a == acc_t(0)) continue;
      const acc_t alpha_a = alpha * a;
      if (tb == Trans::No) {
        const in_t* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += alpha_a * static_cast<acc_t>(b[j]);
      } else {
        for (int64_t j = 0; j < N; ++j) c[j] += alpha_a * static_cast<acc_t>(B[j * ldb + k]);
      }
    }
  }
}

// Sizes beyond 32-bit BLAS integers never reach a tile (tiles are at most a few hundred rows,
// strides at most 3E), but check rather than truncate.
inline int to_blas_int(int64_t v, const char* what) {
  TORCH_CHECK(v <= INT_MAX, "mhsa: tile ", what, " = ", v, " exceeds the BLAS integer range");
  return static_cast<int>(v);
}

// Degenerate shapes are handled here so BLAS never sees M, N or K of 0 (some
// implementations reject the leading dimensions then).
template <typename acc_t>
bool handle_degenerate(int64_t M, int64_t N, int64_t K, acc_t beta, acc_t* C, int64_t ldc) {
  if (M == 0 || N == 0) return true;
  if (K > 0) return false;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      C[i * ldc + j] = beta == acc_t(0) ? acc_t(0) : beta * C[i * ldc + j];
  return true;
}

#ifdef MHSA_HAVE_TORCH_BLAS
// Every tile GEMM runs on the calling thread. Inside an OpenMP parallel region MKL already
// does, but at::parallel_for runs a range smaller than its grain inline on the calling thread,
// outside any parallel region, where MKL would otherwise split the tile over its own threads
// and round differently for a different thread count.
class SequentialBlas {
 public:
  SequentialBlas() : previous_(MKL_Set_Num_Threads_Local(1)) {}
  ~SequentialBlas() { MKL_Set_Num_Threads_Local(previous_); }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_;
};
#endif

}  // namespace

#ifdef MHSA_HAVE_TORCH_BLAS
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the same transpose flags
// with the operands and M, N swapped.
template <typename T, typename FortranGemm>
void column_major_gemm(FortranGemm gemm, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                       T alpha, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                       int64_t ldc) {
  const char tra = ta == Trans::No ? 'N' : 'T', trb = tb == Trans::No ? 'N' : 'T';
  const int m = to_blas_int(N, "N"), n = to_blas_int(M, "M"), k = to_blas_int(K, "K");
  const int la = to_blas_int(ldb, "ldb"), lb = to_blas_int(lda, "lda"),
            lc = to_blas_int(ldc, "ldc");
  SequentialBlas sequential;
  gemm(&trb, &tra, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}
#endif

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
#ifdef MHSA_HAVE_TORCH_BLAS
  column_major_gemm(sgemm_, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
#ifdef MHSA_HAVE_TORCH_BLAS
  column_major_gemm(dgemm_, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void tile_gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
               const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  if (handle_degenerate(M, N, K, beta, C, ldc)) return;
#ifdef MHSA_HAVE_TORCH_BLAS
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
  SequentialBlas sequential;
  cblas_gemm_bf16bf16f32(kRowMajor, ta == Trans::No ? kNoTrans : kTrans,
                         tb == Trans::No ? kNoTrans : kTrans, to_blas_int(M, "M"),
                         to_blas_int(N, "N"), to_blas_int(K, "K"), alpha,
                         reinterpret_cast<const uint16_t*>(A), to_blas_int(lda, "lda"),
                         reinterpret_cast<const uint16_t*>(B), to_blas_int(ldb, "ldb"), beta, C,
                         to_blas_int(ldc, "ldc"));
#else
  reference_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace mhsa::cpu
