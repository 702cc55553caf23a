#pragma once
// Public C++ API of the mhsa operators. Every function calls the registered op through the
// dispatcher, so C++ callers get the same device dispatch and autograd as Python callers.

#include <ATen/core/Tensor.h>
#include <c10/macros/Export.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <mhsa/version.h>

// Defined in libmhsa.so. Any translation unit that includes this header keeps a reference to
// it (below), so the linker keeps libmhsa.so as a dependency even with --as-needed and the op
// registrations (static initializers inside the library) run. Without it a program that only
// torch::jit::load's a scripted model using mhsa ops would fail with "Unknown builtin op".
extern "C" C10_EXPORT int64_t mhsa_library_anchor();

namespace mhsa {

// window_size = {left, right}: query i sees key j only if i - left <= j <= i + right; -1 leaves
// that side unbounded. {-1, -1} (the default) is full attention.
inline constexpr std::array<int64_t, 2> kNoWindow{-1, -1};

namespace detail {
[[gnu::used]] static int64_t (*const library_anchor)() = &mhsa_library_anchor;
}  // namespace detail

// Multi-head self-attention, torch.nn.MultiheadAttention's semantics with query = key = value:
// query (L, N, E), (N, L, E) with batch_first, or unbatched (L, E); returns (attn_output,
// attn_weights), the weights undefined without need_weights. Unlike nn, is_causal needs no
// attn_mask (it is combined with any mask given), and a query whose keys are all masked gets zero
// output and weights, not NaN. Beyond nn: window_size, a sliding window combined with every mask.
C10_EXPORT std::tuple<at::Tensor, at::Tensor> multi_head_self_attention(
    const at::Tensor& query, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, double dropout_p = 0.0,
    bool training = true, bool batch_first = false,
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt, bool need_weights = true,
    const std::optional<at::Tensor>& attn_mask = std::nullopt, bool average_attn_weights = true,
    bool is_causal = false, c10::IntArrayRef window_size = kNoWindow,
    std::optional<int64_t> num_kv_heads = std::nullopt);

// torch.nn.functional.scaled_dot_product_attention on mhsa's fused kernels: query
// (..., H, L, E), key (..., H_kv, S, E), value (..., H_kv, S, Ev); attn_mask bool (true = may
// attend) or float (added), broadcastable to (..., H, L, S); is_causal top-left aligned;
// enable_gqa lets H be a multiple of H_kv; window_size = {left, right}: query i sees keys
// i - left .. i + right (-1: unbounded). Returns (..., H, L, Ev).
C10_EXPORT at::Tensor scaled_dot_product_attention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask = std::nullopt, double dropout_p = 0.0,
    bool is_causal = false, std::optional<double> scale = std::nullopt, bool enable_gqa = false,
    at::OptionalIntArrayRef window_size = std::nullopt);

// All of nn.MultiheadAttention: query (L, N, E) (or batch_first, or unbatched), key (S, N, kdim),
// value (S, N, vdim); in_proj_weight (3E, E) or q/k/v_proj_weight (E, E), (E, kdim), (E, vdim);
// bias_k and bias_v (1, 1, E) for add_bias_kv. Masks as in nn.MultiheadAttention (attn_mask
// (L, S) or (N*H, L, S), key_padding_mask (N, S); bool true = may not attend). Returns
// (attn_output, attn_weights), the weights undefined unless need_weights.
C10_EXPORT std::tuple<at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t num_heads,
    const std::optional<at::Tensor>& in_proj_weight, const std::optional<at::Tensor>& in_proj_bias,
    const std::optional<at::Tensor>& q_proj_weight, const std::optional<at::Tensor>& k_proj_weight,
    const std::optional<at::Tensor>& v_proj_weight, const std::optional<at::Tensor>& bias_k,
    const std::optional<at::Tensor>& bias_v, bool add_zero_attn, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, double dropout_p = 0.0, bool training = true,
    bool batch_first = false, const std::optional<at::Tensor>& key_padding_mask = std::nullopt,
    bool need_weights = true, const std::optional<at::Tensor>& attn_mask = std::nullopt,
    bool average_attn_weights = true, bool is_causal = false,
    c10::IntArrayRef window_size = kNoWindow);

C10_EXPORT at::Tensor multi_head_self_attention_packed(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
    std::optional<int64_t> max_seqlen = std::nullopt, double dropout_p = 0.0, bool training = true,
    bool is_causal = false, c10::IntArrayRef window_size = kNoWindow);

}  // namespace mhsa

namespace mhsa {

// KV-cache decoding (inference only; most callers want MultiheadSelfAttention's decode): appends
// the keys and values of the next T >= 1 tokens x_new ((T, N, E), or (N, T, E) with batch_first)
// to key_cache and value_cache ((N, num_heads, max_len, E / num_heads), x_new's dtype) at
// [length, length + T), adds T to cache_length (int64, shape ()), and returns the new tokens'
// outputs (like x_new) as one causal forward over the whole sequence would. Refuses a cache
// without room for T tokens, and inputs that require grad while grad mode is on.
C10_EXPORT at::Tensor decode_step(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                                  const std::optional<at::Tensor>& in_proj_bias,
                                  const at::Tensor& out_proj_weight,
                                  const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                                  bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                                  at::Tensor& cache_length);

}  // namespace mhsa
