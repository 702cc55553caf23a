#pragma once
// Vector math on fp32 rows with GCC vector extensions, per instruction set: the width follows
// the ISA flags of the translation unit (4, 8 or 16 lanes).
#include "engine/per_isa.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mhsa::cpu::MHSA_ISA {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
typedef float vfloat __attribute__((vector_size(kVecBytes)));
typedef int32_t vint __attribute__((vector_size(kVecBytes)));
constexpr int kLanes = kVecBytes / 4;

inline vfloat splat(float v) { return vfloat{} + v; }
inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) in about 1 ulp for x <= 0 or NaN (a score minus its row's maximum or log-sum-exp; no
// clamp against overflow is needed): x = n ln2 + r with |r| <= ln2/2, a degree-7 polynomial for
// exp(r) (Cephes' expf coefficients), 2^n added to the exponent bits. Below -87.3 (including
// -inf, i.e. masked scores) the result is exactly 0, whatever the lanes computed; NaN stays NaN.
inline vfloat vexp_nonpositive(vfloat x) {
  const vint is_nan = x != x;
  const vint underflow = x < -87.3365478515625f;
  const vfloat t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln2) via 1.5 * 2^23
  const vfloat n = t - 12582912.0f;
  const vint n_int = (vint)t - 0x4B400000;
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vint bits = (vint)p + (n_int << 23);
  vfloat result = (vfloat)bits;
  result = underflow ? vfloat{} : result;
  return is_nan ? x : result;
}

// Tail of a row: the last n % kLanes elements through a padded vector.
inline vfloat load_tail(const float* p, int64_t count, float pad) {
  float tmp[kLanes];
  for (int k = 0; k < kLanes; ++k) tmp[k] = k < count ? p[k] : pad;
  return load(tmp);
}
inline void store_tail(float* p, int64_t count, vfloat v) {
  float tmp[kLanes];
  store(tmp, v);
  for (int64_t k = 0; k < count; ++k) p[k] = tmp[k];
}
inline float horizontal_sum(vfloat v) {
  float s = 0;
  for (int k = 0; k < kLanes; ++k) s += v[k];
  return s;
}
// The maxima below propagate NaN (a NaN score must give a NaN row, as in torch, not be
// mistaken for a masked one).
inline vfloat max_or_nan(vfloat m, vfloat v) { return (v > m) | (v != v) ? v : m; }
// v rotated down by Shift lanes (lane k gets lane (k + Shift) % kLanes); the index is a constant.
template <int Shift>
inline vfloat rotate_lanes(vfloat v) {
  vint index;
  for (int k = 0; k < kLanes; ++k) index[k] = (k + Shift) % kLanes;
  return __builtin_shuffle(v, index);
}
// A tree of vector maxima (log2(kLanes) shuffles), not a chain of scalar compares: the chain
// mispredicted its branches on every row of every score tile and was a quarter of the
// forward's own time. A maximum is exact in any order (only the sign of a zero maximum may
// differ, and exp(s - m) and m + log(l) are the same bits for either zero).
inline float horizontal_max(vfloat v) {
  if constexpr (kLanes >= 16) v = max_or_nan(v, rotate_lanes<8>(v));
  if constexpr (kLanes >= 8) v = max_or_nan(v, rotate_lanes<4>(v));
  v = max_or_nan(v, rotate_lanes<2>(v));
  v = max_or_nan(v, rotate_lanes<1>(v));
  return v[0];
}

// The maximum of x[0..n), NaN if any is NaN. Four running maxima: one would wait on each
// compare-and-select (the score tiles stream from L2, and the chain, not the loads, was the cost).
inline float row_max(const float* x, int64_t n) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  vfloat m0 = splat(neg_inf), m1 = m0, m2 = m0, m3 = m0;
  int64_t c = 0;
  for (; c + 4 * kLanes <= n; c += 4 * kLanes) {
    m0 = max_or_nan(m0, load(x + c));
    m1 = max_or_nan(m1, load(x + c + kLanes));
    m2 = max_or_nan(m2, load(x + c + 2 * kLanes));
    m3 = max_or_nan(m3, load(x + c + 3 * kLanes));
  }
  for (; c + kLanes <= n; c += kLanes) m0 = max_or_nan(m0, load(x + c));
  if (c < n) m0 = max_or_nan(m0, load_tail(x + c, n - c, neg_inf));
  return horizontal_max(max_or_nan(max_or_nan(m0, m1), max_or_nan(m2, m3)));
}
// x *= scale in place, each product rounded once (as a GEMM's alpha).
inline void scale_row(float* x, int64_t n, float scale) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) store(x + c, load(x + c) * scale);
  for (; c < n; ++c) x[c] *= scale;
}
inline void scale_row(double* x, int64_t n, double scale) {
  for (int64_t c = 0; c < n; ++c) x[c] *= scale;
}
// scale_row, then row_max of x, in one pass (the same products and the same maximum).
inline float scale_row_max(float* x, int64_t n, float scale) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  vfloat m0 = splat(neg_inf), m1 = m0;
  int64_t c = 0;
  for (; c + 2 * kLanes <= n; c += 2 * kLanes) {
    const vfloat a = load(x + c) * scale, b = load(x + c + kLanes) * scale;
    store(x + c, a);
    store(x + c + kLanes, b);
    m0 = max_or_nan(m0, a);
    m1 = max_or_nan(m1, b);
  }
  for (; c < n; ++c) {
    x[c] *= scale;
    m0[0] = (x[c] > m0[0] || x[c] != x[c]) ? x[c] : m0[0];
  }
  return horizontal_max(max_or_nan(m0, m1));
}
inline double row_max(const double* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < n; ++c) m = (x[c] > m || x[c] != x[c]) ? x[c] : m;
  return m;
}
inline double scale_row_max(double* x, int64_t n, double scale) {
  scale_row(x, n, scale);
  return row_max(x, n);
}

// x = exp(x - shift) in place, shift at least the maximum of x (its row's maximum or log-sum-exp);
// returns the sum of the new values.
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  vfloat sum{};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    const vfloat e = vexp_nonpositive(load(x + c) - shift);
    store(x + c, e);
    sum += e;
  }
  if (c < n) {
    const vfloat tail = load_tail(x + c, n - c, -std::numeric_limits<float>::infinity());
    const vfloat e = vexp_nonpositive(tail - shift);
    store_tail(x + c, n - c, e);
    sum += e;
  }
  return horizontal_sum(sum);
}
inline double exp_shift_sum(double* x, int64_t n, double shift) {
  double sum = 0;
  for (int64_t c = 0; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

}  // namespace mhsa::cpu::MHSA_ISA
