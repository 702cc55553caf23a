"""Determinism: the same inputs and seed give bitwise identical outputs, weights and gradients
from run to run, across processes, and whatever the number of threads (1, 2, 3, 4), including
with dropout (its masks come from a counter-based generator seeded by torch.manual_seed) and
with need_weights (averaged or per head).

Why this holds by construction, on every CPU (csrc/cpu): the forward attention splits into
(batch, head, query block) tasks that each write their own rows, and head-averaged weights are
summed over the heads inside one task in a fixed order; the backward splits into a fixed number
of chunks (kBackwardChunks, independent of the thread count) whose dQ partial sums are added in
chunk order; dK/dV rows belong to one task each. Every tile GEMM runs single-threaded on its
calling thread. The projection GEMMs are not left to a multi-threaded BLAS (which splits them,
and the weight gradients' reductions over N*L rows, by the thread count, and rounds differently
on AVX-512/AMX machines): projection_gemm.cpp cuts them into output tiles of shape-only sizes,
each one single-threaded GEMM over the whole reduction, and the bias gradients are column sums
in a fixed order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import mhsa
from mhsa_testutils import make_attn_mask, make_kpm, run_python_in_subprocess

HERE = Path(__file__).resolve().parent

# (L, N, E, H): one mid-size batch (several query blocks per head, the 64-row backward query
# tiles), one long single sequence (the larger tiles for L >= 1024, backward chunks spanning
# key blocks of one head), one wide batch of short sequences (many small tasks).
SHAPES = {
    "mid": (300, 2, 64, 4),
    "long": (1100, 1, 32, 2),
    "wide": (40, 8, 128, 8),
}

VARIANTS = {
    # name: (dropout, need_weights, average, masks, is_causal)
    "plain_no_weights": (0.0, False, True, None, False),
    "masks_avg_weights": (0.0, True, True, "bool", True),
    "dropout_avg_weights": (0.25, True, True, "float", False),
    "dropout_head_weights": (0.25, True, False, "bool", True),
    "dropout_no_weights": (0.25, False, True, "float", True),
}


def _inputs(shape, dtype, masks, seed=0):
    L, N, E, H = shape
    torch.manual_seed(seed)
    mod = mhsa.MultiheadSelfAttention(E, H, batch_first=True, dtype=dtype)
    with torch.no_grad():
        mod.in_proj_bias.normal_(0, 0.1)
        mod.out_proj.bias.normal_(0, 0.1)
    x = torch.randn(N, L, E, dtype=torch.float64).to(dtype)
    am = kpm = None
    if masks is not None:
        am = make_attn_mask(f"{masks}2d", N=N, H=H, L=L, dtype=dtype, seed=seed + 1)
        kpm = make_kpm(masks, N=N, L=L, dtype=dtype, seed=seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    r1 = torch.randn(N, L, E, generator=g, dtype=torch.float64).to(dtype)
    return mod, x, am, kpm, r1


def run_once(shape, dtype, variant, threads: int, seed: int = 0):
    """Forward and backward of one configuration with `threads` intra-op threads; returns
    every result tensor (output, weights, gradients of x and the 4 parameters)."""
    dropout, need_weights, average, masks, is_causal = VARIANTS[variant]
    mod, x, am, kpm, r1 = _inputs(shape, dtype, masks, seed)
    mod.dropout = dropout
    mod.train()
    x = x.clone().requires_grad_()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed + 100)  # the dropout seed
        out, w = mod(
            x,
            attn_mask=am,
            key_padding_mask=kpm,
            need_weights=need_weights,
            average_attn_weights=average,
            is_causal=is_causal,
        )
        loss = (out * r1).float().sum()
        if w is not None:
            loss = loss + (w.float() * w.float()).sum()
        grads = torch.autograd.grad(loss, [x] + list(mod.parameters()))
    finally:
        torch.set_num_threads(previous)
    results = {"output": out.detach(), "input grad": grads[0]}
    if w is not None:
        results["weights"] = w.detach()
    for (name, _), gr in zip(mod.named_parameters(), grads[1:]):
        results[f"grad {name}"] = gr
    return results


def _first_difference(a, b):
    for name in a:
        if not torch.equal(a[name], b[name]):
            diff = (a[name].double() - b[name].double()).abs()
            return f"{name}: max |difference| {diff.max().item():.3g} at {diff.argmax().item()}"
    return None


# float32 on every shape; float64 and bfloat16 (other kernels' instantiations, bf16 GEMMs)
# on the mid shape.
CASES = [
    pytest.param(shape, variant, torch.float32, id=f"{shape}-{variant}-f32")
    for shape in SHAPES
    for variant in VARIANTS
]
CASES += [
    pytest.param("mid", variant, dtype, id=f"mid-{variant}-{name}")
    for dtype, name in ((torch.float64, "f64"), (torch.bfloat16, "bf16"))
    for variant in VARIANTS
]


@pytest.mark.parametrize("shape,variant,dtype", CASES)
def test_bitwise_identical_across_runs_and_thread_counts(shape, variant, dtype):
    base = run_once(SHAPES[shape], dtype, variant, threads=1)
    again = run_once(SHAPES[shape], dtype, variant, threads=1)
    assert _first_difference(base, again) is None, (
        f"run to run (1 thread): {_first_difference(base, again)}"
    )
    two = run_once(SHAPES[shape], dtype, variant, threads=2)
    assert _first_difference(base, two) is None, f"1 vs 2 threads: {_first_difference(base, two)}"
    two_again = run_once(SHAPES[shape], dtype, variant, threads=2)
    assert _first_difference(two, two_again) is None, (
        f"run to run (2 threads): {_first_difference(two, two_again)}"
    )


@pytest.mark.parametrize(
    "shape,variant", [("mid", "dropout_head_weights"), ("long", "dropout_avg_weights")]
)
def test_bitwise_identical_with_more_threads_than_cores(shape, variant):
    """3 and 4 threads (more than the 2 cores CI has): other splits of the same tasks."""
    base = run_once(SHAPES[shape], torch.float32, variant, threads=1)
    for threads in (3, 4):
        other = run_once(SHAPES[shape], torch.float32, variant, threads=threads)
        assert _first_difference(base, other) is None, (
            f"1 vs {threads} threads: {_first_difference(base, other)}"
        )


def test_dropout_seed_changes_results_but_reseeding_reproduces():
    """The determinism above is not vacuous: another seed draws other dropout masks."""
    a = run_once(SHAPES["mid"], torch.float32, "dropout_head_weights", threads=2, seed=0)
    torch.manual_seed(1)
    b = run_once(SHAPES["mid"], torch.float32, "dropout_head_weights", threads=2, seed=0)
    assert _first_difference(a, b) is None
    dropout, need_weights, average, masks, is_causal = VARIANTS["dropout_head_weights"]
    mod, x, am, kpm, _ = _inputs(SHAPES["mid"], torch.float32, masks)
    mod.dropout = dropout
    torch.manual_seed(100)
    w1 = mod(x, attn_mask=am, average_attn_weights=False, is_causal=is_causal)[1]
    torch.manual_seed(101)
    w2 = mod(x, attn_mask=am, average_attn_weights=False, is_causal=is_causal)[1]
    assert not torch.equal(w1 == 0, w2 == 0)


_PROCESS_SCRIPT = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import torch
import test_determinism as t
digests = {}
for variant in ("masks_avg_weights", "dropout_head_weights"):
    results = t.run_once(t.SHAPES["mid"], torch.float32, variant, threads=torch.get_num_threads())
    h = hashlib.sha256()
    for name in sorted(results):
        h.update(name.encode()); h.update(results[name].contiguous().view(torch.uint8).numpy().tobytes())
    digests[variant] = h.hexdigest()
print(json.dumps({"threads": torch.get_num_threads(), "digests": digests}))
"""


def test_bitwise_identical_across_processes():
    """Fresh processes (different addresses, thread pools started differently, OMP_NUM_THREADS
    1 and 2) give the same bits."""
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        r = run_python_in_subprocess(_PROCESS_SCRIPT, [str(HERE)], env)
        assert r.returncode == 0, r.stderr[-4000:]
        outputs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert [o["threads"] for o in outputs] == [1, 2]
    assert outputs[0]["digests"] == outputs[1]["digests"]
