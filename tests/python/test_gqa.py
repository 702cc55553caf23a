"""Grouped-query self-attention: MultiheadSelfAttention(num_kv_heads=H_kv) against the formula
(PyTorch's SDPA math path with enable_gqa, float64) and its KV-cache decoding against the causal
forward over the whole sequence."""

from __future__ import annotations

from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import mhsa
from mhsa_testutils import assert_close, random_bool_mask, randomize_

E, H, H_KV, N, L = 32, 8, 2, 2, 11
D = E // H
DT = torch.float64


def reference(
    module: mhsa.MultiheadSelfAttention,
    x: Tensor,
    allowed: Tensor,
) -> Tuple[Tensor, Tensor]:
    """Output and per-head weights of grouped-query attention written out in plain ops (x is
    batch first; `allowed` is a bool mask broadcastable to (N, H, L, L), True = may attend)."""
    hk = module.num_kv_heads
    q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).split(
        [H * D, hk * D, hk * D], -1
    )
    q = q.unflatten(-1, (H, D)).transpose(1, 2)
    k = k.unflatten(-1, (hk, D)).transpose(1, 2).repeat_interleave(H // hk, dim=1)
    v = v.unflatten(-1, (hk, D)).transpose(1, 2).repeat_interleave(H // hk, dim=1)
    scores = (q @ k.transpose(-1, -2)) / D**0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    context = (weights @ v).transpose(1, 2).flatten(2)
    return F.linear(context, module.out_proj.weight, module.out_proj.bias), weights


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
    allowed = torch.ones(N, 1, L, L, dtype=torch.bool)
    kwargs = {}
    if masks == "causal":
        kwargs["is_causal"] = True
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()
    elif masks == "padding+attn":
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[1, 7:] = True
        attn = random_bool_mask((L, L), seed=3)
        kwargs.update(key_padding_mask=kpm, attn_mask=attn)
        allowed = allowed & ~kpm[:, None, None, :] & ~attn
    elif masks == "window":
        kwargs["window_size"] = (3, 1)
        i = torch.arange(L)[:, None]
        j = torch.arange(L)[None, :]
        allowed = allowed & (j >= i - 3) & (j <= i + 1)
    out, w = module(x, need_weights=True, average_attn_weights=False, **kwargs)
    out_ref, w_ref = reference(module, x, allowed)
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


def test_bad_num_kv_heads_and_packed_input_are_refused():
    with pytest.raises(ValueError, match="num_kv_heads"):
        mhsa.MultiheadSelfAttention(E, H, num_kv_heads=3)
    module = make_module(2)
    with pytest.raises(NotImplementedError, match="grouped-query"):
        module.forward_packed(torch.randn(5, E, dtype=DT), torch.tensor([0, 5]))
    weight: Optional[Tensor] = torch.randn(3 * E, E, dtype=DT)
    with pytest.raises(RuntimeError, match="in_proj_weight"):
        mhsa.functional.multi_head_self_attention(
            torch.randn(L, N, E, dtype=DT),
            weight,
            None,
            module.out_proj.weight,
            None,
            H,
            num_kv_heads=2,
        )
