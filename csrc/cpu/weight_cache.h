#pragma once
// The transposed copy of a float32 weight that the tile GEMMs read, kept between inference
// calls instead of being made on every call: a short input's projections spent a large part of
// their time transposing the weight again.
#include <ATen/core/Tensor.h>

#include <initializer_list>

namespace mhsa::cpu {

// Marks the calls on this thread, for its lifetime, as inference (no graph recorded: grad mode
// off or nothing requiring grad) or not. The ops' Autograd kernels set it: below them, inside an
// autograd Function's forward, grad mode is always off and cannot tell. Unmarked calls are not
// inference: a training step would replace the copy every step.
class InferenceCallGuard {
 public:
  explicit InferenceCallGuard(bool inference);
  ~InferenceCallGuard();
  InferenceCallGuard(const InferenceCallGuard&) = delete;
  InferenceCallGuard& operator=(const InferenceCallGuard&) = delete;

 private:
  bool previous_;
};

// Whether no input of a call would record a graph (grad mode off, or none requires grad).
bool records_no_graph(std::initializer_list<const at::Tensor*> inputs);

// Whether `weight`'s transpose may be cached: an inference call (above), a contiguous float32
// 2-D tensor with a version counter (not an inference-mode tensor), held by someone besides
// this call (not a temporary conversion).
bool weight_cache_applies(const at::Tensor& weight);

// weight^T, contiguous: the cached copy while `weight` is the same tensor (identity), at the same
// version (in-place updates: optimizer steps, load_state_dict, copy_ under no_grad), on the same
// storage, data pointer, sizes and strides (.data = ..., set_()), with the same values at 257
// elements spread over it (writes that bypass the version counter: through .data, numpy or
// from_blob aliases); else a new one, which replaces the old entry. A weight that changed before
// its copy was ever reused (training inside a traced or checkpointed forward) is not copied again
// until it stays unchanged from one call to the next. Entries of freed weights are dropped at
// every call: at most one extra copy of each live weight used in inference. Thread-safe.
// `transpose` makes the copy on a miss.
at::Tensor cached_weight_transpose(const at::Tensor& weight,
                                   at::Tensor (*transpose)(const at::Tensor&));

// Transposed copies held (tests).
int64_t weight_cache_entries();
void clear_weight_cache();

}  // namespace mhsa::cpu
