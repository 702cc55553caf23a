#pragma once
// float16 and bfloat16 on a CPU without their arithmetic (computes_in_fp32) are computed in
// float32 from their exact up-conversions, the results stored in the input's dtype. Every CPU
// op kernel goes through this one wrapper: in() up-converts an input, out() down-converts a
// result, stored_as() has the computation round qkv to the 16-bit dtype right after the
// projection (backward recomputes the scores from the stored qkv: the log-sum-exp must too).
#include <ATen/ATen.h>

#include <optional>

#include "engine/cpu_capability.h"

namespace mhsa::cpu {

class Fp32Compute {
 public:
  explicit Fp32Compute(at::ScalarType dtype) : dtype_(dtype), active_(computes_in_fp32(dtype)) {}

  // An input as the computation takes it: itself, or its float32 values.
  at::Tensor in(const at::Tensor& t) const { return active_ ? t.to(at::kFloat) : t; }
  std::optional<at::Tensor> in(const std::optional<at::Tensor>& t) const {
    if (!active_ || !t.has_value() || !t->defined()) return t;
    return t->to(at::kFloat);
  }
  // A result of the computation in the input's dtype (undefined stays undefined).
  at::Tensor out(const at::Tensor& t) const { return active_ && t.defined() ? t.to(dtype_) : t; }
  // The 16-bit dtype whose values a float32 computation stands in for, if it does.
  std::optional<at::ScalarType> stored_as() const {
    return active_ ? std::optional<at::ScalarType>(dtype_) : std::nullopt;
  }

 private:
  at::ScalarType dtype_;
  bool active_;
};

}  // namespace mhsa::cpu
