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


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention (CompositeImplicitAutograd, like multi_head_self_attention above)
# and the ops it calls, _attention_block_forward / _attention_block_backward.

# id -> options of one block sample: query (N, H, L, E), key (N, H_kv, S, E), value
# (N, H_kv, S, Ev); mask "bool" (N, 1, L, S), "float" (H, L, S) or "padding" (N, 1, 1, S).
BLOCK_SAMPLES = {
    "plain_f32": dict(dtype=torch.float32),
    "gqa_bool_mask_weights_avg": dict(H=4, H_kv=2, mask="bool", need_weights=True),
    "gqa1_causal_weights_heads": dict(
        H=4, H_kv=1, S=7, is_causal=True, need_weights=True, average=False
    ),
    "float_mask_window_scale_ev_f32": dict(
        mask="float", window=(2, 1), scale=0.4, Ev=6, dtype=torch.float32
    ),
    "padding_causal_l_gt_s": dict(L=7, S=4, mask="padding", is_causal=True),
    "dropout_gqa_weights_heads": dict(H=4, H_kv=2, dropout=0.25, need_weights=True, average=False),
    # a block of the ring: queries 2..6 over keys 0..4, in the dropout plane of a 10 x 10 whole
    "ring_block_diagonal_plane": dict(
        is_causal=True, dropout=0.2, diagonal=2, dropout_plane=[10, 10, 2, 0]
    ),
}


def _block_args(
    *,
    N=2,
    H=2,
    H_kv=None,
    L=5,
    S=None,
    E=8,
    Ev=None,
    dtype=torch.float64,
    mask=None,
    is_causal=False,
    window=None,
    scale=None,
    dropout=0.0,
    need_weights=False,
    average=True,
    diagonal=0,
    dropout_plane=None,
    requires_grad=False,
):
    """(args, kwargs) of _attention_block_forward."""
    H_kv = H if H_kv is None else H_kv
    S = L if S is None else S
    q = _tensor((N, H, L, E), dtype, 1)
    k = _tensor((N, H_kv, S, E), dtype, 2)
    v = _tensor((N, H_kv, S, E if Ev is None else Ev), dtype, 3)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    g = torch.Generator().manual_seed(4)
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(N, 1, L, S, generator=g) < 0.7
    elif mask == "float":
        attn_mask = _tensor((H, L, S), dtype, 5)
    elif mask == "padding":
        attn_mask = torch.ones(N, 1, 1, S, dtype=torch.bool)
        attn_mask[-1, ..., S // 2 :] = False
    kwargs = dict(
        attn_mask=attn_mask,
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scale,
        window_size=list(window or (-1, -1)),
        need_weights=need_weights,
        average_attn_weights=average,
        diagonal=diagonal,
        dropout_plane=dropout_plane or [0, 0, 0, 0],
    )
    return (q, k, v), kwargs


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("sample", list(BLOCK_SAMPLES))
def test_opcheck_attention_block_forward(sample, requires_grad):
    args, kwargs = _block_args(requires_grad=requires_grad, **BLOCK_SAMPLES[sample])
    opcheck(torch.ops.mhsa._attention_block_forward.default, args, kwargs, test_utils=ALL_TESTS)


def test_opcheck_attention_block_forward_shared_rng_state():
    """A seed handed in (the ring's ranks share the first rank's) is the one used."""
    args, kwargs = _block_args(dropout=0.3, need_weights=True, average=False)
    _, weights, _, rng_state = torch.ops.mhsa._attention_block_forward(*args, **kwargs)
    kwargs["shared_rng_state"] = rng_state
    again = torch.ops.mhsa._attention_block_forward(*args, **kwargs)
    assert torch.equal(again[1], weights) and torch.equal(again[3], rng_state)
    opcheck(torch.ops.mhsa._attention_block_forward.default, args, kwargs, test_utils=ALL_TESTS)


def _block_backward_args(sample, output_mask=(True,) * 3, requires_grad=False):
    """(args, kwargs) of _attention_block_backward, from a forward call of the sample."""
    (q, k, v), kwargs = _block_args(**BLOCK_SAMPLES[sample])
    out, weights, lse, rng_state = torch.ops.mhsa._attention_block_forward(q, k, v, **kwargs)
    grad_out = _tensor(out.shape, out.dtype, 8)
    grad_w = _tensor(weights.shape, weights.dtype, 9) if kwargs["need_weights"] else None
    for t in (grad_out, grad_w, q, k, v):
        if t is not None:
            t.requires_grad_(requires_grad)
    del kwargs["need_weights"]
    kwargs["output_mask"] = list(output_mask)
    return (grad_out, grad_w, q, k, v, out, lse, rng_state), kwargs


@pytest.mark.parametrize("sample", list(BLOCK_SAMPLES))
def test_opcheck_attention_block_backward(sample):
    args, kwargs = _block_backward_args(sample)
    opcheck(torch.ops.mhsa._attention_block_backward.default, args, kwargs, test_utils=ALL_TESTS)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_opcheck_attention_block_backward_partial_output_mask(requires_grad):
    """Only the key gradient requested: the others come back None. With inputs that require
    grad, test_aot_dispatch_dynamic is left out (double backward, refused by design)."""
    args, kwargs = _block_backward_args(
        "gqa_bool_mask_weights_avg", output_mask=(False, True, False), requires_grad=requires_grad
    )
    grads = torch.ops.mhsa._attention_block_backward(*args, **kwargs)
    assert grads[0] is None and grads[2] is None and grads[1] is not None
    opcheck(
        torch.ops.mhsa._attention_block_backward.default,
        args,
        kwargs,
        test_utils=ALL_TESTS if not requires_grad else ALL_TESTS[:3],
    )


# id -> (query, key, value shapes, options) of scaled_dot_product_attention
SDPA_SAMPLES = {
    "4d_gqa_bool_mask_causal": (
        (2, 4, 5, 8),
        (2, 2, 7, 8),
        (2, 2, 7, 6),
        dict(mask=(2, 1, 5, 7), is_causal=True, enable_gqa=True),
    ),
    "3d_float_mask_scale": ((2, 5, 8), (2, 6, 8), (2, 6, 8), dict(mask=(5, 6), scale=0.3)),
    "5d_window": ((2, 3, 2, 6, 8), (2, 3, 2, 6, 8), (2, 3, 2, 6, 4), dict(window=[1, 2])),
    "2d_dropout": ((5, 8), (6, 8), (6, 8), dict(dropout=0.3)),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("sample", list(SDPA_SAMPLES))
def test_opcheck_scaled_dot_product_attention(sample, requires_grad):
    q_shape, k_shape, v_shape, opts = SDPA_SAMPLES[sample]
    q, k, v = (
        _tensor(shape, torch.float64, seed).requires_grad_(requires_grad)
        for seed, shape in enumerate((q_shape, k_shape, v_shape))
    )
    mask = None
    if "mask" in opts:
        if "scale" in opts:
            mask = _tensor(opts["mask"], torch.float64, 7)
        else:
            mask = torch.rand(opts["mask"], generator=torch.Generator().manual_seed(7)) < 0.7
    args = (
        q,
        k,
        v,
        mask,
        opts.get("dropout", 0.0),
        opts.get("is_causal", False),
        opts.get("scale"),
        opts.get("enable_gqa", False),
        opts.get("window"),
    )
    opcheck(torch.ops.mhsa.scaled_dot_product_attention.default, args, test_utils=ALL_TESTS)


# id -> (nn.MultiheadAttention constructor arguments, need_weights) of multi_head_attention,
# cross-attention with 5 queries over 7 keys, a bool attn_mask and a key padding mask
MHA_SAMPLES = {
    "packed_projection": (dict(), True),
    "kdim_vdim": (dict(kdim=6, vdim=10), False),
    "bias_kv_zero_attn": (dict(add_bias_kv=True, add_zero_attn=True), True),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("sample", list(MHA_SAMPLES))
def test_opcheck_multi_head_attention(sample, requires_grad):
    ctor, need_weights = MHA_SAMPLES[sample]
    torch.manual_seed(0)
    module = mhsa.MultiheadAttention(8, 2, dtype=torch.float64, **ctor)
    q = _tensor((5, 2, 8), torch.float64, 1).requires_grad_(requires_grad)
    k = _tensor((7, 2, module.kdim), torch.float64, 2).requires_grad_(requires_grad)
    v = _tensor((7, 2, module.vdim), torch.float64, 3).requires_grad_(requires_grad)
    attn_mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(4)) < 0.3
    attn_mask[:, 0] = False
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    params = {
        name: (None if p is None else p.detach().requires_grad_(requires_grad))
        for name, p in (
            ("in_proj_weight", module.in_proj_weight),
            ("in_proj_bias", module.in_proj_bias),
            ("q_proj_weight", module.q_proj_weight),
            ("k_proj_weight", module.k_proj_weight),
            ("v_proj_weight", module.v_proj_weight),
            ("bias_k", module.bias_k),
            ("bias_v", module.bias_v),
            ("out_proj_weight", module.out_proj.weight),
            ("out_proj_bias", module.out_proj.bias),
        )
    }
    args = (
        q,
        k,
        v,
        2,
        params["in_proj_weight"],
        params["in_proj_bias"],
        params["q_proj_weight"],
        params["k_proj_weight"],
        params["v_proj_weight"],
        params["bias_k"],
        params["bias_v"],
        module.add_zero_attn,
        params["out_proj_weight"],
        params["out_proj_bias"],
        0.0,
        True,
        False,
        kpm,
        need_weights,
        attn_mask,
        True,
        False,
        [-1, -1],
    )
    opcheck(torch.ops.mhsa.multi_head_attention.default, args, test_utils=ALL_TESTS)
