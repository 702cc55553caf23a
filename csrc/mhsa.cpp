// The one TORCH_LIBRARY block of mhsa: every schema lives here. Kernels register per dispatch
// key in cpu/, meta/, autograd/ (TORCH_LIBRARY_IMPL), and the composite public op in
// multi_head_self_attention.cpp.
#include <torch/library.h>

#include <mhsa/internal_ops.h>

#include <string>

#include "cpu/parallel_stats.h"
#include "cpu/weight_cache.h"
#include "engine/cpu_capability.h"
#include "engine/micro_kernel_probe.h"
#include "engine/tile_gemm.h"
#include "engine/tile_rate.h"

extern "C" C10_EXPORT int64_t mhsa_library_anchor() {
  // Referenced from the public header so that linking against libmhsa.so is never dropped
  // by the linker; calling it has no effect.
  return 1;
}

namespace {

// The schemas of the internal ops, without the name: each is registered under its name and
// under its deprecated name from before the rename (the same signature, so old models load).
constexpr const char* kMhaForwardSignature =
    "(Tensor x, Tensor in_proj_weight, Tensor? in_proj_bias, Tensor out_proj_weight, "
    "Tensor? out_proj_bias, int num_heads, bool batch_first, Tensor? attn_mask, "
    "Tensor? key_padding_mask, bool is_causal, float dropout_p, bool need_weights, "
    "bool average_attn_weights, int[2] window_size=[-1, -1]) "
    "-> (Tensor output, Tensor attn_weights, Tensor qkv, Tensor context, Tensor logsumexp, "
    "Tensor rng_state)";
constexpr const char* kMhaBackwardSignature =
    "(Tensor grad_output, Tensor? grad_attn_weights, Tensor x, Tensor in_proj_weight, "
    "Tensor out_proj_weight, Tensor qkv, Tensor context, Tensor logsumexp, Tensor rng_state, "
    "int num_heads, bool batch_first, Tensor? attn_mask, Tensor? key_padding_mask, "
    "bool is_causal, float dropout_p, bool average_attn_weights, bool[5] output_mask, "
    "int[2] window_size=[-1, -1]) "
    "-> (Tensor grad_x, Tensor grad_in_proj_weight, Tensor grad_in_proj_bias, "
    "Tensor grad_out_proj_weight, Tensor grad_out_proj_bias)";
constexpr const char* kMhaPackedForwardSignature =
    "(Tensor x, Tensor cu_seqlens, Tensor in_proj_weight, Tensor? in_proj_bias, "
    "Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads, int? max_seqlen, "
    "bool is_causal, int window_left, int window_right, float dropout_p) "
    "-> (Tensor output, Tensor qkv, Tensor context, Tensor logsumexp, Tensor rng_state)";
constexpr const char* kMhaPackedBackwardSignature =
    "(Tensor grad_output, Tensor x, Tensor cu_seqlens, Tensor in_proj_weight, "
    "Tensor out_proj_weight, Tensor qkv, Tensor context, Tensor logsumexp, Tensor rng_state, "
    "int num_heads, bool is_causal, int window_left, int window_right, float dropout_p, "
    "bool[5] output_mask) "
    "-> (Tensor grad_x, Tensor grad_in_proj_weight, Tensor grad_in_proj_bias, "
    "Tensor grad_out_proj_weight, Tensor grad_out_proj_bias)";

void define_with_signature(torch::Library& m, const char* name, const char* signature) {
  m.def((std::string(name) + signature).c_str());
}

}  // namespace

TORCH_LIBRARY(mhsa, m) {
  // Public entry point: validates and canonicalizes (unbatched input, eval-mode dropout),
  // then calls _mha_forward. Returns (attn_output, attn_weights); attn_weights has zero
  // elements when need_weights is false.
  m.def(
      "multi_head_self_attention(Tensor query, Tensor in_proj_weight, Tensor? in_proj_bias, "
      "Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads, float dropout_p=0.0, "
      "bool training=True, bool batch_first=False, Tensor? key_padding_mask=None, "
      "bool need_weights=True, Tensor? attn_mask=None, bool average_attn_weights=True, "
      "bool is_causal=False, int[2] window_size=[-1, -1], int? num_kv_heads=None) "
      "-> (Tensor, Tensor)");
  // The internal ops (leading underscore, as PyTorch names its own internal attention ops).
  // _mha_forward: x is (L, N, E), or (N, L, E) with batch_first. Besides the output and the
  // weights it returns what backward needs, all O(N*L*E): the packed projection qkv (rows of x,
  // 3E), the per-head attention context before out_proj (rows of x, E), the per-row log-sum-exp
  // of the scores (N, H, L) and the dropout seed.
  define_with_signature(m, "_mha_forward", kMhaForwardSignature);
  // _mha_backward: gradients of x, in_proj_weight, in_proj_bias, out_proj_weight,
  // out_proj_bias; an entry whose output_mask is false is returned undefined (None in Python).
  define_with_signature(m, "_mha_backward", kMhaBackwardSignature);
  // The instruction set of the attention kernels chosen on this CPU: default, avx2 or avx512.
  m.def("_cpu_capability() -> str", []() -> std::string {
    return mhsa::cpu::cpu_capability_name(mhsa::cpu::cpu_capability());
  });
  // With MHSA_PARALLEL_STATS=1: tasks per thread of each parallel phase since the last call
  // (JSON), to check how the work spreads over many threads (scripts/parallel_stats.py).
  m.def("_parallel_stats() -> str",
        []() -> std::string { return mhsa::cpu::take_parallel_stats(); });
  // What runs on this CPU, for test and benchmark reports: the kernels' instruction set, how
  // bfloat16 is computed and which GEMM library the tiles and projections call.
  m.def("_backend_info() -> str", []() -> std::string {
    std::string info = "kernels=";
    info += mhsa::cpu::cpu_capability_name(mhsa::cpu::cpu_capability());
    info += mhsa::cpu::bf16_native_compute() ? " bfloat16=native" : " bfloat16=fp32-compute";
    info += mhsa::cpu::half_native_compute() ? " float16=native" : " float16=fp32-compute";
    info += " gemm=";
    info += mhsa::cpu::tile_gemm_backend();
    // float32 scores and dP on the tile GEMM where it sums as one fused chain, else dot_tile.
    info += mhsa::cpu::tile_gemm_f32_chain_order() ? " float32-scores=tile-gemm"
                                                   : " float32-scores=dot-chain";
    // Never silently slow: why the loops run, and which promised micro-kernel failed its probe.
    const std::string loops_reason = mhsa::cpu::tile_gemm_loops_reason();
    if (!loops_reason.empty()) info += " (" + loops_reason + ")";
    const std::string failures = mhsa::cpu::tile_gemm_probe_failures();
    if (!failures.empty()) info += " probe-failures=[" + failures + "]";
    const std::string notes = mhsa::cpu::tile_gemm_probe_notes();
    if (!notes.empty()) info += " probe-notes=[" + notes + "]";
    return info;
  });
  // GFLOP/s of one thread's tile GEMMs of (m x k) by (k x n) in dtype (scripts/bench's
  // efficiency column: mhsa's rate as a share of its own engine's).
  m.def("_tile_gemm_rate(ScalarType dtype, int m, int n, int k, float min_seconds=0.2) -> float",
        &mhsa::cpu::tile_gemm_rate);
  // Transposed float32 weights kept between inference calls (cpu/weight_cache.h): how many.
  m.def("_weight_cache_entries() -> int",
        []() -> int64_t { return mhsa::cpu::weight_cache_entries(); });
  // KV-cache decoding (inference): projects the next T >= 1 tokens x_new ((T, N, E), or
  // (N, T, E) with batch_first), writes their keys and values into key_cache and value_cache
  // (N, H, max_len, D) at positions [length, length + T), advances cache_length (an int64
  // tensor of shape (), the one length shared by the N sequences) by T, and returns the
  // outputs of the new tokens, each attending causally to the cached prefix and to the new
  // tokens up to itself. The three cache tensors are mutated in place, hence (a!) (b!) (c!).
  m.def(
      "decode_step(Tensor x_new, Tensor in_proj_weight, Tensor? in_proj_bias, "
      "Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads, bool batch_first, "
      "Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor(c!) cache_length) -> Tensor");
  // Packed variable-length sequences (FlashAttention's varlen layout): x is (T, E), B
  // sequences back to back, sequence b at rows cu_seqlens[b] .. cu_seqlens[b+1] (int32 or
  // int64, (B+1,), from 0 to T); each attends only to itself. window_size = (left, right):
  // query i sees keys i - left .. i + right of its sequence, -1 for an unbounded side. Returns
  // the output (T, E).
  m.def(
      "multi_head_self_attention_packed(Tensor x, Tensor cu_seqlens, Tensor in_proj_weight, "
      "Tensor? in_proj_bias, Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads, *, "
      "int? max_seqlen=None, float dropout_p=0.0, bool training=True, bool is_causal=False, "
      "int[2] window_size=[-1, -1]) -> Tensor");
  // _mha_packed_forward: besides the output, what backward needs, all O(T*E): the packed
  // projection qkv (T, 3E), the context before out_proj (T, E), the log-sum-exp (T*H,) with
  // sequence b's (H, L_b) block at H*cu_seqlens[b], and the dropout seed.
  define_with_signature(m, "_mha_packed_forward", kMhaPackedForwardSignature);
  define_with_signature(m, "_mha_packed_backward", kMhaPackedBackwardSignature);

  // All of nn.MultiheadAttention (F.multi_head_attention_forward's arguments, plus batch_first,
  // is_causal without attn_mask and window_size): cross-attention, kdim/vdim (q/k/v_proj_weight
  // instead of in_proj_weight), add_bias_kv (bias_k, bias_v), add_zero_attn. Returns
  // (attn_output, attn_weights); attn_weights has zero elements when need_weights is false.
  m.def(
      "multi_head_attention(Tensor query, Tensor key, Tensor value, int num_heads, "
      "Tensor? in_proj_weight, Tensor? in_proj_bias, Tensor? q_proj_weight, "
      "Tensor? k_proj_weight, Tensor? v_proj_weight, Tensor? bias_k, Tensor? bias_v, "
      "bool add_zero_attn, Tensor out_proj_weight, Tensor? out_proj_bias, float dropout_p=0.0, "
      "bool training=True, bool batch_first=False, Tensor? key_padding_mask=None, "
      "bool need_weights=True, Tensor? attn_mask=None, bool average_attn_weights=True, "
      "bool is_causal=False, int[2] window_size=[-1, -1]) -> (Tensor, Tensor)");
  // torch.nn.functional.scaled_dot_product_attention's semantics on the fused kernels, plus
  // window_size = (left, right) (see <mhsa/ops.h>). Returns (..., H, L, Ev).
  m.def(
      "scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, "
      "Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, float? scale=None, "
      "bool enable_gqa=False, int[2]? window_size=None) -> Tensor");
  // The attention core on projected (N, H, L, D) / (N, H_kv, S, D) / (N, H_kv, S, Dv) tensors
  // (see BlockOptions in <mhsa/internal_ops.h>): output (N, H, L, Dv), the weights when asked,
  // the log-sum-exp (N, H, L) and the dropout seed. shared_rng_state: the seed to reuse (the
  // ring's blocks share one). key_padding_mask: (N, S) as nn.MultiheadAttention's (true = may
  // not attend). Backward takes the whole attention's output and log-sum-exp.
  m.def(
      "_attention_block_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
      "float dropout_p=0.0, bool is_causal=False, float? scale=None, "
      "int[2] window_size=[-1, -1], bool need_weights=False, bool average_attn_weights=True, "
      "int diagonal=0, int[4] dropout_plane=[0, 0, 0, 0], Tensor? shared_rng_state=None, "
      "Tensor? key_padding_mask=None) "
      "-> (Tensor output, Tensor attn_weights, Tensor logsumexp, Tensor rng_state)");
  m.def(
      "_attention_block_backward(Tensor grad_output, Tensor? grad_attn_weights, Tensor query, "
      "Tensor key, Tensor value, Tensor output, Tensor logsumexp, Tensor rng_state, "
      "Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, float? scale=None, "
      "int[2] window_size=[-1, -1], bool average_attn_weights=True, int diagonal=0, "
      "int[4] dropout_plane=[0, 0, 0, 0], bool[3] output_mask=[True, True, True], "
      "Tensor? key_padding_mask=None) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value)");

  // The names of the internal ops before 0.2.0, kept so that TorchScript models saved then still
  // load and run; each warns once and forwards to its renamed op (deprecated_ops.cpp).
  define_with_signature(m, "mha_forward", kMhaForwardSignature);
  define_with_signature(m, "mha_backward", kMhaBackwardSignature);
  define_with_signature(m, "mha_packed_forward", kMhaPackedForwardSignature);
  define_with_signature(m, "mha_packed_backward", kMhaPackedBackwardSignature);
}
