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

// weight^T, contiguous: the cached copy while `weight` is the same tensor at the same version,
// storage, data pointer, sizes and strides, with the same values at 257 sample elements (writes
// that bypass the version counter); else a new one (`transpose` makes it) replacing the entry.
// A weight that changed before its copy was reused is copied again only once it stays the same
// from one call to the next. Entries of freed weights are dropped at every call. Thread-safe.
at::Tensor cached_weight_transpose(const at::Tensor& weight,
                                   at::Tensor (*transpose)(const at::Tensor&));

// Transposed copies held (tests).
int64_t weight_cache_entries();
void clear_weight_cache();

}  // namespace mhsa::cpu
