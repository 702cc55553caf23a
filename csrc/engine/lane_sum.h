#pragma once
// The sum of a float vector's lanes as a tree (the upper half added to the lower, again and
// again): log2(lanes) dependent vector adds where a lane-by-lane sum is one scalar add per lane.
// For the per-ISA translation units only (inside their MHSA_ISA namespace, so that the copies
// built with different instruction sets stay apart).
#ifndef MHSA_ISA
#error "lane_sum.h is for the per-ISA kernel translation units (MHSA_ISA undefined)"
#endif

#include <cstring>

namespace mhsa::cpu::MHSA_ISA {

template <int kBytes>
inline float lane_tree_sum(const float* lanes) {
  if constexpr (kBytes == 4) {
    return lanes[0];
  } else {
    typedef float Half __attribute__((vector_size(kBytes / 2)));
    Half lo, hi;
    std::memcpy(&lo, lanes, sizeof(Half));
    std::memcpy(&hi, lanes + kBytes / 8, sizeof(Half));
    const Half sum = lo + hi;
    float out[kBytes / 8];
    std::memcpy(out, &sum, sizeof(Half));
    return lane_tree_sum<kBytes / 2>(out);
  }
}

// V: a GCC vector of floats.
template <typename V>
inline float lane_tree_sum(V v) {
  float lanes[sizeof(V) / sizeof(float)];
  std::memcpy(lanes, &v, sizeof(V));
  return lane_tree_sum<static_cast<int>(sizeof(V))>(lanes);
}

}  // namespace mhsa::cpu::MHSA_ISA
