"""Thread safety from Python: several Python threads call mhsa at the same time, each with its
own module, inputs, masks and flags; every result (output, weights, all gradients) is bitwise
identical to the same call made alone, single-threaded. The op releases the GIL (torch.ops
calls and autograd do), so the calls really overlap, each starting its own intra-op parallel
region.

The library keeps no mutable state shared between calls: the kernels' scratch buffers are
per task, the only statics are initialized once (thread-safe function-local statics: the op
handles, the CPU capability, the kernel table), and the dropout seed is drawn under the default
generator's mutex.
"""

from __future__ import annotations

import threading

import torch

from mhsa_testutils import assert_close, make_attn_mask, make_input, make_kpm, make_pair

# Each thread's configuration: (L, N, E, H, dtype, batch_first, attn_mask, kpm, is_causal,
# need_weights, average)
CONFIGS = [
    (70, 2, 32, 4, torch.float32, False, "bool2d", None, False, True, True),
    (130, 1, 16, 2, torch.float64, True, None, "float", True, True, False),
    (9, 3, 24, 3, torch.float32, True, "float3d", "bool", False, False, True),
    (257, 2, 16, 4, torch.float32, False, None, None, True, False, True),
    (33, None, 16, 16, torch.float64, False, "bool3d", "bool", True, True, False),
    (64, 4, 64, 8, torch.bfloat16, True, "bool2d", "bool", False, True, True),
]
ROUNDS = 8


def _setup(i):
    L, N, E, H, dtype, batch_first, am, kpm, causal, nw, avg = CONFIGS[i]
    build_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    _, mod = make_pair(E, H, batch_first=batch_first, dtype=build_dtype, seed=10 * i)
    mod = mod.to(dtype)
    x = make_input(L, N, E, batch_first=batch_first, dtype=dtype, seed=10 * i + 1)
    masks = dict(
        attn_mask=make_attn_mask(am, N=N, H=H, L=L, dtype=dtype, seed=10 * i + 2),
        key_padding_mask=make_kpm(kpm, N=N, L=L, dtype=dtype, seed=10 * i + 3),
    )
    kwargs = dict(masks, is_causal=causal, need_weights=nw, average_attn_weights=avg)
    return mod, x, kwargs


def _call(mod, x, kwargs):
    out, w = mod(x, **kwargs)
    loss = out.float().square().sum() + (w.float().sum() * 3 if w is not None else 0)
    grads = torch.autograd.grad(loss, [x] + list(mod.parameters()))
    return [out.detach()] + ([w.detach()] if w is not None else []) + list(grads)


def test_concurrent_python_threads_match_single_threaded_results():
    setups = [_setup(i) for i in range(len(CONFIGS))]
    expected = [_call(*s) for s in setups]  # one at a time, before any thread starts

    barrier = threading.Barrier(len(setups))
    results = [[None] * ROUNDS for _ in setups]
    errors = []

    def worker(i):
        try:
            barrier.wait()
            for r in range(ROUNDS):
                results[i][r] = _call(*setups[i])
        except BaseException as e:  # reported in the main thread
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(setups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    for i, per_round in enumerate(results):
        for r, got in enumerate(per_round):
            assert len(got) == len(expected[i])
            for k, (a, e) in enumerate(zip(got, expected[i])):
                assert torch.equal(a, e), (
                    f"config {i}, round {r}, result {k}: differs from the single-threaded call"
                )


def test_concurrent_calls_sharing_one_module_and_input():
    """Threads may share read-only tensors (the same module and input) too."""
    mod, x, kwargs = _setup(0)
    expected = _call(mod, x, kwargs)
    results, errors = [], []
    lock = threading.Lock()

    def worker():
        try:
            for _ in range(ROUNDS):
                got = _call(mod, x, kwargs)
                with lock:
                    results.append(got)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 4 * ROUNDS
    for got in results:
        for a, e in zip(got, expected):
            assert torch.equal(a, e)


def test_concurrent_dropout_calls_are_self_consistent():
    """With dropout the order in which threads draw their seeds from the default generator is
    not fixed, so results are not compared across runs; each call must still be consistent:
    its output is out_proj(weights @ V) for the per-head weights (after dropout) it returned."""
    L, N, E, H = 40, 2, 16, 4
    _, mod = make_pair(E, H, dtype=torch.float64, dropout=0.3, seed=7)
    mod.train()
    x = make_input(L, N, E, batch_first=False, dtype=torch.float64, seed=8).detach()
    errors = []

    def check_once():
        out, w = mod(x, average_attn_weights=False)  # w: (N, H, L, L) after dropout
        v = torch.nn.functional.linear(x, mod.in_proj_weight[2 * E :], mod.in_proj_bias[2 * E :])
        v = v.reshape(L, N, H, E // H).permute(1, 2, 0, 3)  # (N, H, L, D)
        ctx = (w @ v).permute(2, 0, 1, 3).reshape(L, N, E)
        assert_close(out, mod.out_proj(ctx), torch.float64, "from_weights", "output")
        assert (w == 0).any()

    def worker():
        try:
            with torch.no_grad():
                for _ in range(ROUNDS):
                    check_once()
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors


def test_every_phase_offers_work_to_many_threads():
    """With 16 threads (more than this machine's cores: the question is where work goes, not
    speed), every parallel phase of a (1, 1024, 64, 8) step hands tasks to all 16 threads,
    evenly; in particular the backward attention is not capped by a fixed chunk count."""
    import json
    import os
    import subprocess
    import sys

    code = """
import json, torch, mhsa
torch.set_num_threads(16)
attn = mhsa.MultiheadSelfAttention(64, 8, batch_first=True)
x = torch.randn(1, 1024, 64, requires_grad=True)
torch.ops.mhsa._parallel_stats()
out, _ = attn(x, need_weights=False, is_causal=True)
out.sum().backward()
print(torch.ops.mhsa._parallel_stats())
"""
    env = dict(os.environ, MHSA_PARALLEL_STATS="1", OMP_NUM_THREADS="16")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    for phase in ("forward attention", "backward attention", "projection GEMM tiles"):
        assert stats[phase]["threads"] == 16, (phase, stats[phase])
    # The attention phases deal equal task counts (32 query blocks x 8 heads forward, 8 key
    # blocks x 8 heads backward). The projection phase sums several GEMMs; the weight
    # gradients' (3E x E) outputs have only a few tiles at E = 64, so it is checked for
    # spreading (above), not for balance.
    for phase in ("forward attention", "backward attention"):
        assert stats[phase]["max_over_mean"] <= 1.25, (phase, stats[phase])
