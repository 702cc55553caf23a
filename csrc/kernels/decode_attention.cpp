// decode_attention.h's tasks for one instruction set: a query's scores over the cache with
// vector dot products (float), the softmax with the attention kernels' vector exp, and the
// values summed a vector of D at a time.
#include "kernels/decode_attention.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "engine/buffer.h"
#include "engine/conversions.h"
#include "engine/lane_sum.h"
#include "engine/vector_math.h"

namespace mhsa::cpu::MHSA_ISA {
namespace {

// q . k over D elements in the accumulation type.
template <typename scalar_t>
inline auto dot(const scalar_t* q, const scalar_t* k, int64_t D) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    vfloat a0{}, a1{};  // two chains, alternate vectors of D
    int64_t d = 0;
    for (; d + 2 * kLanes <= D; d += 2 * kLanes) {
      a0 += load(q + d) * load(k + d);
      a1 += load(q + d + kLanes) * load(k + d + kLanes);
    }
    if (d + kLanes <= D) {
      a0 += load(q + d) * load(k + d);
      d += kLanes;
    }
    float sum = lane_tree_sum(a0 + a1);
    for (; d < D; ++d) sum += q[d] * k[d];
    return sum;
  } else {
    using acc_t = decltype(to_acc(scalar_t{}));
    acc_t partial[8] = {};  // independent sums the compiler can vectorize
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
      for (int i = 0; i < 8; ++i) partial[i] += to_acc(q[d + i]) * to_acc(k[d + i]);
    acc_t sum = 0;
    for (; d < D; ++d) sum += to_acc(q[d]) * to_acc(k[d]);
    for (int i = 0; i < 8; ++i) sum += partial[i];
    return sum;
  }
}

// out[0..D) = sum_j p[j] * v_j over the keys, v_j at v + j * D: float keeps a block of up to four
// vectors of D in registers over all keys (in memory, each key's update waited on the previous
// key's store), two keys at a time in separate sums; other types one element at a time.
template <typename scalar_t, typename acc_t>
void weighted_values(const acc_t* p, const scalar_t* v, int64_t keys, int64_t D, acc_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    int64_t d0 = 0;
    for (; d0 + kLanes <= D;) {
      const int width = D - d0 >= 4 * kLanes ? 4 : 1;  // vectors in this block
      vfloat a[4] = {}, b[4] = {};
      int64_t j = 0;
      for (; j + 2 <= keys; j += 2) {
        const float* v0 = v + j * D + d0;
        for (int u = 0; u < width; ++u) {
          a[u] += p[j] * load(v0 + u * kLanes);
          b[u] += p[j + 1] * load(v0 + D + u * kLanes);
        }
      }
      for (; j < keys; ++j)
        for (int u = 0; u < width; ++u) a[u] += p[j] * load(v + j * D + d0 + u * kLanes);
      for (int u = 0; u < width; ++u) store(out + d0 + u * kLanes, a[u] + b[u]);
      d0 += width * kLanes;
    }
    for (; d0 < D; ++d0) {
      float sum = 0;
      for (int64_t j = 0; j < keys; ++j) sum += p[j] * v[j * D + d0];
      out[d0] = sum;
    }
  } else {
    fill(out, D, acc_t(0));
    for (int64_t j = 0; j < keys; ++j) {
      const acc_t pj = p[j];
      const scalar_t* vj = v + j * D;
      for (int64_t d = 0; d < D; ++d) out[d] += pj * to_acc(vj[d]);
    }
  }
}

// The row of (sequence n, new token t), here so that this copy's code stays in this copy's
// namespace (an inline member of the shared header would be one symbol for every copy).
inline int64_t row_of(const DecodeRows& rows, int64_t n, int64_t t) {
  return rows.batch_first ? n * rows.T + t : t * rows.N + n;
}

template <typename scalar_t>
void decode_attention(const DecodeAttentionArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = decltype(to_acc(scalar_t{}));
  const int64_t E = a.H * a.D, D = a.D, T = a.rows.T;
  const acc_t scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
  Buffer<acc_t> scores(a.length + T);
  Buffer<acc_t> out(D);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t t = task % T, h = (task / T) % a.H, n = task / (T * a.H);
    const int64_t keys = a.length + t + 1;  // the prefix and the new tokens up to t
    const scalar_t* q = a.qkv + row_of(a.rows, n, t) * 3 * E + h * D;
    const scalar_t* k = a.key_cache + ((n * a.H + h) * a.max_len) * D;
    const scalar_t* v = a.value_cache + ((n * a.H + h) * a.max_len) * D;
    for (int64_t j = 0; j < keys; ++j) scores[j] = dot(q, k + j * D, D) * scale;
    // sum >= 1: the largest score contributes exp(0).
    const acc_t sum = exp_shift_sum(scores.data(), keys, row_max(scores.data(), keys));
    weighted_values(scores.data(), v, keys, D, out.data());
    const acc_t inv = acc_t(1) / sum;
    scalar_t* c = a.context + row_of(a.rows, n, t) * E + h * D;
    for (int64_t d = 0; d < D; ++d) c[d] = from_acc<scalar_t>(out[d] * inv);
  }
}

}  // namespace

template <typename scalar_t>
DecodeAttentionTasks<scalar_t> make_decode_attention() {
  return &decode_attention<scalar_t>;
}

template DecodeAttentionTasks<float> make_decode_attention<float>();
template DecodeAttentionTasks<double> make_decode_attention<double>();
template DecodeAttentionTasks<c10::BFloat16> make_decode_attention<c10::BFloat16>();
template DecodeAttentionTasks<c10::Half> make_decode_attention<c10::Half>();

}  // namespace mhsa::cpu::MHSA_ISA
