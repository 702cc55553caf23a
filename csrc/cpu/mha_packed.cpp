// CPU kernels of mhsa::mha_packed_forward and mhsa::mha_packed_backward: B sequences packed
// back to back in x (T, E), each attending only to itself (FlashAttention's varlen layout).
//
// The projections are single GEMMs over all T rows (they do not mix rows). The attention runs
// the per-ISA kernels of the padded op once per sequence, with the geometry of a batch of one
// (N = 1, L = L_b, batch_first) and pointers offset to that sequence's rows of qkv, context and
// the gradient buffers, so the work is proportional to sum L_b^2, not B * max(L)^2. All the
// tasks of all sequences share one parallel_for, cut into parts of about equal cost, so that
// many short sequences and one long one keep every thread busy alike.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "checks.h"
#include "cpu/attention_args.h"
#include "cpu/cpu_capability.h"
#include "cpu/projection_gemm.h"
#include "packed_checks.h"

namespace mhsa::cpu {
namespace {

// Most dQ partial buffers one sequence gets (as kBackwardChunks in mha_backward.cpp).
constexpr int64_t kMaxChunksPerSequence = 8;
// Chunks handed out in proportion to each sequence's share of the backward work: enough for a
// long sequence to spread over several threads; the sum over sequences stays near B + this.
constexpr double kPackedChunkBudget = 16.0;

uint64_t draw_dropout_seed() {
  // Seeded from torch's default CPU generator, so torch.manual_seed reproduces a run.
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

// The Philox key of sequence b: the kernels number dropout elements (n, h, i, j) within one
// call, and every sequence here is batch entry n = 0 of its own call, so each sequence gets its
// own key (splitmix64 of the call's seed and b) lest all sequences drop the same pattern.
uint64_t sequence_seed(uint64_t seed, int64_t b) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Runs fn(b, begin, end) on ranges of the local work items of sequence b, for every item of
// every sequence, in parallel. Sequence b has items[b] items of about cost[b] flops each; the
// flattened list is cut into parts of about equal total cost (a few per thread), so the
// partition, never the results, depends on the thread count. Problems under ~1 MFLOP run on
// the calling thread.
template <typename F>
void parallel_over_sequences(const std::vector<int64_t>& items, const std::vector<double>& cost,
                             const F& fn) {
  const size_t B = items.size();
  std::vector<int64_t> item_start(B + 1, 0);
  std::vector<double> cost_start(B + 1, 0.0);
  for (size_t b = 0; b < B; ++b) {
    item_start[b + 1] = item_start[b] + items[b];
    cost_start[b + 1] = cost_start[b] + static_cast<double>(items[b]) * cost[b];
  }
  const int64_t total_items = item_start[B];
  if (total_items == 0) return;
  const double total_cost = cost_start[B];
  // First item whose cumulative cost before it reaches c.
  auto item_at_cost = [&](double c) -> int64_t {
    if (c <= 0.0) return 0;
    if (c >= total_cost) return total_items;
    const size_t b = static_cast<size_t>(
        std::upper_bound(cost_start.begin(), cost_start.end(), c) - cost_start.begin() - 1);
    const double local = (c - cost_start[b]) / cost[b];
    const int64_t k = std::min<int64_t>(items[b], static_cast<int64_t>(std::ceil(local)));
    return item_start[b] + k;
  };
  auto run_items = [&](int64_t begin, int64_t end) {
    size_t b = static_cast<size_t>(
        std::upper_bound(item_start.begin(), item_start.end(), begin) - item_start.begin() - 1);
    while (begin < end) {
      const int64_t seq_end = std::min(end, item_start[b + 1]);
      if (seq_end > begin) fn(static_cast<int64_t>(b), begin - item_start[b], seq_end - item_start[b]);
      begin = std::max(begin, seq_end);
      ++b;
    }
  };
  const int64_t parts = total_cost < double(1 << 20)
                            ? 1
                            : std::min<int64_t>(total_items, 4 * at::get_num_threads());
  if (parts == 1) {
    run_items(0, total_items);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t begin = item_at_cost(total_cost * p / parts);
      const int64_t end = p + 1 == parts ? total_items : item_at_cost(total_cost * (p + 1) / parts);
      run_items(begin, end);
    }
  });
}

// parallel_for over the T rows, split at sequence boundaries: fn(b, local_begin, local_end).
template <typename F>
void parallel_over_rows(const std::vector<int64_t>& offsets, double row_flops, const F& fn) {
  const int64_t T = offsets.back();
  at::parallel_for(0, T, parallel_grain(row_flops), [&](int64_t begin, int64_t end) {
    size_t b = static_cast<size_t>(
        std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1);
    while (begin < end) {
      const int64_t seq_end = std::min(end, offsets[b + 1]);
      if (seq_end > begin) fn(static_cast<int64_t>(b), begin - offsets[b], seq_end - offsets[b]);
      begin = std::max(begin, seq_end);
      ++b;
    }
  });
}

template <typename acc_t>
MaskView<acc_t> packed_masks(bool is_causal, int64_t window_left, int64_t window_right) {
  MaskView<acc_t> m;
  m.causal = is_causal;
  m.window_left = window_left;
  m.window_right = window_right;
  return m;
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->to(at::kFloat)) : t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_packed_forward_cpu(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, int64_t num_heads,
    std::optional<int64_t> max_seqlen, bool is_causal, int64_t window_left, int64_t window_right,
    double dropout_p) {
  const char* op = "mha_packed_forward";
  const PackedSizes s = check_packed_inputs(op, x, cu_seqlens, in_proj_weight, in_proj_bias,
                                            out_proj_weight, out_proj_bias, num_heads,
                                            window_left, window_right, dropout_p);
  const int64_t T = s.tokens.expect_int(), E = s.embed.expect_int();
  const std::vector<int64_t> offsets = read_cu_seqlens(op, cu_seqlens, T, max_seqlen);
  if (x.scalar_type() == at::kBFloat16 && !bf16_native_compute()) {
    // No bf16 arithmetic on this CPU: compute in fp32 from the bf16 values, store bf16 (as
    // mha_forward does).
    auto [output, qkv, context, lse, rng_state] = mha_packed_forward_cpu(
        x.to(at::kFloat), cu_seqlens, in_proj_weight.to(at::kFloat), to_float(in_proj_bias),
        out_proj_weight.to(at::kFloat), to_float(out_proj_bias), num_heads, max_seqlen,
        is_causal, window_left, window_right, dropout_p);
    return {output.to(at::kBFloat16), qkv.to(at::kBFloat16), context.to(at::kBFloat16), lse,
            rng_state};
  }
  const int64_t H = num_heads, D = E / H;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  const at::Tensor x2d = x.contiguous();

  at::Tensor qkv = projection_gemm(x2d, false, in_proj_weight, true, 1.0, in_proj_bias,
                                   x.scalar_type());
  at::Tensor context = at::empty({T, E}, x.options());
  // Sequence b's (H, L_b) log-sum-exp block starts at H * cu_seqlens[b].
  at::Tensor lse = at::empty({T * H}, x.options().dtype(logsumexp_dtype(x.scalar_type())));
  at::Tensor rng_state = at::zeros({2}, x.options().dtype(at::kLong));
  const uint64_t seed = dropout_p > 0.0 ? draw_dropout_seed() : 0;
  if (dropout_p > 0.0) rng_state[0] = static_cast<int64_t>(seed);

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "mha_packed_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto& kernels = attention_kernels<scalar_t>();
    std::vector<ForwardArgs<scalar_t>> args(B);
    std::vector<int64_t> tasks(B);
    std::vector<double> task_flops(B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = offsets[b], L = offsets[b + 1] - offsets[b];
      ForwardArgs<scalar_t>& a = args[b];
      a.g = AttentionGeometry{1, L, E, H, D, /*batch_first=*/true};
      a.qkv = qkv.const_data_ptr<scalar_t>() + start * 3 * E;
      a.context = context.mutable_data_ptr<scalar_t>() + start * E;
      a.lse = lse.mutable_data_ptr<acc_t>() + start * H;
      a.masks = packed_masks<acc_t>(is_causal, window_left, window_right);
      a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
      a.tiles = choose_tile_sizes(std::max<int64_t>(L, 1));
      if (dropout_p > 0.0) {
        a.dropout.enabled = true;
        a.dropout.p = dropout_p;
        a.dropout.seed = sequence_seed(seed, b);
      }
      tasks[b] = forward_task_count(a.g, a.tiles, /*heads_inside=*/false);
      // A task: a query block against the L keys, two GEMMs of 2*rows*L*D.
      task_flops[b] = 4.0 * std::min(a.tiles.forward_q, std::max<int64_t>(L, 1)) * L * D + 1.0;
    }
    parallel_over_sequences(tasks, task_flops, [&](int64_t b, int64_t begin, int64_t end) {
      kernels.forward_tasks(args[b], /*need_weights=*/false, /*heads_inside=*/false, begin, end);
    });
  });

  // Under dropout the kernels left the context unscaled (a 0/1 mask, see DropoutParams):
  // 1 / (1 - p) is applied here, once.
  const double context_scale =
      dropout_p > 0.0 ? DropoutParams{true, dropout_p, 0}.keep_scale() : 1.0;
  at::Tensor output = projection_gemm(context, false, out_proj_weight, true, context_scale,
                                      out_proj_bias, x.scalar_type());
  return {output, qkv, context, lse, rng_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mha_packed_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    int64_t num_heads, bool is_causal, int64_t window_left, int64_t window_right,
    double dropout_p, std::array<bool, 5> output_mask) {
  const char* op = "mha_packed_backward";
  const PackedSizes s = check_packed_inputs(op, x, cu_seqlens, in_proj_weight, std::nullopt,
                                            out_proj_weight, std::nullopt, num_heads,
                                            window_left, window_right, dropout_p);
  check_packed_backward_inputs(s, grad_output, x, qkv, context, logsumexp, rng_state);
  const int64_t T = s.tokens.expect_int(), E = s.embed.expect_int();
  const std::vector<int64_t> offsets = read_cu_seqlens(op, cu_seqlens, T);
  if (x.scalar_type() == at::kBFloat16 && !bf16_native_compute()) {
    // See mha_packed_forward_cpu: fp32 compute from the bf16 values, bf16 gradients.
    auto grads = mha_packed_backward_cpu(
        grad_output.to(at::kFloat), x.to(at::kFloat), cu_seqlens, in_proj_weight.to(at::kFloat),
        out_proj_weight.to(at::kFloat), qkv.to(at::kFloat), context.to(at::kFloat), logsumexp,
        rng_state, num_heads, is_causal, window_left, window_right, dropout_p, output_mask);
    auto down = [](const at::Tensor& t) { return t.defined() ? t.to(at::kBFloat16) : t; };
    return {down(std::get<0>(grads)), down(std::get<1>(grads)), down(std::get<2>(grads)),
            down(std::get<3>(grads)), down(std::get<4>(grads))};
  }
  const int64_t H = num_heads, D = E / H;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  const auto dtype = x.scalar_type();
  const at::Tensor grad_out2d = grad_output.contiguous();
  const at::Tensor ctx2d = context.contiguous();
  // The saved context is unscaled under dropout: output = s C W^T + b.
  const double context_scale =
      dropout_p > 0.0 ? DropoutParams{true, dropout_p, 0}.keep_scale() : 1.0;
  at::Tensor grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b;
  // The parameter gradients are sums over sequences: one GEMM over all T rows each.
  if (output_mask[3]) grad_out_w = projection_gemm(grad_out2d, true, ctx2d, false, context_scale, std::nullopt, dtype);
  if (output_mask[4]) grad_out_b = column_sums(grad_out2d, dtype);
  if (!(output_mask[0] || output_mask[1] || output_mask[2])) {
    return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
  }

  const at::Tensor grad_ctx = projection_gemm(grad_out2d, false, out_proj_weight, false, context_scale, std::nullopt, dtype);
  const at::Tensor qkv_c = qkv.contiguous();
  const at::Tensor lse_c = logsumexp.contiguous();
  const auto acc_type = logsumexp_dtype(dtype);
  at::Tensor dsum = at::empty({T * H}, x.options().dtype(acc_type));
  // Every entry is written: dQ by reduce_grad_q_rows, dK and dV by the key-block tasks (which
  // cover every key row of every sequence).
  at::Tensor grad_qkv = at::empty({T, 3 * E}, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "mha_packed_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto& kernels = attention_kernels<scalar_t>();
    std::vector<BackwardArgs<scalar_t>> args(B);
    std::vector<int64_t> chunks(B), partial_start(B + 1, 0);
    std::vector<double> chunk_flops(B);
    std::vector<int64_t> tasks(B);
    double total_work = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const double L = static_cast<double>(offsets[b + 1] - offsets[b]);
      total_work += L * L;
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = offsets[b], L = offsets[b + 1] - offsets[b];
      BackwardArgs<scalar_t>& a = args[b];
      a.g = AttentionGeometry{1, L, E, H, D, /*batch_first=*/true};
      a.qkv = qkv_c.const_data_ptr<scalar_t>() + start * 3 * E;
      a.context = ctx2d.const_data_ptr<scalar_t>() + start * E;
      a.grad_context = grad_ctx.const_data_ptr<scalar_t>() + start * E;
      a.lse = lse_c.const_data_ptr<acc_t>() + start * H;
      a.dsum = dsum.mutable_data_ptr<acc_t>() + start * H;
      a.grad_qkv = grad_qkv.mutable_data_ptr<acc_t>() + start * 3 * E;
      a.masks = packed_masks<acc_t>(is_causal, window_left, window_right);
      a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
      a.tiles = choose_tile_sizes(std::max<int64_t>(L, 1));
      if (dropout_p > 0.0) {
        a.dropout.enabled = true;
        a.dropout.p = dropout_p;
        a.dropout.seed = sequence_seed(static_cast<uint64_t>(rng_state[0].item<int64_t>()), b);
      }
      // dQ partial buffers: a sequence's share of the work decides how many it splits into,
      // from the problem alone (never the thread count), so the order of every dQ sum and so
      // every bit of the gradients is the same whatever the number of threads.
      tasks[b] = kernels.backward_task_count(a.g, a.tiles);
      const double share = total_work > 0.0 ? double(L) * double(L) / total_work : 0.0;
      chunks[b] = std::max<int64_t>(
          1, std::min<int64_t>({kMaxChunksPerSequence, tasks[b],
                                static_cast<int64_t>(std::ceil(share * kPackedChunkBudget))}));
      if (tasks[b] == 0) chunks[b] = 0;  // an empty sequence
      a.chunks = std::max<int64_t>(chunks[b], 1);
      partial_start[b + 1] = partial_start[b] + chunks[b] * H * L * D;
      // A chunk: tasks/chunks key blocks, five GEMMs of 2*rows*L*D each against all queries.
      chunk_flops[b] = 10.0 * static_cast<double>(H * L) * L * D / a.chunks + 1.0;
    }
    at::Tensor grad_q_partials = at::zeros({partial_start[B]}, x.options().dtype(acc_type));
    for (int64_t b = 0; b < B; ++b) {
      args[b].grad_q_partials = grad_q_partials.mutable_data_ptr<acc_t>() + partial_start[b];
    }
    // Cost per row of dsum_rows / reduce_grad_q_rows, as in mha_backward.
    const double row_flops = 2.0 * E * kMaxChunksPerSequence;
    parallel_over_rows(offsets, row_flops, [&](int64_t b, int64_t begin, int64_t end) {
      kernels.dsum_rows(args[b], begin, end);
    });
    parallel_over_sequences(chunks, chunk_flops, [&](int64_t b, int64_t begin, int64_t end) {
      kernels.backward_chunks(args[b], begin, end);
    });
    parallel_over_rows(offsets, row_flops, [&](int64_t b, int64_t begin, int64_t end) {
      kernels.reduce_grad_q_rows(args[b], begin, end);
    });
  });

  const at::Tensor grad_qkv_in = grad_qkv.to(dtype);
  if (output_mask[0]) grad_x = projection_gemm(grad_qkv_in, false, in_proj_weight, false, 1.0, std::nullopt, dtype);
  if (output_mask[1]) grad_in_w = projection_gemm(grad_qkv_in, true, x.contiguous(), false, 1.0, std::nullopt, dtype);
  if (output_mask[2]) grad_in_b = column_sums(grad_qkv, dtype);
  return {grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("mha_packed_forward", TORCH_FN(mhsa::cpu::mha_packed_forward_cpu));
  m.impl("mha_packed_backward", TORCH_FN(mhsa::cpu::mha_packed_backward_cpu));
}
