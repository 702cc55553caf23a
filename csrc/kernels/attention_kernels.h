#pragma once
// The per-instruction-set attention kernels as one table per dtype: the entry points of this
// CPU's copy (attention_forward_kernel.cpp and attention_backward_kernel.cpp are compiled once
// per instruction set, each copy in its own namespace; cpu_capability() picks one).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "engine/cpu_capability.h"
#include "kernels/attention_args.h"

namespace mhsa::cpu {

// The entry points of one ISA copy; each processes a range of independent tasks so that the
// op kernels (compiled once) own the threading.
template <typename scalar_t>
struct AttentionKernels {
  // Forward tasks [begin, end) (see forward_task_count).
  void (*forward_tasks)(const ForwardArgs<scalar_t>&, bool need_weights, bool heads_inside,
                        int64_t begin, int64_t end);
  // Dsum = rowsum(dO * O) per head, for rows [begin, end) of N*L.
  void (*dsum_rows)(const BackwardArgs<scalar_t>&, int64_t begin, int64_t end);
  // Adds rowsum(W * dW) to Dsum for tasks [begin, end) of N*H*query blocks.
  void (*weights_term_tasks)(const BackwardArgs<scalar_t>&, int64_t begin, int64_t end);
  int64_t (*weights_term_task_count)(const AttentionGeometry&, const TileSizes&);
  // Fills args.dq_turn: the first key block that adds to each (n, h, query block).
  void (*prepare_dq_order)(const BackwardArgs<scalar_t>&);
  int64_t (*dq_turn_count)(const AttentionGeometry&, const TileSizes&);
  // dK, dV and dQ of the backward tasks thread, thread + threads, thread + 2 threads, ...
  // (one task: one key block of one head). Every thread of the team must run concurrently:
  // a task may wait for the previous key block's task to add its dQ share first.
  void (*backward_tasks)(const BackwardArgs<scalar_t>&, int64_t thread, int64_t threads);
  int64_t (*backward_task_count)(const AttentionGeometry&, const TileSizes&);
};

template <typename scalar_t>
const AttentionKernels<scalar_t>& attention_kernels();

#define MHSA_DECLARE_ISA_KERNELS(isa)                                                      \
  namespace isa {                                                                          \
  template <typename scalar_t>                                                             \
  AttentionKernels<scalar_t> make_attention_kernels();                                     \
  extern template AttentionKernels<float> make_attention_kernels<float>();                 \
  extern template AttentionKernels<double> make_attention_kernels<double>();               \
  extern template AttentionKernels<c10::BFloat16> make_attention_kernels<c10::BFloat16>(); \
  extern template AttentionKernels<c10::Half> make_attention_kernels<c10::Half>();         \
  }

MHSA_DECLARE_ISA_KERNELS(isa_default)
#ifdef MHSA_X86_KERNEL_COPIES
MHSA_DECLARE_ISA_KERNELS(isa_avx2)
MHSA_DECLARE_ISA_KERNELS(isa_avx512)
#endif

}  // namespace mhsa::cpu
