"""Sliding-window (local) attention and skipped padding, against nn.MultiheadAttention given the
equivalent dense boolean masks: outputs, weights and every gradient.

window_size = (left, right): query i sees key j only if i - left <= j <= i + right (-1 leaves a
side unbounded), combined with is_causal, attn_mask, key_padding_mask, dropout and need_weights
as a conjunction. Key tiles outside the band, and key tiles made only of masked padding keys at
the end of a sequence, are never computed (csrc/engine/masks.h, visible_key_range).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pytest
import torch

import mhsa
from mhsa_testutils import assert_close, band_blocked, causal_bool, make_pair

DT = torch.float64

WINDOWS = [(0, 0), (3, 0), (0, 2), (5, 7), (-1, 4), (6, -1), (200, 200), (-1, -1)]


def band_mask(L: int, window: Tuple[int, int], is_causal: bool) -> torch.Tensor:
    """True where query i may NOT see key j."""
    blocked = band_blocked(L, window)
    return blocked | causal_bool(L) if is_causal else blocked


def reference_attn_mask(
    L: int, window, is_causal: bool, attn_mask: Optional[torch.Tensor], H: int, N: int
):
    band = band_mask(L, window, is_causal)
    if attn_mask is None:
        return band
    if attn_mask.dtype == torch.bool:
        return attn_mask | band
    return attn_mask.masked_fill(band, -math.inf)


def run_both(
    L,
    N,
    E,
    H,
    window,
    *,
    is_causal=False,
    attn_mask=None,
    kpm=None,
    dtype=torch.float64,
    need_weights=True,
    average=True,
    batch_first=True,
    seed=0,
):
    ref, mod = make_pair(E, H, batch_first=batch_first, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (N, L, E) if batch_first else (L, N, E)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    xr = x.clone().requires_grad_()
    full_mask = reference_attn_mask(L, window, is_causal, attn_mask, H, N)
    out_r, w_r = ref(
        xr,
        xr,
        xr,
        attn_mask=full_mask,
        key_padding_mask=kpm,
        need_weights=need_weights,
        average_attn_weights=average,
    )
    xm = x.clone().requires_grad_()
    out_m, w_m = mod(
        xm,
        attn_mask=attn_mask,
        key_padding_mask=kpm,
        need_weights=need_weights,
        average_attn_weights=average,
        is_causal=is_causal,
        window_size=window,
    )
    loss_r = (out_r * r).sum() + (w_r.sum() if need_weights else 0)
    loss_m = (out_m * r).sum() + (w_m.sum() if need_weights else 0)
    loss_r.backward()
    loss_m.backward()
    return (out_r, w_r, xr.grad, ref), (out_m, w_m, xm.grad, mod)


def assert_match(expected, actual, dtype):
    out_r, w_r, gx_r, ref = expected
    out_m, w_m, gx_m, mod = actual
    assert_close(out_m, out_r, dtype, "out", "output")
    if w_r is not None:
        assert_close(w_m, w_r, dtype, "out", "weights")
    assert_close(gx_m, gx_r, dtype, "grad", "grad of x")
    for (name, p_r), (_, p_m) in zip(ref.named_parameters(), mod.named_parameters()):
        assert_close(p_m.grad, p_r.grad, dtype, "scaled", f"grad of {name}")


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_window_matches_dense_band_mask(window, is_causal):
    expected, actual = run_both(37, 2, 16, 4, window, is_causal=is_causal)
    assert_match(expected, actual, torch.float64)


@pytest.mark.parametrize("window", [(64, 0), (100, 30), (0, 90)])
def test_window_spanning_several_tiles(window):
    """L past the tile sizes (forward 64-128 query rows x 512 keys, backward 64 x 128-256), so
    tiles are skipped, partially covered and fully covered, per head, averaged weights off."""
    expected, actual = run_both(700, 1, 16, 2, window, is_causal=window[1] == 0, average=False)
    assert_match(expected, actual, torch.float64)


def test_window_with_masks_and_float32_layout_seq_first():
    L, N, H = 45, 3, 4
    g = torch.Generator().manual_seed(5)
    attn = torch.randn(L, L, generator=g)
    kpm = torch.rand(N, L, generator=g) < 0.25
    kpm[:, :3] = False
    expected, actual = run_both(
        L, N, 16, H, (4, 4), attn_mask=attn, kpm=kpm, dtype=torch.float32, batch_first=False
    )
    assert_match(expected, actual, torch.float32)


def test_window_rows_that_see_nothing_are_zero_not_nan():
    """A window that, with padding, leaves some queries no key: zero output rows (the output
    projection bias) and zero weights, where nn gives NaN."""
    L, N, E, H = 12, 1, 8, 2
    ref, mod = make_pair(E, H, batch_first=True, dtype=torch.float64, seed=3)
    x = torch.randn(N, L, E, dtype=torch.float64)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[:, :6] = True  # the first six keys are masked; window (0, 0): queries 0-5 see nothing
    out, w = mod(x, key_padding_mask=kpm, window_size=(0, 0))
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert_close(out[0, :6], mod.out_proj.bias.expand(6, E), DT, "bitwise", "rows seeing nothing")
    assert (w[0, :6] == 0).all()
    # A query that sees only itself: its output is its own value row projected.
    ref_out, _ = ref(x, x, x, attn_mask=band_mask(L, (0, 0), False), need_weights=False)
    assert_close(out[0, 6:], ref_out[0, 6:], DT, "out", "rows seeing themselves")


def test_window_with_dropout_reproducible_and_matching_dense_mask():
    """Dropout draws the same keep mask with or without the window (it is keyed by position),
    so the windowed call equals the dense-masked mhsa call at the same seed."""
    L, N, E, H = 50, 2, 16, 2
    _, mod = make_pair(E, H, batch_first=True, dtype=torch.float64, dropout=0.3, seed=4)
    mod.train()
    x = torch.randn(N, L, E, dtype=torch.float64)
    torch.manual_seed(9)
    out_w, w_w = mod(x, window_size=(5, 2), average_attn_weights=False)
    torch.manual_seed(9)
    out_d, w_d = mod(x, attn_mask=band_mask(L, (5, 2), False), average_attn_weights=False)
    assert_close(out_w, out_d, DT, "reordered", "output")
    assert_close(w_w, w_d, DT, "reordered_weights", "weights")


def test_window_gradcheck():
    _, mod = make_pair(8, 2, batch_first=True, dtype=torch.float64, seed=6)
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    params = [mod.in_proj_weight, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias]

    def f(x, w_in, b_in, w_out, b_out):
        return mhsa.functional.multi_head_self_attention(
            x, w_in, b_in, w_out, b_out, 2, batch_first=True, is_causal=True, window_size=(3, 0)
        )

    assert torch.autograd.gradcheck(f, (x, *params))


def test_window_in_torchscript():
    _, mod = make_pair(8, 2, batch_first=True, dtype=torch.float64, seed=7)

    class Local(torch.nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, need_weights=False, is_causal=True, window_size=(2, 0))[0]

    scripted = torch.jit.script(Local(mod))
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    eager = mod(x, need_weights=False, is_causal=True, window_size=(2, 0))[0]
    assert_close(scripted(x), eager, DT, "bitwise", "scripted")


@pytest.mark.parametrize("padded", [0, 5, 31, 32])
def test_right_padding_is_skipped_and_exact(padded):
    """A right-padded key_padding_mask (the common padded batch): results equal nn's; the
    skipped padding tiles change nothing (bool and float -inf masks)."""
    L, N, E, H = 32, 3, 16, 2
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[0, L - padded :] = True
    kpm[1, L - padded // 2 :] = True  # different lengths per sequence
    expected, actual = run_both(L, N, E, H, (-1, -1), kpm=kpm, is_causal=False)
    if padded < L:
        assert_match(expected, actual, torch.float64)
    float_kpm = torch.zeros(N, L, dtype=torch.float64).masked_fill(kpm, -math.inf)
    expected, actual = run_both(L, N, E, H, (-1, -1), kpm=float_kpm, is_causal=True)
    if padded < L:
        assert_match(expected, actual, torch.float64)
    else:  # all keys of sequence 0 masked: zeros, not NaN
        assert torch.isfinite(actual[0]).all()
