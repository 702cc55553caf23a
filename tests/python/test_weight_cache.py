"""Weights prepared once for inference never go stale.

In inference (grad mode off) the float32 projections keep each weight's transpose between calls
(csrc/cpu/weight_cache.h), keyed on the tensor's identity, version counter, data pointer, sizes
and strides. Whatever changes a weight between two calls (an optimizer step, an in-place update,
load_state_dict, .data assignment) must change mhsa's result exactly as it changes
nn.MultiheadAttention's; and the cache holds no copy of a weight that is gone.
"""

import gc
import os
from typing import Callable

import pytest
import torch
from torch import nn

import mhsa
from mhsa_testutils import assert_close, run_python_in_subprocess

# L = 1 takes the few-rows projection, which reads the weight as it is; L = 40 the tile GEMMs,
# which read the cached transpose.
LENGTHS = [1, 40]


def pair(seed: int):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    return ref, mhsa.MultiheadSelfAttention.from_torch(ref).eval()


def outputs(ref: nn.Module, mod: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return mod(x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0]


def check_update(update: Callable[[nn.Module, nn.Module], None], L: int) -> None:
    ref, mod = pair(0)
    x = torch.randn(2, L, 32)
    before, ref_before = outputs(ref, mod, x)
    assert_close(before, ref_before, torch.float32, "out", "before the update")
    copies = torch.ops.mhsa._weight_cache_entries()
    again, _ = outputs(ref, mod, x)  # a second call: served from the cache (no new copy)
    assert torch.ops.mhsa._weight_cache_entries() == copies
    assert torch.equal(again, before)
    update(ref, mod)
    after, ref_after = outputs(ref, mod, x)
    assert not torch.equal(ref_after, ref_before), "the update must change nn's result"
    assert_close(after, ref_after, torch.float32, "out", "after the update")


@pytest.mark.parametrize("L", LENGTHS)
def test_in_place_update_between_calls(L):
    def update(ref, mod):
        with torch.no_grad():
            for p in (ref.in_proj_weight, mod.in_proj_weight):
                p.mul_(1.5)
            for p in (ref.out_proj.weight, mod.out_proj.weight):
                p.add_(0.01)

    check_update(update, L)


@pytest.mark.parametrize("L", LENGTHS)
def test_load_state_dict_between_calls(L):
    def update(ref, mod):
        other, _ = pair(1)
        ref.load_state_dict(other.state_dict())
        mod.load_state_dict(other.state_dict())

    check_update(update, L)


@pytest.mark.parametrize("L", LENGTHS)
def test_optimizer_step_between_calls(L):
    def update(ref, mod):
        for m in (ref, mod):
            torch.manual_seed(5)  # the same batch for both models
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            y = torch.randn(2, 5, 32)
            out = m(y, y, y)[0] if m is ref else m(y)[0]
            out.square().sum().backward()
            opt.step()

    check_update(update, L)


@pytest.mark.parametrize("L", LENGTHS)
def test_data_assignment_between_calls(L):
    def update(ref, mod):
        new_w = torch.randn_like(ref.in_proj_weight) * 0.2  # the init's scale
        ref.in_proj_weight.data = new_w.clone()
        mod.in_proj_weight.data = new_w.clone()

    check_update(update, L)


@pytest.mark.parametrize("L", LENGTHS)
def test_writes_through_data_between_calls(L):
    """p.data has a version counter of its own: in-place writes through it (initializers, EMA
    updates) do not bump p's, and are caught by the sampled values."""

    def update(ref, mod):
        for m in (ref, mod):
            m.in_proj_weight.data.mul_(0.5).add_(0.01)
            m.out_proj.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))

    check_update(update, L)


@pytest.mark.parametrize("L", LENGTHS)
def test_data_assigned_twice_between_calls(L):
    """Two .data assignments may bring the first storage's address back: the storage identity
    tells them apart."""

    def update(ref, mod):
        for m in (ref, mod):
            w = m.in_proj_weight
            w.data = w.data * 1.25
            w.data = w.data * 0.5

    check_update(update, L)


def test_cache_keeps_no_copy_of_freed_weights():
    x = torch.randn(1, 40, 32)
    live = pair(9)
    outputs(*live, x)  # every cached call drops the entries of freed weights
    before = torch.ops.mhsa._weight_cache_entries()
    for seed in range(5):
        ref, mod = pair(seed)
        outputs(ref, mod, x)
        del ref, mod
    gc.collect()
    outputs(*live, x)
    assert torch.ops.mhsa._weight_cache_entries() == before


def test_weights_that_change_every_call_are_not_copied():
    """Inside an autograd.Function's forward (how torch.compile and checkpointing run a training
    step) grad mode is off, so the call looks like inference: a weight that changed before its
    copy was reused is not copied again, until it stays unchanged between two calls."""
    x = torch.randn(1, 40, 32)
    live = pair(9)
    outputs(*live, x)
    before = torch.ops.mhsa._weight_cache_entries()
    torch.manual_seed(0)
    mod = mhsa.MultiheadSelfAttention(32, 4, batch_first=True)

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            return mod(inp)[0]

        @staticmethod
        def backward(ctx, grad):
            return grad

    for _ in range(3):
        Step.apply(x.requires_grad_())
        with torch.no_grad():
            mod.in_proj_weight.add_(0.01)
            mod.out_proj.weight.add_(0.01)
    assert torch.ops.mhsa._weight_cache_entries() == before
    mod.eval()
    for _ in range(2):
        with torch.no_grad():
            out = mod(x)[0]
    assert torch.ops.mhsa._weight_cache_entries() == before + 2
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ref.load_state_dict(mod.state_dict())
    with torch.no_grad():
        assert_close(out, ref(x, x, x)[0], torch.float32, "out", "output")


def test_no_cache_while_training():
    """With grad mode on nothing is cached: training steps update the weights every step."""
    x = torch.randn(1, 40, 32)
    live = pair(3)
    gc.collect()
    outputs(*live, x)  # drops the entries of freed weights; the live ones stay
    before = torch.ops.mhsa._weight_cache_entries()
    torch.manual_seed(0)
    mod = mhsa.MultiheadSelfAttention(32, 4, batch_first=True)
    mod(x)[0].sum().backward()
    assert torch.ops.mhsa._weight_cache_entries() == before
    with torch.no_grad():
        mod(x)
    assert torch.ops.mhsa._weight_cache_entries() == before + 2  # in_proj and out_proj weights


def test_cache_can_be_turned_off():
    """MHSA_WEIGHT_CACHE=0 (read once per process, hence a subprocess) keeps no copy."""
    code = (
        "import torch, mhsa\n"
        "m = mhsa.MultiheadSelfAttention(32, 4, batch_first=True).eval()\n"
        "with torch.no_grad():\n"
        "    m(torch.randn(1, 40, 32))\n"
        "print(torch.ops.mhsa._weight_cache_entries())\n"
    )
    for value, entries in (("0", "0"), ("1", "2")):
        env = dict(os.environ, MHSA_WEIGHT_CACHE=value)
        result = run_python_in_subprocess(code, [], env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split()[-1] == entries, (value, result.stdout)
