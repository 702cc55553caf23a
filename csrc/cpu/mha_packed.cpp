// CPU kernels of mhsa::_mha_packed_forward and _mha_packed_backward: B sequences back to back
// in x (T, E), each attending only to itself (FlashAttention's varlen layout). The projections
// are single GEMMs over all T rows; the attention kernels run per sequence as a batch of one,
// pointers offset to its rows, so the work is sum L_b^2, not B * max(L)^2. The tasks of all
// sequences share one parallel loop, so many short sequences and one long one keep every thread
// busy alike.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <vector>

#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

#include "checks/checks.h"
#include "checks/packed_checks.h"
#include "cpu/dropout_seed.h"
#include "cpu/fp32_compute.h"
#include "cpu/input_bias_sums.h"
#include "cpu/parallel_stats.h"
#include "cpu/projection_backward.h"
#include "cpu/projection_gemm.h"
#include "cpu/thread_team.h"
#include "engine/cpu_capability.h"
#include "kernels/attention_args.h"
#include "kernels/attention_kernels.h"
#include "mha_op_entry.h"

namespace mhsa::cpu {
namespace {

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
    const size_t b = static_cast<size_t>(std::upper_bound(cost_start.begin(), cost_start.end(), c) -
                                         cost_start.begin() - 1);
    const double local = (c - cost_start[b]) / cost[b];
    const int64_t k = std::min<int64_t>(items[b], static_cast<int64_t>(std::ceil(local)));
    return item_start[b] + k;
  };
  auto run_items = [&](int64_t begin, int64_t end) {
    size_t b = static_cast<size_t>(std::upper_bound(item_start.begin(), item_start.end(), begin) -
                                   item_start.begin() - 1);
    while (begin < end) {
      const int64_t seq_end = std::min(end, item_start[b + 1]);
      if (seq_end > begin)
        fn(static_cast<int64_t>(b), begin - item_start[b], seq_end - item_start[b]);
      begin = std::max(begin, seq_end);
      ++b;
    }
  };
  const int64_t parts =
      total_cost < double(1 << 20) ? 1 : std::min<int64_t>(total_items, 4 * at::get_num_threads());
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
    size_t b = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), begin) -
                                   offsets.begin() - 1);
    while (begin < end) {
      const int64_t seq_end = std::min(end, offsets[b + 1]);
      if (seq_end > begin) fn(static_cast<int64_t>(b), begin - offsets[b], seq_end - offsets[b]);
      begin = std::max(begin, seq_end);
      ++b;
    }
  });
}

// The masks of every sequence: the causal mask and the window, nothing else.
template <typename acc_t>
MaskView<acc_t> packed_masks(const internal::PackedAttentionOptions& options) {
  MaskView<acc_t> m;
  m.causal = options.is_causal;
  m.window_left = options.window_size[0];
  m.window_right = options.window_size[1];
  return m;
}

// The computation in x's dtype; `stored_as`: see Fp32Compute.
internal::PackedForwardOutputs mha_packed_forward_compute(
    const at::Tensor& x, const std::vector<int64_t>& offsets, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const internal::PackedAttentionOptions& options,
    std::optional<at::ScalarType> stored_as) {
  const int64_t T = x.size(0), E = x.size(1);
  const int64_t H = options.num_heads, D = E / H;
  const double dropout_p = options.dropout_p;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  const at::Tensor x2d = x.contiguous();

  at::Tensor qkv =
      projection_gemm(x2d, false, in_proj_weight, true, 1.0, in_proj_bias, x.scalar_type());
  if (stored_as.has_value()) qkv = qkv.to(*stored_as).to(x.scalar_type());
  at::Tensor context = at::empty({T, E}, x.options());
  // Sequence b's (H, L_b) log-sum-exp block starts at H * cu_seqlens[b].
  at::Tensor lse = at::empty({T * H}, x.options().dtype(logsumexp_dtype(x.scalar_type())));
  at::Tensor rng_state = at::zeros({2}, x.options().dtype(at::kLong));
  const uint64_t seed = dropout_p > 0.0 ? draw_dropout_seed() : 0;
  if (dropout_p > 0.0) rng_state[0] = static_cast<int64_t>(seed);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "mha_packed_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto& kernels = attention_kernels<scalar_t>();
        std::vector<ForwardArgs<scalar_t>> args(B);
        std::vector<int64_t> tasks(B);
        std::vector<double> task_flops(B);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t start = offsets[b], L = offsets[b + 1] - offsets[b];
          ForwardArgs<scalar_t>& a = args[b];
          a.g = self_attention_geometry(1, L, E, H, /*batch_first=*/true);
          a.q = qkv.const_data_ptr<scalar_t>() + start * 3 * E;
          a.k = a.q + E;
          a.v = a.q + 2 * E;
          a.context = context.mutable_data_ptr<scalar_t>() + start * E;
          a.lse = lse.mutable_data_ptr<acc_t>() + start * H;
          a.masks = packed_masks<acc_t>(options);
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
          kernels.forward_tasks(args[b], /*need_weights=*/false, /*heads_inside=*/false, begin,
                                end);
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

internal::PackedForwardOutputs mha_packed_forward_cpu(
    const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& in_proj_weight,
    const std::optional<at::Tensor>& in_proj_bias, const at::Tensor& out_proj_weight,
    const std::optional<at::Tensor>& out_proj_bias, const internal::PackedAttentionOptions& options,
    std::optional<int64_t> max_seqlen) {
  const char* op = "_mha_packed_forward";
  const PackedSizes s = check_packed_inputs(op, x, cu_seqlens, in_proj_weight, in_proj_bias,
                                            out_proj_weight, out_proj_bias, options);
  const std::vector<int64_t> offsets =
      read_cu_seqlens(op, cu_seqlens, s.tokens.expect_int(), max_seqlen);
  const Fp32Compute c(x.scalar_type());
  auto [output, qkv, context, lse, rng_state] = mha_packed_forward_compute(
      c.in(x), offsets, c.in(in_proj_weight), c.in(in_proj_bias), c.in(out_proj_weight),
      c.in(out_proj_bias), options, c.stored_as());
  return {c.out(output), c.out(qkv), c.out(context), lse, rng_state};
}

// The backward tasks of every sequence on one team of threads that run at once (a task may wait
// for the dQ turn of an earlier key block, see attention_backward_kernel.cpp), as one list dealt
// round-robin: thread k runs global tasks k, k + team, ... in increasing order. A task only waits
// for a smaller one of its own sequence, so the smallest unfinished task can always proceed (no
// deadlock, whatever the team).
template <typename scalar_t>
void run_packed_backward_tasks(const AttentionKernels<scalar_t>& kernels,
                               const std::vector<BackwardArgs<scalar_t>>& args,
                               const std::vector<int64_t>& tasks, double mean_task_flops,
                               int* abort) {
  std::vector<int64_t> start(tasks.size() + 1, 0);
  for (size_t b = 0; b < tasks.size(); ++b) start[b + 1] = start[b] + tasks[b];
  const int64_t total = start.back();
  if (total == 0) return;
  run_on_team("packed backward attention", total, mean_task_flops, abort,
              [&](int64_t thread, int64_t team) {
                for (size_t b = 0; b < args.size(); ++b) {
                  if (tasks[b] == 0) continue;
                  const int64_t first = ((thread - start[b]) % team + team) % team;
                  if (first >= tasks[b]) continue;  // none of this sequence's tasks is ours
                  kernels.backward_tasks(args[b], first, team);
                  if (__atomic_load_n(abort, __ATOMIC_RELAXED) != 0) return;
                }
              });
}

// The computation in x's dtype, from checked inputs.
internal::BackwardOutputs mha_packed_backward_compute(
    const PackedSizes& s, const std::vector<int64_t>& offsets, const at::Tensor& grad_output,
    const at::Tensor& x, const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight,
    const at::Tensor& qkv, const at::Tensor& context, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, const internal::PackedAttentionOptions& options,
    std::array<bool, 5> output_mask) {
  const int64_t T = s.tokens.expect_int(), E = s.embed.expect_int();
  const int64_t H = options.num_heads, D = E / H;
  const double dropout_p = options.dropout_p;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  const auto dtype = x.scalar_type();
  const at::Tensor ctx2d = context.contiguous();
  // The parameter gradients are sums over sequences: one GEMM over all T rows each. The saved
  // context is unscaled under dropout. As in mha_backward_cpu, what is done with before the
  // input projection (grad_output's contiguous copy, grad_ctx) is released before it.
  OutputProjectionGrads out_grads = output_projection_backward(
      grad_output.contiguous(), ctx2d, out_proj_weight, dropout_p, output_mask, dtype);
  const at::Tensor grad_out_w = out_grads.grad_out_proj_weight;
  const at::Tensor grad_out_b = out_grads.grad_out_proj_bias;
  at::Tensor grad_ctx = std::move(out_grads.grad_context);
  if (!grad_ctx.defined())
    return {at::Tensor(), at::Tensor(), at::Tensor(), grad_out_w, grad_out_b};

  const at::Tensor qkv_c = qkv.contiguous();
  const at::Tensor lse_c = logsumexp.contiguous();
  const auto acc_type = logsumexp_dtype(dtype);
  at::Tensor dsum = at::empty({T * H}, x.options().dtype(acc_type));
  // Every entry is written: the dQ columns zeroed by dsum_rows then accumulated by the key
  // blocks, dK and dV by the key-block tasks (which cover every key row of every sequence).
  at::Tensor grad_qkv = at::empty({T, 3 * E}, x.options().dtype(acc_type));
  // The in_proj_bias sums of every sequence's blocks, sequence after sequence.
  std::vector<int64_t> q_block_start(B + 1, 0), kv_block_start(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = offsets[b + 1] - offsets[b];
    const TileSizes t = choose_tile_sizes(std::max<int64_t>(L, 1));  // as args[b].tiles below
    q_block_start[b + 1] = q_block_start[b] + (L + t.backward_q - 1) / t.backward_q;
    kv_block_start[b + 1] = kv_block_start[b] + (L + t.backward_kv - 1) / t.backward_kv;
  }
  InputBiasSums bias_sums;
  if (output_mask[2])
    bias_sums = InputBiasSums(q_block_start[B], kv_block_start[B], E, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "mha_packed_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto& kernels = attention_kernels<scalar_t>();
    std::vector<BackwardArgs<scalar_t>> args(B);
    std::vector<int64_t> tasks(B), turn_start(B + 1, 0);
    double flops = 0.0;
    int abort = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = offsets[b], L = offsets[b + 1] - offsets[b];
      BackwardArgs<scalar_t>& a = args[b];
      a.g = self_attention_geometry(1, L, E, H, /*batch_first=*/true);
      a.q = qkv_c.const_data_ptr<scalar_t>() + start * 3 * E;
      a.k = a.q + E;
      a.v = a.q + 2 * E;
      a.context = ctx2d.const_data_ptr<scalar_t>() + start * E;
      a.grad_context = grad_ctx.const_data_ptr<scalar_t>() + start * E;
      a.grad_out = a.g.out;
      a.lse = lse_c.const_data_ptr<acc_t>() + start * H;
      a.dsum = dsum.mutable_data_ptr<acc_t>() + start * H;
      a.grad_q = grad_qkv.mutable_data_ptr<acc_t>() + start * 3 * E;
      a.grad_k = a.grad_q + E;
      a.grad_v = a.grad_q + 2 * E;
      a.grad_q_layout = a.g.q;
      a.grad_k_layout = a.g.k;
      a.grad_v_layout = a.g.v;
      a.abort = &abort;
      a.masks = packed_masks<acc_t>(options);
      a.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(D)));
      a.tiles = choose_tile_sizes(std::max<int64_t>(L, 1));
      if (bias_sums.defined()) {
        a.bias_sums_q = bias_sums.q.mutable_data_ptr<acc_t>() + q_block_start[b] * E;
        a.bias_sums_kv = bias_sums.kv.mutable_data_ptr<acc_t>() + kv_block_start[b] * 2 * E;
      }
      if (dropout_p > 0.0) {
        a.dropout.enabled = true;
        a.dropout.p = dropout_p;
        a.dropout.seed = sequence_seed(static_cast<uint64_t>(rng_state[0].item<int64_t>()), b);
      }
      tasks[b] = kernels.backward_task_count(a.g, a.tiles);
      turn_start[b + 1] = turn_start[b] + kernels.dq_turn_count(a.g, a.tiles);
      // A task: one key block against the L queries, five GEMMs of 2*rows*cols*D per block.
      flops += 10.0 * static_cast<double>(H * L) * L * D;
    }
    // The dQ turn counters of every sequence (see attention_backward_kernel.cpp), one buffer.
    std::vector<int64_t> dq_turn(static_cast<size_t>(turn_start[B]) + 1);
    for (int64_t b = 0; b < B; ++b) {
      args[b].dq_turn = dq_turn.data() + turn_start[b];
      if (tasks[b] > 0) kernels.prepare_dq_order(args[b]);
    }
    // dsum_rows also zeroes the dQ columns the key blocks then add into.
    parallel_over_rows(offsets, 4.0 * E, [&](int64_t b, int64_t begin, int64_t end) {
      kernels.dsum_rows(args[b], begin, end);
    });
    int64_t total_tasks = 0;
    for (int64_t t : tasks) total_tasks += t;
    run_packed_backward_tasks(kernels, args, tasks, total_tasks > 0 ? flops / total_tasks : 0.0,
                              &abort);
  });
  grad_ctx.reset();
  dsum.reset();
  InputProjectionGrads in_grads = input_projection_backward(
      grad_qkv, std::move(bias_sums), x.contiguous(), in_proj_weight, output_mask, dtype);
  return {in_grads.grad_x, in_grads.grad_in_proj_weight, in_grads.grad_in_proj_bias, grad_out_w,
          grad_out_b};
}

internal::BackwardOutputs mha_packed_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& cu_seqlens,
    const at::Tensor& in_proj_weight, const at::Tensor& out_proj_weight, const at::Tensor& qkv,
    const at::Tensor& context, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    const internal::PackedAttentionOptions& options, std::array<bool, 5> output_mask) {
  const char* op = "_mha_packed_backward";
  const PackedSizes s = check_packed_inputs(op, x, cu_seqlens, in_proj_weight, std::nullopt,
                                            out_proj_weight, std::nullopt, options);
  check_packed_backward_inputs(s, grad_output, x, qkv, context, logsumexp, rng_state);
  const std::vector<int64_t> offsets = read_cu_seqlens(op, cu_seqlens, s.tokens.expect_int());
  const Fp32Compute c(x.scalar_type());
  auto [grad_x, grad_in_w, grad_in_b, grad_out_w, grad_out_b] = mha_packed_backward_compute(
      s, offsets, c.in(grad_output), c.in(x), c.in(in_proj_weight), c.in(out_proj_weight),
      c.in(qkv), c.in(context), logsumexp, rng_state, options, output_mask);
  return {c.out(grad_x), c.out(grad_in_w), c.out(grad_in_b), c.out(grad_out_w), c.out(grad_out_b)};
}

}  // namespace
}  // namespace mhsa::cpu

TORCH_LIBRARY_IMPL(mhsa, CPU, m) {
  m.impl("_mha_packed_forward",
         TORCH_FN(mhsa::internal::packed_forward_entry<&mhsa::cpu::mha_packed_forward_cpu>));
  m.impl("_mha_packed_backward",
         TORCH_FN(mhsa::internal::packed_backward_entry<&mhsa::cpu::mha_packed_backward_cpu>));
}
