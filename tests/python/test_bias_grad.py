"""The in_proj_bias gradient, which the backward kernels sum block by block while the QKV
gradient is in cache (csrc/cpu/input_bias_sums.h) instead of summing grad_qkv afterwards.

Each query block's dQ sums come from the key block that adds last to it, and each key block
sums its own dK and dV rows, so the cases cross the block edges (query blocks of 64 rows, key
blocks of 128) with masks that change which key blocks reach which query blocks: causal, a
sliding window, right padding (whole key blocks skipped), fully masked rows (query blocks no
key block reaches), both layouts, and the packed op with sequences of several lengths. The
reference is nn.MultiheadAttention in float64 on its need_weights=False path, which gives a
fully masked row zero attention, as mhsa does (see test_masked_rows.py).
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from mhsa_testutils import assert_close, band_blocked, make_input, make_pair

E, H = 32, 4


def _in_proj_bias_grads(ref, mod, x, *, mhsa_kwargs, nn_kwargs):
    """in_proj_bias.grad of mhsa and of nn for the same input and output gradient."""
    x_ours = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, _ = mod(x_ours, x_ours, x_ours, need_weights=False, **mhsa_kwargs)
    out_ref, _ = ref(x_ref, x_ref, x_ref, need_weights=False, **nn_kwargs)
    g = torch.Generator().manual_seed(7)
    grad = torch.randn(out.shape, generator=g, dtype=out.dtype)
    out.backward(grad)
    out_ref.backward(grad)
    return mod.in_proj_bias.grad, ref.in_proj_bias.grad


def _right_padding(N: int, L: int, lengths) -> torch.Tensor:
    """(N, L) bool key padding mask: batch n keeps its first lengths[n] keys (0: all masked)."""
    kpm = torch.ones(N, L, dtype=torch.bool)
    for n, keep in enumerate(lengths):
        kpm[n, :keep] = False
    return kpm


@pytest.mark.parametrize("L", [1, 63, 64, 65, 129, 200, 300])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("mask", ["none", "causal", "window", "right_padding", "masked_rows"])
def test_in_proj_bias_grad_matches_nn(L: int, batch_first: bool, mask: str) -> None:
    N = 3
    ref, mod = make_pair(E, H, batch_first=batch_first, dtype=torch.float64, seed=L)
    x = make_input(L, N, E, batch_first=batch_first, dtype=torch.float64, seed=L + 1)
    ours: dict = {}
    theirs: dict = {}
    if mask == "causal":
        ours = {"is_causal": True}
        theirs = {"attn_mask": torch.ones(L, L, dtype=torch.bool).triu(1), "is_causal": True}
    elif mask == "window":
        window = (17, 3)
        ours = {"window_size": window}
        theirs = {"attn_mask": band_blocked(L, window)}
    elif mask == "right_padding":
        # batch 1 sees only its first keys (key blocks past them are skipped), batch 2 none
        kpm = _right_padding(N, L, [L, max(1, L // 3), 0])
        ours = theirs = {"key_padding_mask": kpm}
    elif mask == "masked_rows":
        # query rows that see no key, spread over several query blocks
        attn_mask = torch.zeros(L, L, dtype=torch.bool)
        attn_mask[::5] = True
        ours = theirs = {"attn_mask": attn_mask}
    grad_ours, grad_ref = _in_proj_bias_grads(ref, mod, x, mhsa_kwargs=ours, nn_kwargs=theirs)
    assert torch.isfinite(grad_ref).all(), "the reference must be finite"
    assert_close(grad_ours, grad_ref, torch.float64, "abs", "in_proj_bias.grad")


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_packed_in_proj_bias_grad_matches_each_sequence(is_causal: bool) -> None:
    """The packed op lays the block sums of all sequences end to end."""
    lengths = [65, 0, 1, 200, 128, 7]
    ref, mod = make_pair(E, H, dtype=torch.float64, seed=11)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(sum(lengths), E, generator=g, dtype=torch.float64)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)

    x_packed = x.clone().requires_grad_()
    mod.forward_packed(x_packed, offsets, is_causal=is_causal).backward(grad)
    grad_packed = mod.in_proj_bias.grad.clone()

    expected: Optional[torch.Tensor] = None
    for b, L in enumerate(lengths):
        if L == 0:
            continue
        rows = slice(int(offsets[b]), int(offsets[b + 1]))
        seq = x[rows].unsqueeze(1).requires_grad_()
        mask = torch.ones(L, L, dtype=torch.bool).triu(1) if is_causal else None
        out, _ = ref(seq, seq, seq, need_weights=False, attn_mask=mask, is_causal=is_causal)
        out.backward(grad[rows].unsqueeze(1))
    expected = ref.in_proj_bias.grad
    assert_close(grad_packed, expected, torch.float64, "abs", "packed in_proj_bias.grad")
