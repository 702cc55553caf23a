"""float16 (torch.half) as a first-class dtype: module, functional, TorchScript, autocast,
against nn.MultiheadAttention in float16 and a float64 reference.

mhsa computes float16 in one of two ways (torch.ops.mhsa._backend_info() says which):
- native: float16 storage between the steps and float16 tile GEMMs with fp32 accumulation, on
  oneDNN's float16 micro-kernel where the CPU has one (AVX512-FP16, AMX-FP16; the default
  there), else on the float32 micro-kernel from the float16 values (MHSA_HALF_COMPUTE=native);
- fp32 compute from the float16 values (the default elsewhere; MHSA_HALF_COMPUTE=fp32).
Either way its error is at most nn's own float16 error (nn runs its float16 CPU kernels),
checked as within 2x of it, norm-wise against float64 (the table's "as_exact_as_nn_norm"). test_float16_in_both_compute_modes runs
this file in each mode, whatever the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import mhsa
from mhsa_testutils import as_exact_as_baseline, assert_close, run_pytest_in_subprocess

F16 = torch.float16


def run(module, x, causal_mask, is_nn, **kw):
    x = x.clone().requires_grad_(True)
    if is_nn:
        out, w = module(x, x, x, attn_mask=causal_mask, **kw)
    else:
        out, w = module(x, is_causal=causal_mask is not None, **kw)
    r = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(out.dtype)
    ((out * r).sum() + (w.square().sum() if w is not None else 0)).float().backward()
    return [out, w, x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("shape", [(2, 70, 32, 4), (1, 300, 64, 2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_float16_matches_nn_precision(causal, need_weights, shape):
    torch.manual_seed(0)
    N, L, E, H = shape
    ref64 = nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():
        ref64.in_proj_bias.normal_(0, 0.2)
        ref64.out_proj.bias.normal_(0, 0.2)
    x = torch.randn(N, L, E, dtype=torch.float64)
    mask = torch.triu(torch.ones(L, L, dtype=torch.bool), 1) if causal else None
    kw = dict(need_weights=need_weights, average_attn_weights=False)
    expected = run(ref64, x, mask, True, **kw)
    nn16 = nn.MultiheadAttention(E, H, batch_first=True).half()
    nn16.load_state_dict(ref64.state_dict())
    baseline = run(nn16, x.half(), mask, True, **kw)
    ours16 = mhsa.MultiheadSelfAttention.from_torch(nn16)
    assert ours16.in_proj_weight.dtype == torch.float16
    actual = run(ours16, x.half(), mask, False, **kw)
    for k, (e, b, a) in enumerate(zip(expected, baseline, actual)):
        if e is None:
            assert a is None
            continue
        assert a.dtype == torch.float16
        ok, err_ours, err_nn = as_exact_as_baseline(a, b, e, F16, "as_exact_as_nn_norm")
        assert ok, (k, err_ours, err_nn)


def test_float16_torchscript_and_functional():
    torch.manual_seed(1)
    mod = mhsa.MultiheadSelfAttention(16, 2, batch_first=True, dtype=torch.float16)
    x = torch.randn(2, 9, 16, dtype=torch.float16)
    eager = mod(x, need_weights=False)[0]
    scripted = torch.jit.script(mod)
    assert_close(scripted(x, need_weights=False)[0], eager, F16, "bitwise", "scripted")
    functional = mhsa.functional.multi_head_self_attention(
        x,
        mod.in_proj_weight,
        mod.in_proj_bias,
        mod.out_proj.weight,
        mod.out_proj.bias,
        2,
        batch_first=True,
        need_weights=False,
    )[0]
    assert_close(functional, eager, F16, "bitwise", "functional")


def test_float16_autocast_runs_mhsa_in_float16():
    torch.manual_seed(2)
    mod = mhsa.MultiheadSelfAttention(16, 2, batch_first=True)
    x = torch.randn(2, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out, _ = mod(x, need_weights=False)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and mod.in_proj_weight.grad.dtype == torch.float32
    expected = mod(x, need_weights=False)[0]
    assert_close(out, expected, F16, "norm", "autocast output")


def test_float16_saturated_softmax_is_exact_like_float32():
    """The float32 computation from float16 values keeps the one-hot exactness (the stored
    float16 qkv is what the forward's log-sum-exp came from)."""
    torch.manual_seed(3)
    E, H, L = 16, 2, 2
    module = nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():
        module.in_proj_weight[: 2 * E] *= 12.0  # logits in the hundreds
    x = torch.randn(2, L, E, dtype=torch.float64)
    expected = run(module, x, None, True, need_weights=False)
    nn16 = nn.MultiheadAttention(E, H, batch_first=True).half()
    nn16.load_state_dict(module.state_dict())
    baseline = run(nn16, x.half(), None, True, need_weights=False)
    actual = run(
        mhsa.MultiheadSelfAttention.from_torch(nn16), x.half(), None, False, need_weights=False
    )
    for k, (e, b, a) in enumerate(zip(expected, baseline, actual)):
        if e is None:
            continue
        ok, err_ours, err_nn = as_exact_as_baseline(a, b, e, F16, "saturated")
        assert ok, (k, err_ours, err_nn)


def test_float16_compute_mode_is_reported():
    """The mode in force is the one asked for, and by default native exactly where the tile
    GEMMs have a float16 micro-kernel."""
    info = torch.ops.mhsa._backend_info()
    mode = os.environ.get("MHSA_HALF_COMPUTE")
    if mode == "native":
        assert " float16=native" in info, info
    elif mode == "fp32":
        assert " float16=fp32-compute" in info, info
    else:
        assert (" float16=native" in info) == (",float16-" in info), info


@pytest.mark.parametrize("mode", ["native", "fp32"])
def test_float16_in_both_compute_modes(mode):
    """Every other test of this file in each float16 compute mode (read once per process, hence
    a subprocess), so the float16 kernels are checked on CPUs without a float16 micro-kernel too."""
    result = run_pytest_in_subprocess(
        [__file__, "-k", "not in_both_compute_modes"], {"MHSA_HALF_COMPUTE": mode}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
