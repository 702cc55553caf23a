#include "cpu/projection_gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/parallel_stats.h"
#include "cpu/weight_cache.h"
#include "engine/cpu_capability.h"
#include "engine/micro_kernel_probe.h"
#include "engine/small_rows_gemm.h"
#include "engine/tile_gemm.h"
#include "engine/transpose.h"
#include "engine/vector_routines.h"

namespace mhsa::cpu {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Square output tiles of 256, halved (down to 64) while that leaves fewer than 32 tiles, so
// small projections still spread over the cores. A function of the shape only.
int64_t output_tile(int64_t M, int64_t N) {
  int64_t tile = 256;
  while (tile > 64 && ceil_div(M, tile) * ceil_div(N, tile) < 32) tile /= 2;
  return tile;
}

// The B column tile that a thread's run of projection tiles shares, packed once for the run
// (bfloat16; float32 with a transposed B): the row tiles of one column tile multiply the same
// block of B, which a plain tile GEMM would pack (or transpose) again for each. Packing per thread
// keeps the block in that core's cache (sharing one whole-B prepacking between the threads is
// slower in training).
struct PackedColumn {
  PackedB16 b;
  std::vector<float> f32;  // float32: the column tile of op(B) = W^T, row-major K x cols
  int64_t col_tile = -1;
};
// One per thread, so the packed storage (128 KiB and more: glibc would mmap and unmap a fresh
// one on every call) is allocated once; col_tile is reset at the start of each task run.
PackedColumn& thread_packed_column() {
  thread_local PackedColumn packed;
  return packed;
}

// The fp32 tile a 16-bit result is computed in before its conversion, one per thread and
// kept between calls (a fresh 64-256 KiB vector per call and thread is an mmap and page faults).
template <typename acc_t>
acc_t* result_tile_scratch(int64_t size) {
  thread_local std::vector<acc_t> tile;
  if (static_cast<int64_t>(tile.size()) < size) tile.resize(static_cast<size_t>(size));
  return tile.data();
}

// A float32 result tile rounded into the 16-bit result (rows of out at stride ld_out): bfloat16
// through the kernels' vector rounding (the same bits as Tensor.to), float16 element by element.
template <typename scalar_t, typename acc_t>
void narrow_tile(const acc_t* c, int64_t ldc, int64_t rows, int64_t cols, scalar_t* out,
                 int64_t ld_out) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    static const VectorRoutines routines = MHSA_ISA_COPY(make_vector_routines);
    static_assert(sizeof(c10::BFloat16) == sizeof(uint16_t));
    routines.narrow_rows_bf16(c, ldc, rows, cols, reinterpret_cast<uint16_t*>(out), ld_out);
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j)
        out[r * ld_out + j] = static_cast<scalar_t>(c[r * ldc + j]);
  }
}

// A projection tile from the packed column tile; false where the plain tile GEMM runs instead
// (other dtypes, or no packing micro-kernel). The same bits either way.
template <typename scalar_t, typename acc_t>
bool packed_tile(PackedColumn&, bool, int64_t, Trans, Trans, int64_t, int64_t, int64_t, acc_t,
                 const scalar_t*, int64_t, const scalar_t*, int64_t, acc_t, acc_t*, int64_t) {
  return false;
}
bool packed_tile(PackedColumn& packed, bool enabled, int64_t col_tile, Trans ta, Trans tb,
                 int64_t rows, int64_t cols, int64_t K, float alpha, const c10::BFloat16* A,
                 int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  if (!enabled) return false;
  if (packed.col_tile != col_tile) {
    packed.b.pack(tb, B, ldb, K, cols);
    packed.col_tile = col_tile;
  }
  tile_gemm(ta, rows, K, alpha, A, lda, packed.b, beta, C, ldc);
  return true;
}
// float32 with a transposed B (x W^T): the column tile's rows of W transposed once per run into
// a compact K x cols block that stays in cache, instead of the whole W^T materialized per call.
// Only where that is faster, on the AVX-512 micro-kernel (tile_gemm_f32_packs_columns).
bool packed_tile(PackedColumn& packed, bool enabled, int64_t col_tile, Trans ta, Trans tb,
                 int64_t rows, int64_t cols, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (!enabled) return false;
  TORCH_INTERNAL_ASSERT(tb == Trans::Yes, "float column tiles are packed for a transposed B");
  if (packed.col_tile != col_tile) {
    if (static_cast<int64_t>(packed.f32.size()) < K * cols)
      packed.f32.resize(static_cast<size_t>(K * cols));
    transpose_floats(B, ldb, cols, K, packed.f32.data(), cols);
    packed.col_tile = col_tile;
  }
  tile_gemm(ta, Trans::No, rows, cols, K, alpha, A, lda, packed.f32.data(), cols, beta, C, ldc);
  return true;
}

// b^T materialized: float32 through transpose_floats in blocks of rows spread over the threads
// (at::copy of a transposed view is much slower), other dtypes through at::copy.
at::Tensor transposed(const at::Tensor& b) {
  if (b.scalar_type() != at::kFloat) return b.t().contiguous();
  const at::Tensor src = b.contiguous();
  const int64_t rows = src.size(0), cols = src.size(1);
  at::Tensor out = at::empty({cols, rows}, src.options());
  const float* in = src.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  constexpr int64_t kBlock = 64;  // rows of b per task
  at::parallel_for(0, ceil_div(rows, kBlock), 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kBlock, n = std::min(kBlock, rows - r0);
      transpose_floats(in + r0 * cols, cols, n, cols, dst + r0, rows);
    }
  });
  return out;
}

// The few-rows kernel of this CPU's instruction set (chosen as the attention kernels are).
SmallRowsGemm small_rows_kernel() {
  static const SmallRowsGemm kernel = MHSA_ISA_COPY(make_small_rows_gemm);
  return kernel;
}

// x W^T (+ bias) for a few float32 rows, straight from W (small_rows_gemm.h). The weight rows are
// split over the threads in runs of about 256 KiB, so that a small weight is not spread over
// threads that cost more to wake than its traffic.
at::Tensor small_rows_projection(const at::Tensor& a, const at::Tensor& w, double alpha,
                                 const std::optional<at::Tensor>& bias) {
  const at::Tensor A = a.contiguous(), W = w.contiguous();
  const int64_t M = A.size(0), K = A.size(1), N = W.size(0);
  at::Tensor C = at::empty({M, N}, A.options());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  const float* pa = A.const_data_ptr<float>();
  const float* pw = W.const_data_ptr<float>();
  const float* pbias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* pc = C.mutable_data_ptr<float>();
  const SmallRowsGemm kernel = small_rows_kernel();
  const int64_t rows_per_task = std::max<int64_t>(4, (int64_t{1} << 14) / std::max<int64_t>(K, 1));
  at::parallel_for(0, ceil_div(N, rows_per_task), 1, [&](int64_t begin, int64_t end) {
    kernel(M, begin * rows_per_task, std::min(N, end * rows_per_task), K, static_cast<float>(alpha),
           pa, K, pw, K, pbias, pc, N);
  });
  return C;
}

at::ScalarType accumulation_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

at::Tensor projection_gemm(const at::Tensor& a, bool transpose_a, const at::Tensor& b,
                           bool transpose_b, double alpha, const std::optional<at::Tensor>& bias,
                           std::optional<at::ScalarType> out_dtype) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && b.dim() == 2 && a.scalar_type() == b.scalar_type());
  warn_if_tile_engine_degraded();  // every op projects first, on the caller's thread
  if (a.scalar_type() == at::kHalf && !half_native_compute()) {  // fp32 from the float16 values
    return projection_gemm(a.to(at::kFloat), transpose_a, b.to(at::kFloat), transpose_b, alpha,
                           bias, out_dtype.value_or(at::kFloat));
  }
  if (a.scalar_type() == at::kFloat && !transpose_a && transpose_b && a.size(0) > 0 &&
      a.size(0) <= kSmallRows && a.size(1) > 0 &&
      (!out_dtype.has_value() || *out_dtype == at::kFloat)) {
    return small_rows_projection(a, b, alpha, bias);
  }
  const at::Tensor A = a.contiguous();
  // A transposed B (a weight, x W^T) is materialized once here, or kept between inference calls
  // (weight_cache.h), or laid out per column tile (packed_tile, where that is faster): the float
  // tile GEMMs would copy the same transposed block again for every row tile. The 16-bit
  // micro-kernels pack every B block anyway, so they take the weight as it is. A transposed A
  // (a weight gradient's activations, N*L rows) is copied by the tiles in chunks instead.
  const bool cached_b = transpose_b && A.scalar_type() == at::kFloat && weight_cache_applies(b);
  const bool f32_columns =
      transpose_b && !cached_b && A.scalar_type() == at::kFloat && tile_gemm_f32_packs_columns();
  const bool b_transposed_in_tiles =
      transpose_b && ((A.scalar_type() == at::kBFloat16 && tile_gemm_bf16_packs_b()) ||
                      (A.scalar_type() == at::kHalf && tile_gemm_f16_native()) || f32_columns);
  const at::Tensor B = cached_b ? cached_weight_transpose(b, &transposed)
                       : transpose_b && !b_transposed_in_tiles ? transposed(b)
                                                               : b.contiguous();
  const int64_t M = transpose_a ? A.size(1) : A.size(0);
  const int64_t K = transpose_a ? A.size(0) : A.size(1);
  const int64_t N = b_transposed_in_tiles ? B.size(0) : B.size(1);
  TORCH_INTERNAL_ASSERT((b_transposed_in_tiles ? B.size(1) : B.size(0)) == K);
  const auto acc_dtype = accumulation_dtype(A.scalar_type());
  // A 16-bit result of 16-bit inputs is written tile by tile from an fp32 scratch tile that
  // stays in cache, rather than as an M x N fp32 matrix converted in a second pass (the same
  // rounding: round to nearest even, as Tensor.to).
  const bool narrow_out = out_dtype.has_value() && *out_dtype == A.scalar_type() &&
                          (A.scalar_type() == at::kBFloat16 || A.scalar_type() == at::kHalf);
  at::Tensor C = at::empty({M, N}, A.options().dtype(narrow_out ? A.scalar_type() : acc_dtype));
  at::Tensor bias_acc;
  if (bias.has_value() && bias->defined()) {
    TORCH_INTERNAL_ASSERT(bias->numel() == N);
    bias_acc = bias->to(acc_dtype).contiguous();
  }
  if (M > 0 && N > 0) {
    const int64_t tile = output_tile(M, N);
    const int64_t row_tiles = ceil_div(M, tile), col_tiles = ceil_div(N, tile);
    const int64_t lda = A.size(1), ldb = B.size(1);
    const bool pack_columns =
        (A.scalar_type() == at::kBFloat16 && tile_gemm_bf16_packs_b()) || f32_columns;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, A.scalar_type(), "projection_gemm", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* pa = A.const_data_ptr<scalar_t>();
          const scalar_t* pb = B.const_data_ptr<scalar_t>();
          acc_t* pc = narrow_out ? nullptr : C.mutable_data_ptr<acc_t>();
          scalar_t* pc16 = narrow_out ? C.mutable_data_ptr<scalar_t>() : nullptr;
          const acc_t* pbias = bias_acc.defined() ? bias_acc.const_data_ptr<acc_t>() : nullptr;
          // A tile task is 2 * tile^2 * K flops; grain 1 unless tiles are tiny.
          const double tile_flops =
              2.0 * static_cast<double>(tile) * tile * std::max<int64_t>(K, 1);
          const int64_t grain =
              tile_flops >= (1 << 20) ? 1 : ceil_div(1 << 20, static_cast<int64_t>(tile_flops) + 1);
          at::parallel_for(0, row_tiles * col_tiles, grain, [&](int64_t begin, int64_t end) {
            record_parallel_tasks("projection GEMM tiles", at::get_thread_num(), end - begin);
            acc_t* scratch = narrow_out ? result_tile_scratch<acc_t>(tile * tile) : nullptr;
            PackedColumn& packed = thread_packed_column();
            packed.col_tile = -1;  // B of this call is not packed yet
            for (int64_t t = begin; t < end; ++t) {
              // Packed column tiles (bfloat16 with a packing micro-kernel, float32 x W^T):
              // column-major task order, so that a thread's run of tasks shares one column tile
              // of B, packed once (see PackedColumn).
              const int64_t row_tile = pack_columns ? t % row_tiles : t / col_tiles;
              const int64_t col_tile = pack_columns ? t / row_tiles : t % col_tiles;
              const int64_t i0 = row_tile * tile, j0 = col_tile * tile;
              const int64_t rows = std::min(tile, M - i0), cols = std::min(tile, N - j0);
              acc_t* c = narrow_out ? scratch : pc + i0 * N + j0;
              const int64_t ldc = narrow_out ? cols : N;
              acc_t beta = 0;
              if (pbias != nullptr) {
                for (int64_t r = 0; r < rows; ++r)
                  std::copy(pbias + j0, pbias + j0 + cols, c + r * ldc);
                beta = 1;
              }
              const scalar_t* ta = transpose_a ? pa + i0 : pa + i0 * lda;
              const scalar_t* tb = b_transposed_in_tiles ? pb + j0 * ldb : pb + j0;
              const Trans op_a = transpose_a ? Trans::Yes : Trans::No;
              const Trans op_b = b_transposed_in_tiles ? Trans::Yes : Trans::No;
              if (!packed_tile(packed, pack_columns, col_tile, op_a, op_b, rows, cols, K,
                               static_cast<acc_t>(alpha), ta, lda, tb, ldb, beta, c, ldc)) {
                tile_gemm(op_a, op_b, rows, cols, K, static_cast<acc_t>(alpha), ta, lda, tb, ldb,
                          beta, c, ldc);
              }
              if (narrow_out) narrow_tile(c, ldc, rows, cols, pc16 + i0 * N + j0, N);
            }
            tile_gemm_release();
          });
        });
  }
  if (out_dtype.has_value() && *out_dtype != C.scalar_type()) return C.to(*out_dtype);
  return C;
}

at::Tensor column_sums(const at::Tensor& m, std::optional<at::ScalarType> out_dtype) {
  TORCH_INTERNAL_ASSERT(m.dim() == 2);
  const at::Tensor src = m.contiguous();
  const int64_t R = src.size(0), N = src.size(1);
  const auto acc_dtype = accumulation_dtype(src.scalar_type());
  at::Tensor out = at::zeros({N}, src.options().dtype(acc_dtype));
  constexpr int64_t kColumnBlock = 64, kRowBlock = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "column_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = src.const_data_ptr<scalar_t>();
    acc_t* sums = out.mutable_data_ptr<acc_t>();
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(R * kColumnBlock, 1));
    at::parallel_for(0, ceil_div(N, kColumnBlock), grain, [&](int64_t begin, int64_t end) {
      acc_t block[kColumnBlock];
      for (int64_t cb = begin; cb < end; ++cb) {
        const int64_t j0 = cb * kColumnBlock, cols = std::min(kColumnBlock, N - j0);
        for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
          for (int64_t j = 0; j < cols; ++j) block[j] = 0;
          for (int64_t r = r0; r < std::min(R, r0 + kRowBlock); ++r) {
            const scalar_t* row = p + r * N + j0;
            for (int64_t j = 0; j < cols; ++j) block[j] += static_cast<acc_t>(row[j]);
          }
          for (int64_t j = 0; j < cols; ++j) sums[j0 + j] += block[j];
        }
      }
    });
  });
  if (out_dtype.has_value() && *out_dtype != acc_dtype) return out.to(*out_dtype);
  return out;
}

}  // namespace mhsa::cpu
