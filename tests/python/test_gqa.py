"""Grouped-query self-attention: MultiheadSelfAttention(num_kv_heads=H_kv) against the formula
(mhsa_testutils.reference_attention with num_kv_heads, float64) and its KV-cache decoding
against the causal forward over the whole sequence."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch
from torch import Tensor

import mhsa
from mhsa_testutils import assert_close, random_bool_mask, randomize_, reference_attention

E, H, H_KV, N, L = 32, 8, 2, 2, 11
D = E // H
DT = torch.float64


def reference(module: mhsa.MultiheadSelfAttention, x: Tensor, **kwargs) -> Tuple[Tensor, Tensor]:
    """Output and per-head weights of the suite's formula for the module's call with `kwargs`
    (x is batch first)."""
    window = kwargs.pop("window_size", (-1, -1))
    return reference_attention(
        x,
        module.in_proj_weight,
        module.in_proj_bias,
        module.out_proj.weight,
        module.out_proj.bias,
        H,
        num_kv_heads=module.num_kv_heads,
        batch_first=True,
        window=window,
        average_attn_weights=False,
        **kwargs,
    )


def make_module(num_kv_heads: int, seed: int = 0) -> mhsa.MultiheadSelfAttention:
    module = mhsa.MultiheadSelfAttention(
        E, H, batch_first=True, dtype=DT, num_kv_heads=num_kv_heads
    )
    randomize_(module, seed)
    return module


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("masks", ["none", "causal", "padding+attn", "window"])
def test_forward_and_gradients_match_the_formula(num_kv_heads, masks):
    module = make_module(num_kv_heads)
    assert module.in_proj_weight.shape == ((H + 2 * num_kv_heads) * D, E)
    x = torch.randn(N, L, E, dtype=DT, requires_grad=True)
    kwargs = {}
    if masks == "causal":
        kwargs["is_causal"] = True
    elif masks == "padding+attn":
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[1, 7:] = True
        attn = random_bool_mask((L, L), seed=3)
        kwargs.update(key_padding_mask=kpm, attn_mask=attn)
    elif masks == "window":
        kwargs["window_size"] = (3, 1)
    out, w = module(x, need_weights=True, average_attn_weights=False, **kwargs)
    out_ref, w_ref = reference(module, x, **kwargs)
    what = f"H_kv={num_kv_heads} {masks}"
    assert_close(out, out_ref, DT, "out", f"{what} output")
    assert_close(w, w_ref, DT, "out", f"{what} weights")
    grads = torch.autograd.grad(out.square().sum() + w.sum(), [x, *module.parameters()])
    grads_ref = torch.autograd.grad(out_ref.square().sum() + w_ref.sum(), [x, *module.parameters()])
    for name, a, b in zip(["x"] + [n for n, _ in module.named_parameters()], grads, grads_ref):
        assert_close(a, b, DT, "grad", f"{what} grad {name}")


def test_averaged_weights_and_unbatched_input():
    module = make_module(2, seed=1)
    x = torch.randn(L, E, dtype=DT)
    out, w = module(x, is_causal=True)
    out_b, w_b = module(x.unsqueeze(0), is_causal=True, average_attn_weights=False)
    assert out.shape == (L, E) and w.shape == (L, L)
    assert_close(out, out_b[0], DT, "out", "unbatched output")
    assert_close(w, w_b[0].mean(0), DT, "out", "averaged weights")


@pytest.mark.parametrize("batch_first", [True, False])
def test_kv_cache_decoding_stores_kv_heads_and_equals_the_causal_forward(batch_first):
    module = mhsa.MultiheadSelfAttention(
        E, H, batch_first=batch_first, dtype=DT, num_kv_heads=H_KV
    ).eval()
    randomize_(module, 2)
    x = torch.randn(N, L, E, dtype=DT)
    seq = x if batch_first else x.transpose(0, 1)
    full = module(seq, is_causal=True, need_weights=False)[0]
    cache = module.new_kv_cache(N, 16)
    assert cache.key.shape == (N, H_KV, 16, D) and cache.value.shape == (N, H_KV, 16, D)

    def take(t: Tensor, a: int, b: int) -> Tensor:
        return t[:, a:b] if batch_first else t[a:b]

    pieces = [module.decode(take(seq, 0, 4), cache)]
    pieces += [module.decode(take(seq, i, i + 1), cache) for i in range(4, L)]
    assert int(cache.length) == L
    decoded = torch.cat(pieces, dim=1 if batch_first else 0)
    assert_close(decoded, full, DT, "out", "decoded tokens")
    with pytest.raises(ValueError, match="room"):
        module.decode(take(seq, 0, 6), cache)


def test_torchscript_forward_and_decode():
    module = make_module(2, seed=4).eval()
    x = torch.randn(N, L, E, dtype=DT)
    scripted = torch.jit.script(module)
    assert torch.equal(scripted(x, is_causal=True)[0], module(x, is_causal=True)[0])
    cache = scripted.new_kv_cache(N, 12)
    assert_close(
        scripted.decode(x[:, :5], cache),
        module(x[:, :5], is_causal=True)[0],
        DT,
        "out",
        "scripted decode",
    )
