"""Query rows whose keys are all masked: mhsa's documented behaviour.

nn.MultiheadAttention returns NaN for such a row on its need_weights=True path (and the NaN
spreads to every parameter gradient). mhsa gives the row zero attention: zero weights, an
output row equal to out_proj.bias, finite gradients. That is what nn.MultiheadAttention's
need_weights=False path (scaled_dot_product_attention, whose softmax zero-fills such rows)
computes, so output and gradients are compared against that path, and the weights of the
other rows against the need_weights=True path.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mhsa_testutils import assert_close, make_input, make_pair, with_causal

L, N, E, H = 9, 2, 16, 4


def _masks(variant: str, dtype: torch.dtype):
    """(attn_mask, key_padding_mask, is_causal, fully_masked) where fully_masked is a bool
    (N, H, L) tensor of the (batch, head, query) rows that see no key."""
    full = torch.zeros(N, H, L, dtype=torch.bool)
    attn_mask = kpm = None
    is_causal = False
    if variant == "attn_mask_bool_rows":
        attn_mask = torch.zeros(L, L, dtype=torch.bool)
        attn_mask[[2, 5]] = True
        attn_mask[0, 3] = True
        full[:, :, [2, 5]] = True
    elif variant == "attn_mask_float_rows":
        attn_mask = torch.randn(L, L, dtype=dtype)
        attn_mask[[0, L - 1]] = float("-inf")
        full[:, :, [0, L - 1]] = True
    elif variant == "attn_mask_3d_one_head":
        # row 4 of head 1 of batch 0 and row 7 of head 3 of batch 1 only
        attn_mask = torch.zeros(N * H, L, L, dtype=torch.bool)
        attn_mask[0 * H + 1, 4] = True
        attn_mask[1 * H + 3, 7] = True
        attn_mask[1 * H + 3, 2, :3] = True
        full[0, 1, 4] = True
        full[1, 3, 7] = True
    elif variant == "kpm_whole_sequence":
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[1] = True
        kpm[0, 3] = True
        full[1] = True
    elif variant == "kpm_float_whole_sequence":
        kpm = torch.zeros(N, L, dtype=dtype)
        kpm[0] = float("-inf")
        full[0] = True
    elif variant == "causal_left_padding":
        # causal attention with the first key padded: query 0 sees no key at all
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[0, :2] = True
        kpm[1, 0] = True
        is_causal = True
        full[0, :, :2] = True
        full[1, :, 0] = True
    elif variant == "attn_and_kpm_combined":
        # neither mask alone empties row 3 of batch 0; together they do
        attn_mask = torch.zeros(L, L, dtype=torch.bool)
        attn_mask[3, 4:] = True
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[0, :4] = True
        full[0, :, 3] = True
    else:
        raise AssertionError(variant)
    return attn_mask, kpm, is_causal, full


VARIANTS = [
    "attn_mask_bool_rows",
    "attn_mask_float_rows",
    "attn_mask_3d_one_head",
    "kpm_whole_sequence",
    "kpm_float_whole_sequence",
    "causal_left_padding",
    "attn_and_kpm_combined",
]


def _reference(ref, x, attn_mask, kpm, is_causal, need_weights, average):
    if is_causal:
        attn_mask = with_causal(attn_mask, L, x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref(
            x,
            x,
            x,
            key_padding_mask=kpm,
            attn_mask=attn_mask,
            need_weights=need_weights,
            average_attn_weights=average,
            is_causal=is_causal and kpm is None,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("average", [True, False], ids=["avg", "heads"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_masked_rows(variant, average, dtype):
    ref, mod = make_pair(E, H, dtype=dtype, seed=3)
    x = make_input(L, N, E, batch_first=False, dtype=dtype, seed=4)
    attn_mask, kpm, is_causal, full = _masks(variant, dtype)
    assert full.any()
    params = [x] + [
        dict(mod.named_parameters())[n]
        for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    ]

    out, w = mod(
        x,
        key_padding_mask=kpm,
        attn_mask=attn_mask,
        average_attn_weights=average,
        is_causal=is_causal,
    )
    g = torch.Generator().manual_seed(5)
    r1 = torch.randn(out.shape, generator=g, dtype=dtype)
    r2 = torch.randn(w.shape, generator=g, dtype=dtype)
    grads = torch.autograd.grad((out * r1).sum() + (w * r2).sum(), params)

    # finite everywhere
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    for p, gr in zip(
        ("input", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"), grads
    ):
        assert torch.isfinite(gr).all(), f"non-finite gradient of {p}"

    # zero weights on fully masked rows; output = out_proj.bias where every head is masked
    w_heads = w if not average else None
    if w_heads is not None:
        assert (w_heads[full] == 0).all()
    else:
        # averaged: a row masked in every head is all zero
        all_heads = full.all(dim=1)  # (N, L)
        assert (w[all_heads] == 0).all()
    rows_all_heads = full.all(dim=1)  # (N, L)
    out_nl = out.transpose(0, 1)  # (N, L, E)
    expected_bias = mod.out_proj.bias.detach().expand(int(rows_all_heads.sum()), E)
    assert_close(out_nl[rows_all_heads].detach(), expected_bias, dtype, "bitwise", "masked rows")

    # output and gradients of the output: nn.MultiheadAttention's need_weights=False path
    ref_out, _ = _reference(ref, x, attn_mask, kpm, is_causal, need_weights=False, average=average)
    assert torch.isfinite(ref_out).all()
    assert_close(out, ref_out, dtype, "out", "attn_output (vs need_weights=False path)")
    ref_params = [x] + [
        dict(ref.named_parameters())[n]
        for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    ]
    ref_grads = torch.autograd.grad((ref_out * r1).sum(), ref_params)
    own_grads = torch.autograd.grad(
        (
            mod(
                x,
                key_padding_mask=kpm,
                attn_mask=attn_mask,
                need_weights=False,
                is_causal=is_causal,
            )[0]
            * r1
        ).sum(),
        params,
    )
    for name, a, e in zip(
        ("input", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"),
        own_grads,
        ref_grads,
    ):
        assert_close(a, e, dtype, "grad", f"grad of {name} (vs need_weights=False path)")

    # weights of the other rows: nn.MultiheadAttention's need_weights=True path (NaN rows skipped)
    _, ref_w = _reference(ref, x, attn_mask, kpm, is_causal, need_weights=True, average=average)
    nan_rows = torch.isnan(ref_w).any(dim=-1)
    expected_nan = full if not average else full.any(dim=1)
    assert torch.equal(nan_rows, expected_nan), (
        "the test's premise: MHA gives NaN exactly on the fully masked rows"
    )
    assert_close(
        w[~nan_rows], ref_w[~nan_rows], dtype, "out", "attn_weights of the rows that see a key"
    )
    if average:
        # a row masked in some heads only: the average of the other heads' weights (the masked
        # head contributes zeros)
        per_head = mod(
            x,
            key_padding_mask=kpm,
            attn_mask=attn_mask,
            average_attn_weights=False,
            is_causal=is_causal,
        )[1]
        assert_close(
            w, per_head.mean(dim=1), dtype, "out", "averaged weights vs mean of per-head weights"
        )


def test_fully_masked_rows_unbatched():
    ref, mod = make_pair(E, H, dtype=torch.float64, seed=3)
    x = make_input(L, None, E, batch_first=False, dtype=torch.float64, seed=4)
    kpm = torch.ones(L, dtype=torch.bool)
    out, w = mod(x, key_padding_mask=kpm)
    assert (w == 0).all()
    bias = mod.out_proj.bias.detach().expand(L, E)
    assert_close(out.detach(), bias, torch.float64, "bitwise", "masked rows")
    gx, gw, gb, gow, gob = torch.autograd.grad(out.sum(), [x] + [p for p in mod.parameters()])
    # the output is out_proj.bias on every row: only that bias gets a gradient
    assert (gx == 0).all() and (gw == 0).all() and (gb == 0).all() and (gow == 0).all()
    assert_close(gob, torch.full_like(gob, L), torch.float64, "bitwise", "out_proj.bias.grad")
