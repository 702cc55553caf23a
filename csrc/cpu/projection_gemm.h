#pragma once
// The projection GEMMs of the CPU kernels (x W_in^T, C W_out^T, and their
// gradients) and the bias-gradient column sums, computed so that every bit of the result is
// the same whatever the number of threads.
//
// Why not at::mm: a multi-threaded BLAS splits a GEMM (and, for the weight gradients, its
// reduction over the N*L rows) according to the thread count, and kernels of different
// shapes round differently, so at::mm results differ in the last bits between 1 and 2
// threads on some CPUs (seen with MKL on AVX-512/AMX machines). Here the output is cut into
// tiles whose sizes depend on the problem only; each tile is one single-threaded tile_gemm
// over the full reduction, and tiles are independent tasks for at::parallel_for.
#include <ATen/ATen.h>

#include <optional>

namespace mhsa::cpu {

// op(A) op(B) * alpha (+ bias broadcast over rows, added before the products as addmm does),
// for 2-D float, double or bfloat16 tensors of one dtype. The result has the accumulation
// dtype (float for bfloat16) unless `out_dtype` asks for another.
at::Tensor projection_gemm(const at::Tensor& a, bool transpose_a, const at::Tensor& b,
                           bool transpose_b, double alpha = 1.0,
                           const std::optional<at::Tensor>& bias = std::nullopt,
                           std::optional<at::ScalarType> out_dtype = std::nullopt);

// Sums of the rows of a 2-D tensor (a bias gradient), in a fixed order: blocks of rows
// summed in sequence, then the block sums in sequence. Accumulation dtype as above.
at::Tensor column_sums(const at::Tensor& m, std::optional<at::ScalarType> out_dtype = std::nullopt);

}  // namespace mhsa::cpu
