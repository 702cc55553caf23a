#pragma once
// The projection GEMMs of the CPU kernels (x W_in^T, C W_out^T, their gradients) and the bias
// gradients' column sums, the same bits for any number of threads. Not at::mm: a threaded BLAS
// splits a GEMM (and a weight gradient's reduction) by the thread count, so its last bits
// change with it on some CPUs. Here the output is cut into tiles sized by the problem only, each
// one single-threaded tile_gemm over the whole reduction, the tiles spread over the threads.
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
