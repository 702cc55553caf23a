"""Layouts and sizes: non-contiguous inputs and masks, empty batches and sequences, L = 1,
bfloat16."""

from __future__ import annotations

import pytest
import torch

import mhsa
from mhsa_testutils import PARAM_NAMES, assert_close, make_pair, random_bool_mask

DT = torch.float64


def _grads(module, args, x_leaf, kwargs, r1, r2):
    out, w = module(*args, **kwargs)
    loss = (out * r1).sum() + ((w * r2).sum() if w is not None else 0)
    params = dict(module.named_parameters())
    return (
        out,
        w,
        torch.autograd.grad(loss, [x_leaf] + [params[n] for n in PARAM_NAMES if n in params]),
    )


def _compare(ref, mod, x_leaf, x, kwargs_ref, kwargs_mod, average=True):
    """Both modules on the same (possibly non-contiguous) x; gradients w.r.t. the leaf x was
    made from."""
    g = torch.Generator().manual_seed(99)
    r1 = torch.randn(x.shape, generator=g, dtype=x.dtype)
    with torch.no_grad():
        w_shape = (
            ref(x, x, x, **kwargs_ref)[1].shape if kwargs_ref.get("need_weights", True) else None
        )
    r2 = torch.randn(w_shape, generator=g, dtype=x.dtype) if w_shape is not None else None
    out_ref, w_ref, g_ref = _grads(ref, (x, x, x), x_leaf, kwargs_ref, r1, r2)
    out, w, grads = _grads(mod, (x,), x_leaf, kwargs_mod, r1, r2)
    assert_close(out, out_ref, DT, "out", "attn_output")
    if w_ref is not None:
        assert_close(w, w_ref, DT, "out", "attn_weights")
    for name, a, e in zip(("input",) + PARAM_NAMES, grads, g_ref):
        assert_close(a, e, DT, "grad", f"grad of {name}")


@pytest.mark.parametrize("batch_first", [False, True], ids=["sf", "bf"])
@pytest.mark.parametrize(
    "layout", ["transposed", "strided_last_dim", "expanded_batch", "sliced_sequence"]
)
def test_non_contiguous_input(layout, batch_first):
    L, N, E, H = 70, 3, 16, 4
    ref, mod = make_pair(E, H, dtype=DT, batch_first=batch_first, seed=1)
    g = torch.Generator().manual_seed(2)
    shape = (N, L, E) if batch_first else (L, N, E)
    if layout == "transposed":
        # the other layout's contiguous tensor, transposed
        leaf = torch.randn((shape[1], shape[0], E), generator=g, dtype=DT, requires_grad=True)
        x = leaf.transpose(0, 1)
    elif layout == "strided_last_dim":
        leaf = torch.randn(shape[:2] + (2 * E,), generator=g, dtype=DT, requires_grad=True)
        x = leaf[..., ::2]
    elif layout == "expanded_batch":
        one = (1, L, E) if batch_first else (L, 1, E)
        leaf = torch.randn(one, generator=g, dtype=DT, requires_grad=True)
        x = leaf.expand(shape)
    else:
        big = (N, L + 9, E) if batch_first else (L + 9, N, E)
        leaf = torch.randn(big, generator=g, dtype=DT, requires_grad=True)
        x = leaf[:, 4 : 4 + L] if batch_first else leaf[4 : 4 + L]
    # (sliced_sequence in the (L, N, E) layout is contiguous but starts at a storage offset)
    assert not x.is_contiguous() or x.storage_offset() > 0, layout
    _compare(ref, mod, leaf, x, {}, {})


def test_non_contiguous_masks():
    L, N, E, H = 67, 2, 16, 4
    ref, mod = make_pair(E, H, dtype=DT, seed=3)
    x = torch.randn(L, N, E, dtype=DT, requires_grad=True)
    # 2-D attn_mask: the transpose of a mask; key_padding_mask: a column slice of (L, N)
    am = random_bool_mask((L, L), seed=4).t()
    kpm = random_bool_mask((L, N + 1), seed=5).t()[1:]
    kpm[:, 0] = False
    assert not am.is_contiguous() and not kpm.is_contiguous()
    _compare(
        ref,
        mod,
        x,
        x,
        dict(attn_mask=am, key_padding_mask=kpm),
        dict(attn_mask=am, key_padding_mask=kpm),
    )
    # 3-D float mask: every other plane of a larger tensor, transposed last dims
    big = torch.randn(2 * N * H, L, L, dtype=DT)
    fm = big[::2].transpose(1, 2)
    fkpm = torch.randn(L, N, dtype=DT).t()
    assert not fm.is_contiguous() and not fkpm.is_contiguous()
    kw = dict(attn_mask=fm, key_padding_mask=fkpm, average_attn_weights=False)
    _compare(ref, mod, x, x, kw, kw)


def test_non_contiguous_weights_functional():
    """Parameters passed to the functional form as transposed views."""
    L, N, E, H = 9, 2, 16, 4
    ref, mod = make_pair(E, H, dtype=DT, seed=6)
    x = torch.randn(L, N, E, dtype=DT, requires_grad=True)
    w_t = ref.in_proj_weight.detach().t().contiguous().requires_grad_()  # (E, 3E)
    ow_t = ref.out_proj.weight.detach().t().contiguous().requires_grad_()
    b, ob = ref.in_proj_bias.detach().requires_grad_(), ref.out_proj.bias.detach().requires_grad_()
    out, w = mhsa.functional.multi_head_self_attention(x, w_t.t(), b, ow_t.t(), ob, H)
    out_ref, w_ref = ref(x, x, x)
    assert_close(out, out_ref, DT, "out", "attn_output")
    assert_close(w, w_ref, DT, "out", "attn_weights")
    gx, gw, gb, gow, gob = torch.autograd.grad(out.sum(), [x, w_t, b, ow_t, ob])
    gx_ref, gw_ref, _, gow_ref, _ = torch.autograd.grad(
        out_ref.sum(), [x] + [dict(ref.named_parameters())[n] for n in PARAM_NAMES]
    )
    assert_close(gx, gx_ref, DT, "grad", "grad of input")
    assert_close(gw, gw_ref.t(), DT, "grad", "grad of in_proj_weight")
    assert_close(gow, gow_ref.t(), DT, "grad", "grad of out_proj.weight")


@pytest.mark.parametrize(
    "shape",
    [(5, 0, 16), (0, 2, 16), (0, 16)],
    ids=["empty_batch", "empty_sequence", "empty_unbatched"],
)
@pytest.mark.parametrize("average", [True, False], ids=["avg", "heads"])
def test_empty_inputs(shape, average):
    ref, mod = make_pair(16, 4, dtype=DT, seed=7)
    x = torch.randn(shape, dtype=DT, requires_grad=True)
    out_ref, w_ref = ref(x, x, x, average_attn_weights=average)
    out, w = mod(x, average_attn_weights=average)
    assert out.shape == out_ref.shape and w.shape == w_ref.shape
    grads = torch.autograd.grad(out.sum() + w.sum(), [x] + list(mod.parameters()))
    assert grads[0].shape == x.shape
    for gr in grads[1:]:
        assert torch.equal(gr, torch.zeros_like(gr))


def test_empty_batch_with_masks():
    ref, mod = make_pair(16, 4, dtype=DT, batch_first=True, seed=8)
    x = torch.randn(0, 6, 16, dtype=DT, requires_grad=True)
    kpm = torch.zeros(0, 6, dtype=torch.bool)
    am = torch.zeros(0, 6, 6, dtype=torch.bool)
    out, w = mod(x, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False, is_causal=True)
    assert out.shape == (0, 6, 16) and w.shape == (0, 4, 6, 6)
    out.sum().backward()


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(is_causal=True), dict(key_padding_mask="kpm"), dict(attn_mask="float")],
    ids=["plain", "causal", "kpm", "float_mask"],
)
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_sequence_length_one(kwargs, unbatched):
    """One token attends to itself only: weights 1, output = out_proj(v)."""
    N, E, H = 3, 16, 4
    ref, mod = make_pair(E, H, dtype=DT, seed=9)
    x = torch.randn((1, E) if unbatched else (1, N, E), dtype=DT, requires_grad=True)
    kw = dict(kwargs)
    if kw.get("key_padding_mask") == "kpm":
        kw["key_padding_mask"] = torch.zeros((1,) if unbatched else (N, 1), dtype=torch.bool)
    if kw.get("attn_mask") == "float":
        kw["attn_mask"] = torch.full((1, 1), -3.0, dtype=DT)
    kw_ref = dict(kw)
    if kw.get("is_causal"):
        kw_ref["attn_mask"] = torch.zeros(1, 1, dtype=torch.bool)
    _compare(ref, mod, x, x, kw_ref, kw)
    out, w = mod(x, **kw)
    assert_close(w, torch.ones_like(w), DT, "bitwise", "the weight of the only key")
    v = torch.nn.functional.linear(x, mod.in_proj_weight[2 * E :], mod.in_proj_bias[2 * E :])
    assert_close(out, mod.out_proj(v), DT, "reordered", "the only key's value, projected")


def test_bfloat16_close_to_float32_reference():
    """bfloat16 storage (float accumulation) against nn.MultiheadAttention in float32 on the
    same bfloat16-rounded weights and input: within bfloat16 rounding (2^-8 relative per
    rounding, a few roundings deep), measured relative to the largest reference entry."""
    L, N, E, H = 70, 2, 32, 4
    ref32, _ = make_pair(E, H, dtype=torch.float32, seed=10)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref32).to(torch.bfloat16)
    ref = torch.nn.MultiheadAttention(E, H)
    ref.load_state_dict({k: v.float() for k, v in mod.state_dict().items()})
    xb = (
        torch.randn(L, N, E, generator=torch.Generator().manual_seed(11))
        .bfloat16()
        .requires_grad_()
    )
    xr = xb.detach().float().requires_grad_()
    am = random_bool_mask((L, L), seed=12)
    out, w = mod(xb, attn_mask=am, average_attn_weights=False)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    out_ref, w_ref = ref(xr, xr, xr, attn_mask=am, average_attn_weights=False)

    def close(a, e, what):
        assert_close(a, e, torch.bfloat16, "largest", what)

    close(out, out_ref, "attn_output")
    close(w, w_ref, "attn_weights")
    grads = torch.autograd.grad(out.float().sum() + w.float().sum(), [xb] + list(mod.parameters()))
    grads_ref = torch.autograd.grad(out_ref.sum() + w_ref.sum(), [xr] + list(ref.parameters()))
    for name, a, e in zip(("input",) + PARAM_NAMES, grads, grads_ref):
        assert a.dtype == torch.bfloat16
        close(a, e, f"grad of {name}")
