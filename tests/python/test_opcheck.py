"""torch.library.opcheck on the mhsa ops: schema, autograd registration, fake (Meta) kernels and
AOT dispatch with dynamic shapes."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import mhsa  # noqa: F401
from mhsa_testutils import make_attn_mask, make_kpm

ALL_TESTS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)


def _tensor(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).mul(scale).to(dtype)


# id -> options of one sample
SAMPLES = {
    "plain_f32": dict(dtype=torch.float32),
    "masks_bool_f64": dict(attn_mask="bool2d", kpm="bool"),
    "masks_float3d_heads_bf": dict(
        attn_mask="float3d", kpm="float", average=False, batch_first=True
    ),
    "causal_no_weights_f32": dict(
        is_causal=True, need_weights=False, dtype=torch.float32, kpm="bool"
    ),
    "dropout_heads": dict(dropout=0.25, average=False, attn_mask="bool2d"),
    "window_causal_kpm": dict(window=(2, 0), is_causal=True, kpm="bool"),
    "window_two_sided_f32": dict(window=(1, 3), dtype=torch.float32, average=False),
}


def _forward_args(
    *,
    L=5,
    N=2,
    E=8,
    H=2,
    dtype=torch.float64,
    batch_first=False,
    attn_mask=None,
    kpm=None,
    is_causal=False,
    need_weights=True,
    average=True,
    dropout=0.0,
    requires_grad=False,
    window=None,
):
    x = _tensor((N, L, E) if batch_first else (L, N, E), dtype, 1)
    w = _tensor((3 * E, E), dtype, 2, E**-0.5)
    b = _tensor((3 * E,), dtype, 3, 0.5)
    ow = _tensor((E, E), dtype, 4, E**-0.5)
    ob = _tensor((E,), dtype, 5, 0.5)
    for t in (x, w, b, ow, ob):
        t.requires_grad_(requires_grad)
    am = make_attn_mask(attn_mask, N=N, H=H, L=L, dtype=dtype, seed=6)
    km = make_kpm(kpm, N=N, L=L, dtype=dtype, seed=7)
    args = (x, w, b, ow, ob, H, batch_first, am, km, is_causal, dropout, need_weights, average)
    return args if window is None else args + (list(window),)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("sample", list(SAMPLES))
def test_opcheck_mha_forward(sample, requires_grad):
    args = _forward_args(requires_grad=requires_grad, **SAMPLES[sample])
    opcheck(torch.ops.mhsa._mha_forward.default, args, test_utils=ALL_TESTS)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_opcheck_multi_head_self_attention(unbatched, requires_grad):
    x, w, b, ow, ob, H, batch_first, am, km, is_causal, p, nw, avg = _forward_args(
        requires_grad=requires_grad, attn_mask="bool2d", kpm="bool", N=1 if unbatched else 2
    )
    if unbatched:
        x = x.detach()[:, 0].requires_grad_(requires_grad)
        km = km[0]
    args = (x, w, b, ow, ob, H, 0.0, True, batch_first, km, nw, am, avg, is_causal)
    opcheck(torch.ops.mhsa.multi_head_self_attention.default, args, test_utils=ALL_TESTS)


def _backward_args(sample, output_mask=(True,) * 5, requires_grad=False):
    opts = SAMPLES[sample]
    fwd = _forward_args(**opts)
    x, w, b, ow, ob, H, batch_first, am, km, is_causal, p, nw, avg = fwd[:13]
    window = list(fwd[13:]) or [[-1, -1]]
    out, weights, qkv, context, lse, rng_state = torch.ops.mhsa._mha_forward(*fwd)
    grad_out = _tensor(out.shape, out.dtype, 8)
    grad_w = _tensor(weights.shape, weights.dtype, 9) if nw else None
    grads = [grad_out, grad_w]
    for t in grads + [x, w, ow]:
        if t is not None:
            t.requires_grad_(requires_grad)
    return (
        grad_out,
        grad_w,
        x,
        w,
        ow,
        qkv,
        context,
        lse,
        rng_state,
        H,
        batch_first,
        am,
        km,
        is_causal,
        p,
        avg,
        list(output_mask),
        window[0],
    )


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_opcheck_mha_backward(sample):
    opcheck(torch.ops.mhsa._mha_backward.default, _backward_args(sample), test_utils=ALL_TESTS)


@pytest.mark.parametrize("sample", ["masks_bool_f64", "causal_no_weights_f32"])
def test_opcheck_mha_backward_inputs_require_grad(sample):
    """With inputs that require grad. test_aot_dispatch_dynamic is left out: it differentiates
    mha_backward, i.e. double backward, which mhsa refuses by design (see test_errors.py)."""
    opcheck(
        torch.ops.mhsa._mha_backward.default,
        _backward_args(sample, requires_grad=True),
        test_utils=ALL_TESTS[:3],
    )


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_opcheck_mha_backward_partial_output_mask(requires_grad):
    """Only some gradients requested: the others come back None."""
    args = _backward_args(
        "masks_bool_f64", output_mask=(False, True, False, True, True), requires_grad=requires_grad
    )
    grads = torch.ops.mhsa._mha_backward(*args)
    assert grads[0] is None and grads[2] is None
    assert all(g is not None for g in (grads[1], grads[3], grads[4]))
    opcheck(
        torch.ops.mhsa._mha_backward.default,
        args,
        test_utils=ALL_TESTS if not requires_grad else ALL_TESTS[:3],
    )
