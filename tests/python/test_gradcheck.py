"""torch.autograd.gradcheck in float64 on the ops and on the module."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import mhsa
from mhsa_testutils import causal_bool, make_attn_mask, make_kpm

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """gradcheck makes thousands of calls on tiny tensors, where handing work to a second
    intra-op thread costs far more than the work (and on a loaded 2-core machine, up to ~40x
    more). The multi-threaded kernels are compared against nn.MultiheadAttention, gradients
    included, in test_parity.py."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(E, *, bias=True, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale):
        return (torch.randn(shape, generator=g, dtype=DT) * scale).requires_grad_(requires_grad)

    return (
        t(3 * E, E, scale=E**-0.5),
        t(3 * E, scale=0.5) if bias else None,
        t(E, E, scale=E**-0.5),
        t(E, scale=0.5) if bias else None,
    )


def _x(shape, seed=1, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=DT).requires_grad_(requires_grad)


# (id, dict of options); small shapes, every argument of the op exercised
OP_CASES = [
    ("plain", dict()),
    ("attn_bool2d_kpm_bool", dict(attn_mask="bool2d", kpm="bool")),
    ("attn_float3d_kpm_float_heads", dict(attn_mask="float3d", kpm="float", average=False)),
    ("causal_batch_first", dict(is_causal=True, batch_first=True)),
    ("causal_kpm_no_weights", dict(is_causal=True, kpm="bool", need_weights=False)),
    ("unbatched_masks", dict(N=None, attn_mask="bool3d", kpm="bool", average=False)),
    ("one_head", dict(H=1, attn_mask="float2d")),
    ("no_bias", dict(bias=False, attn_mask="bool2d")),
    ("fully_masked_row", dict(full_row=True)),
]


def _op_inputs(
    L=4,
    N=2,
    E=8,
    H=2,
    *,
    batch_first=False,
    bias=True,
    attn_mask=None,
    kpm=None,
    is_causal=False,
    need_weights=True,
    average=True,
    full_row=False,
):
    x = _x((L, E) if N is None else ((N, L, E) if batch_first else (L, N, E)))
    am = make_attn_mask(attn_mask, N=N, H=H, L=L, dtype=DT, seed=5)
    km = make_kpm(kpm, N=N, L=L, dtype=DT, seed=6)
    if full_row:
        am = torch.zeros(L, L, dtype=torch.bool)
        am[1] = True
    return (
        x,
        _params(E, bias=bias),
        dict(
            num_heads=H,
            batch_first=batch_first,
            attn_mask=am,
            key_padding_mask=km,
            is_causal=is_causal,
            need_weights=need_weights,
            average_attn_weights=average,
        ),
    )


@pytest.mark.parametrize("options", [c[1] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_gradcheck_multi_head_self_attention_op(options):
    x, (w, b, ow, ob), kw = _op_inputs(**options)

    def fn(x, w, b, ow, ob):
        out, weights = torch.ops.mhsa.multi_head_self_attention(
            x,
            w,
            b,
            ow,
            ob,
            kw["num_heads"],
            0.0,
            True,
            kw["batch_first"],
            kw["key_padding_mask"],
            kw["need_weights"],
            kw["attn_mask"],
            kw["average_attn_weights"],
            kw["is_causal"],
        )
        return (out, weights) if kw["need_weights"] else out

    assert gradcheck(fn, (x, w, b, ow, ob))


@pytest.mark.parametrize("options", [c[1] for c in OP_CASES[:5]], ids=[c[0] for c in OP_CASES[:5]])
def test_gradcheck_mha_forward_op(options):
    x, (w, b, ow, ob), kw = _op_inputs(**options)

    def fn(x, w, b, ow, ob):
        out, weights, *_ = torch.ops.mhsa._mha_forward(
            x,
            w,
            b,
            ow,
            ob,
            kw["num_heads"],
            kw["batch_first"],
            kw["attn_mask"],
            kw["key_padding_mask"],
            kw["is_causal"],
            0.0,
            kw["need_weights"],
            kw["average_attn_weights"],
        )
        return (out, weights) if kw["need_weights"] else out

    assert gradcheck(fn, (x, w, b, ow, ob))


@pytest.mark.parametrize("which", ["input", "weights"])
def test_gradcheck_when_only_some_inputs_require_grad(which):
    """gradcheck with the input alone, or the parameters alone, requiring grad."""
    x, params, kw = _op_inputs(attn_mask="bool2d", kpm="bool")
    x.requires_grad_(which == "input")
    for p in params:
        p.requires_grad_(which == "weights")

    def fn(x, w, b, ow, ob):
        return mhsa.functional.multi_head_self_attention(
            x,
            w,
            b,
            ow,
            ob,
            kw["num_heads"],
            key_padding_mask=kw["key_padding_mask"],
            attn_mask=kw["attn_mask"],
        )

    assert gradcheck(fn, (x, *params))


@pytest.mark.parametrize("L", [65, 130])
def test_gradcheck_across_tiles(L):
    """Sequences longer than a query tile (64) and a backward key tile (128); fast mode
    (random projections of the Jacobian) keeps it cheap."""
    E, H = 4, 2
    x = _x((1, L, E))
    params = _params(E)
    causal = causal_bool(L)

    def fn(x, w, b, ow, ob):
        return mhsa.functional.multi_head_self_attention(
            x, w, b, ow, ob, H, batch_first=True, attn_mask=causal, average_attn_weights=False
        )

    assert gradcheck(fn, (x, *params), fast_mode=True)


@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_module(batch_first):
    mod = mhsa.MultiheadSelfAttention(8, 4, batch_first=batch_first, dtype=DT)
    with torch.no_grad():
        mod.in_proj_bias.normal_()
        mod.out_proj.bias.normal_()
    names = [n for n, _ in mod.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in mod.parameters())
    x = _x((2, 5, 8) if batch_first else (5, 2, 8))
    kpm = torch.tensor([[False, False, True, False, True], [False, True, False, False, False]])
    am = torch.randn(5, 5, dtype=DT)

    def fn(x, *ps):
        out, w = functional_call(
            mod,
            dict(zip(names, ps)),
            (x,),
            dict(key_padding_mask=kpm, attn_mask=am, average_attn_weights=False),
        )
        return out, w

    assert gradcheck(fn, (x, *params))
