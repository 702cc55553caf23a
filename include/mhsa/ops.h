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

// Multi-head self-attention, the semantics of torch.nn.MultiheadAttention with query = key =
// value. query is (L, N, E), (N, L, E) with batch_first, or unbatched (L, E). Returns
// (attn_output, attn_weights); attn_weights is an undefined tensor when need_weights is false.
// Differences from nn.MultiheadAttention: is_causal needs no attn_mask (it applies the causal
// mask itself, combined with any mask given), and a query whose keys are all masked gets a zero
// attention output and zero weights instead of NaN. Beyond it: window_size (sliding-window
// attention, combined with every other mask; key tiles outside the band are never computed).
C10_EXPORT std::tuple<at::Tensor, at::Tensor> multi_head_self_attention(
    const at::Tensor& query, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, double dropout_p = 0.0,
    bool training = true, bool batch_first = false,
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt, bool need_weights = true,
    const std::optional<at::Tensor>& attn_mask = std::nullopt, bool average_attn_weights = true,
    bool is_causal = false, c10::IntArrayRef window_size = kNoWindow);

// The two underlying operators (mhsa::mha_forward, mhsa::mha_backward). Most callers want
// multi_head_self_attention above; these are for custom autograd or testing.
C10_EXPORT std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mha_forward(const at::Tensor& x, const at::Tensor& in_proj_weight,
            const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
            const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads, bool batch_first,
            const std::optional<at::Tensor>& attn_mask,
            const std::optional<at::Tensor>& key_padding_mask, bool is_causal, double dropout_p,
            bool need_weights, bool average_attn_weights, c10::IntArrayRef window_size = kNoWindow);

C10_EXPORT std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_attn_weights,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, int64_t num_heads, bool batch_first,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double dropout_p, bool average_attn_weights, std::array<bool, 5> output_mask,
    c10::IntArrayRef window_size = kNoWindow);

// Packed variable-length sequences (FlashAttention's varlen layout). x is (T, E): B sequences
// back to back, sequence b at rows cu_seqlens[b] .. cu_seqlens[b+1] of x; cu_seqlens is an
// int32 or int64 (B+1) tensor of offsets from 0 to T, never decreasing. Each sequence attends
// only to itself, and the result equals running each alone through multi_head_self_attention
// (outputs and gradients; the parameter gradients are summed over the sequences), for work
// proportional to sum L_b^2. window_size = {left, right}: query i sees only keys
// i - left .. i + right of its sequence (-1: unbounded on that side). max_seqlen, if given, is
// checked to bound every length. Dropout draws one seed per call and a distinct stream per
// sequence, so its masks differ from those of per-sequence calls. Returns the output (T, E).
C10_EXPORT at::Tensor multi_head_self_attention_packed(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
    std::optional<int64_t> max_seqlen = std::nullopt, double dropout_p = 0.0, bool training = true,
    bool is_causal = false, c10::IntArrayRef window_size = kNoWindow);

// The underlying operators of multi_head_self_attention_packed (mhsa::mha_packed_forward,
// mhsa::mha_packed_backward), for custom autograd or testing.
C10_EXPORT std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mha_packed_forward(const at::Tensor& x, const at::Tensor& cu_seqlens,
                   const at::Tensor& in_proj_weight, const std::optional<at::Tensor>& in_proj_bias,
                   const at::Tensor& out_proj_weight,
                   const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                   std::optional<int64_t> max_seqlen, bool is_causal, int64_t window_left,
                   int64_t window_right, double dropout_p);

C10_EXPORT std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
mha_packed_backward(const at::Tensor& grad_output, const at::Tensor& x,
                    const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
                    const at::Tensor& out_proj_weight, const at::Tensor& qkv,
                    const at::Tensor& context, const at::Tensor& logsumexp,
                    const at::Tensor& rng_state, int64_t num_heads, bool is_causal,
                    int64_t window_left, int64_t window_right, double dropout_p,
                    std::array<bool, 5> output_mask);

}  // namespace mhsa

namespace mhsa {

// KV-cache decoding (mhsa::decode_step, inference only): projects the next T >= 1 tokens x_new
// ((T, N, E), or (N, T, E) with batch_first), appends their keys and values to key_cache and
// value_cache ((N, num_heads, max_len, E / num_heads), x_new's dtype) at positions
// [length, length + T), adds T to cache_length (int64, shape (), shared by all N sequences)
// and returns the new tokens' outputs, shaped like x_new: each new token attends to the cached
// prefix and causally to the new tokens up to itself, as in one causal forward over the whole
// sequence. Refuses a cache without room for T more tokens, and inputs that require grad while
// grad mode is on. Most callers want MultiheadSelfAttention::new_kv_cache / decode.
C10_EXPORT at::Tensor decode_step(const at::Tensor& x_new, const at::Tensor& in_proj_weight,
                                  const std::optional<at::Tensor>& in_proj_bias,
                                  const at::Tensor& out_proj_weight,
                                  const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
                                  bool batch_first, at::Tensor& key_cache, at::Tensor& value_cache,
                                  at::Tensor& cache_length);

}  // namespace mhsa
