#pragma once
// Element conversions between the 16-bit types and their accumulation type, per instruction
// set: explicit bit operations (round to nearest even) rather than c10's inline operators,
// whose copies compiled for different instruction sets could be merged (see per_isa.h).
#include "engine/per_isa.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mhsa::cpu::MHSA_ISA {

// float16 bits to float: exact (subnormals scaled by 2^-24, which is exact in fp32).
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    float f = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// float to float16 bits, rounding to nearest even as Tensor.to does (overflow to inf, NaN stays
// a quiet NaN).
inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (x >= 0x38800000u) {  // a normal float16 (>= 2^-14): rebias, round 23 -> 10 mantissa bits
    const uint32_t r = x - 0x38000000u;
    return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  // A subnormal float16 (or zero): adding 0.5 leaves units of 2^-24 in the low mantissa bits,
  // rounded to nearest even by the addition itself.
  float a;
  std::memcpy(&a, &x, sizeof(a));
  const float t = a + 0.5f;
  uint32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  return static_cast<uint16_t>(sign | (tb - 0x3f000000u));
}

template <typename scalar_t>
inline auto to_acc(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return half_bits_to_float(v.x);
  } else {
    return v;
  }
}
template <typename scalar_t, typename acc_t>
inline scalar_t from_acc(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    uint16_t out;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      out = static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    } else {
      out = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
    return c10::BFloat16(out, c10::BFloat16::from_bits());
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return c10::Half(float_to_half_bits(v), c10::Half::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// Returns the acc_t tile as a GEMM input of scalar_t: itself, or converted into `cast`.
template <typename scalar_t, typename acc_t>
inline const scalar_t* as_gemm_input(const acc_t* tile, int64_t count, scalar_t* cast) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return tile;
  } else {
    for (int64_t k = 0; k < count; ++k) cast[k] = from_acc<scalar_t>(tile[k]);
    return cast;
  }
}

}  // namespace mhsa::cpu::MHSA_ISA
