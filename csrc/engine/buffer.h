#pragma once
// Scratch storage of the per-instruction-set kernels (std::vector and std::fill are avoided,
// see per_isa.h).
#include "engine/per_isa.h"

#include <cstdint>

namespace mhsa::cpu::MHSA_ISA {

// A heap array freed on scope exit.
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n) : data_(n > 0 ? new T[n] : nullptr) {}
  ~Buffer() { delete[] data_; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  T* data_;
};

template <typename T>
inline void fill(T* p, int64_t n, T v) {
  for (int64_t k = 0; k < n; ++k) p[k] = v;
}

}  // namespace mhsa::cpu::MHSA_ISA
