"""mhsa.MultiheadAttention against nn.MultiheadAttention: every constructor combination (kdim,
vdim, add_bias_kv, add_zero_attn, bias, batch_first) and every mask form, with query and key
lengths that differ, outputs, weights and every gradient (the shared tolerance table)."""

from __future__ import annotations

import copy
from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn

import mhsa
from mhsa_testutils import assert_as_exact_as_nn, assert_close, random_bool_mask, randomize_

E, H, N = 16, 4, 2

CONSTRUCTORS = {
    "plain": {},
    "no_bias": {"bias": False},
    "kdim_vdim": {"kdim": 6, "vdim": 10},
    "kdim_eq_vdim": {"kdim": 8, "vdim": 8},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "all": {"add_bias_kv": True, "add_zero_attn": True, "kdim": 6, "vdim": 10},
}
MASKS = ["none", "bool2d", "float2d", "bool3d", "kpm_bool", "kpm_float", "bool2d+kpm_bool"]


def make_modules(kwargs: Dict, *, batch_first: bool, dtype: torch.dtype, seed: int):
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=dtype, **kwargs)
    randomize_(ref, seed)
    ours = mhsa.MultiheadAttention(E, H, batch_first=batch_first, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def extra_keys(kwargs: Dict) -> int:
    return int(kwargs.get("add_bias_kv", False)) + int(kwargs.get("add_zero_attn", False))


def make_masks(kind: str, L: int, S: int, dtype: torch.dtype, seed: int):
    """(attn_mask, key_padding_mask) over the S given keys (nn pads them for the added keys)."""
    attn_mask = kpm = None
    if "bool2d" in kind:
        attn_mask = random_bool_mask((L, S), seed=seed)
    if kind == "float2d":
        attn_mask = torch.randn(L, S, generator=torch.Generator().manual_seed(seed)).to(dtype)
    if kind == "bool3d":
        attn_mask = random_bool_mask((N * H, L, S), seed=seed)
    if "kpm_bool" in kind:
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[1, S // 2 :] = True
    if kind == "kpm_float":
        kpm = torch.zeros(N, S, dtype=dtype)
        kpm[0, -2:] = float("-inf")
        kpm[1, 0] = -3.0
    return attn_mask, kpm


def inputs(L: int, S: int, kwargs: Dict, *, batch_first: bool, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def make(length: int, dim: int) -> Tensor:
        shape = (N, length, dim) if batch_first else (length, N, dim)
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    kdim, vdim = kwargs.get("kdim", E), kwargs.get("vdim", E)
    q = make(L, E)
    k = make(S, kdim)
    v = k if kdim == vdim else make(S, vdim)  # one memory tensor, as a decoder passes it
    return q, k, v


def run(module, q, k, v, **kwargs):
    out, w = module(q, k, v, **kwargs)
    loss = out.square().sum() + (w.square().sum() if w is not None else 0)
    leaves: List[Tensor] = list({id(t): t for t in (q, k, v)}.values())
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return out, w, grads


@pytest.mark.parametrize("ctor", list(CONSTRUCTORS))
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("lengths", [(5, 9), (9, 5)], ids=["L<S", "L>S"])
def test_float64_parity_with_nn(ctor, mask, lengths):
    kwargs = CONSTRUCTORS[ctor]
    L, S = lengths
    dtype = torch.float64
    for seed, (batch_first, need_weights, average) in enumerate(
        [(False, True, True), (True, True, False), (False, False, True)]
    ):
        ref, ours = make_modules(kwargs, batch_first=batch_first, dtype=dtype, seed=seed)
        q, k, v = inputs(L, S, kwargs, batch_first=batch_first, dtype=dtype, seed=seed)
        attn_mask, kpm = make_masks(mask, L, S, dtype, seed)
        call = dict(
            attn_mask=attn_mask,
            key_padding_mask=kpm,
            need_weights=need_weights,
            average_attn_weights=average,
        )
        out_ref, w_ref, g_ref = run(ref, q, k, v, **call)
        out, w, g = run(ours, q, k, v, **call)
        what = f"{ctor} {mask} L={L} S={S} batch_first={batch_first}"
        assert_close(out, out_ref, dtype, "out", f"{what} output")
        if need_weights:
            assert (
                w.shape
                == w_ref.shape
                == (
                    (N, L, S + extra_keys(kwargs)) if average else (N, H, L, S + extra_keys(kwargs))
                )
            )
            assert_close(w, w_ref, dtype, "out", f"{what} weights")
        else:
            assert w is None and w_ref is None
        names = ["input"] * (len(g) - len(list(ours.parameters())))
        names += [name for name, _ in ours.named_parameters()]
        for name, a, b in zip(names, g, g_ref):
            assert_close(a, b, dtype, "grad", f"{what} grad {name}")


@pytest.mark.parametrize("ctor", ["plain", "kdim_vdim", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_low_precision_as_exact_as_nn(ctor, dtype):
    """Against nn in float64, within a small factor of nn's own error in the same dtype."""
    kwargs = CONSTRUCTORS[ctor]
    L, S = 33, 70
    ref64, _ = make_modules(kwargs, batch_first=True, dtype=torch.float64, seed=3)
    ref_low = copy.deepcopy(ref64).to(dtype)
    ours = mhsa.MultiheadAttention(E, H, batch_first=True, dtype=dtype, **kwargs)
    ours.load_state_dict(ref_low.state_dict())
    q, k, v = inputs(L, S, kwargs, batch_first=True, dtype=torch.float64, seed=4)
    attn_mask, kpm = make_masks("bool2d+kpm_bool", L, S, dtype, seed=5)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    if v is k:
        low[2] = low[1]
    call = dict(attn_mask=attn_mask, key_padding_mask=kpm)
    out64, w64, g64 = run(ref64, q, k, v, **call)
    out_nn, w_nn, g_nn = run(ref_low, *low, **call)
    low_ours = [t.detach().requires_grad_() for t in low]
    if v is k:
        low_ours[2] = low_ours[1]
    out, w, g = run(ours, *low_ours, **call)
    assert_as_exact_as_nn(out, out_nn, out64, f"{ctor} {dtype} output")
    assert_as_exact_as_nn(w, w_nn, w64, f"{ctor} {dtype} weights")
    for i, (a, b, c) in enumerate(zip(g, g_nn, g64)):
        assert_as_exact_as_nn(a, b, c, f"{ctor} {dtype} grad {i}")


def test_unbatched_and_causal_cross_attention():
    """Unbatched inputs; is_causal is top-left aligned (key j visible to query i iff j <= i) and
    needs no attn_mask, and equals nn given that mask."""
    kwargs = CONSTRUCTORS["kdim_vdim"]
    ref, ours = make_modules(kwargs, batch_first=False, dtype=torch.float64, seed=7)
    L, S = 6, 9
    q = torch.randn(L, E, dtype=torch.float64)
    k = torch.randn(S, 6, dtype=torch.float64)
    v = torch.randn(S, 10, dtype=torch.float64)
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    out_ref, w_ref = ref(q, k, v, attn_mask=causal)
    out, w = ours(q, k, v, is_causal=True)
    assert out.shape == (L, E) and w.shape == (L, S)
    assert_close(out, out_ref, torch.float64, "out", "unbatched causal output")
    assert_close(w, w_ref, torch.float64, "out", "unbatched causal weights")


def test_state_dict_loads_both_ways_and_parameter_names_match():
    for kwargs in CONSTRUCTORS.values():
        ref = nn.MultiheadAttention(E, H, **kwargs)
        ours = mhsa.MultiheadAttention(E, H, **kwargs)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in ref.state_dict().items()
        }
        ref.load_state_dict(ours.state_dict())
        ours.load_state_dict(ref.state_dict())


def test_self_attention_call_takes_the_fused_self_attention_op():
    """attn(x, x, x) with the packed projection equals MultiheadSelfAttention bit for bit (it is
    the same op)."""
    ours = mhsa.MultiheadAttention(E, H, batch_first=True)
    fused = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
    fused.load_state_dict(ours.state_dict())
    x = torch.randn(N, 7, E)
    a = ours(x, x, x, is_causal=True)
    b = fused(x, is_causal=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_transformer_decoder_layer_with_mhsa_cross_attention_matches_nn():
    layer = nn.TransformerDecoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer = layer.double()
    randomize_(layer, 11)
    converted = mhsa.replace_attention(copy.deepcopy(layer))
    assert isinstance(converted.multihead_attn, mhsa.MultiheadAttention)
    tgt = torch.randn(N, 5, E, dtype=torch.float64)
    memory = torch.randn(N, 8, E, dtype=torch.float64)
    kpm = torch.zeros(N, 8, dtype=torch.bool)
    kpm[0, 6:] = True
    out_ref = layer(tgt, memory, memory_key_padding_mask=kpm)
    out = converted(tgt, memory, memory_key_padding_mask=kpm)
    assert_close(out, out_ref, torch.float64, "out", "decoder layer output")


def test_scripted_and_compiled_module_match_eager(tmp_path):
    kwargs = CONSTRUCTORS["all"]
    ours = mhsa.MultiheadAttention(E, H, batch_first=True, **kwargs).eval()
    q, k, v = inputs(5, 9, kwargs, batch_first=True, dtype=torch.float32, seed=2)
    with torch.no_grad():
        expected = ours(q, k, v)[0]
        scripted = torch.jit.script(ours)
        path = tmp_path / "mha.pt"
        scripted.save(str(path))
        loaded = torch.jit.load(str(path))
        assert torch.equal(loaded(q, k, v)[0], expected)
        compiled = torch.compile(ours, fullgraph=True, backend="eager")
        assert torch.equal(compiled(q, k, v)[0], expected)
