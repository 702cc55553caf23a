"""SHA-256 of mhsa's outputs, weights and every gradient over a grid of calls.

A refactoring tool: run it before and after a change that must not change behaviour, on the
same machine, and compare the two JSON files (``diff``). The bits depend on the CPU's
instruction set and GEMM engine, so a grid is only comparable with one taken on the same CPU.

    python scripts/hash_grid.py > before.json
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys

import torch

import mhsa


def digest(tensors: list) -> str:
    """One hash over the bytes of every tensor (None entries included as a marker)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
        else:
            h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def padded_case(dtype, L, need_weights, average, mask, dropout, batch_first) -> str:
    """Hash of one call of the padded self-attention op and its backward."""
    torch.manual_seed(0)
    N, E, H = 2, 64, 4
    shape = (N, L, E) if batch_first else (L, N, E)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    m = mhsa.MultiheadSelfAttention(E, H, dropout=dropout, batch_first=batch_first, dtype=dtype)
    kwargs = {}
    if mask == "causal":
        kwargs["is_causal"] = True
        kwargs["attn_mask"] = torch.ones(L, L, dtype=torch.bool).triu(1)
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(L, L, dtype=dtype)
    elif mask == "padding":
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[1, L // 2 :] = True
        kwargs["key_padding_mask"] = kpm
    elif mask == "window":
        kwargs["window_size"] = (5, 3)
    torch.manual_seed(1)
    out, w = m(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
    loss = out.float().square().sum()
    if w is not None:
        loss = loss + w.float().sum() * 0.5
    loss.backward()
    grads = [x.grad] + [p.grad for p in m.parameters()]
    return digest([out, w] + grads)


def packed_case(dtype, causal, dropout) -> str:
    """Hash of one call of the packed op and its backward."""
    torch.manual_seed(0)
    E, H = 64, 4
    cu = torch.tensor([0, 7, 40, 41, 100])
    x = torch.randn(100, E, dtype=dtype, requires_grad=True)
    m = mhsa.MultiheadSelfAttention(E, H, dropout=dropout, dtype=dtype)
    torch.manual_seed(1)
    out = m.forward_packed(x, cu, is_causal=causal)
    out.float().square().sum().backward()
    return digest([out, x.grad] + [p.grad for p in m.parameters()])


def sdpa_case(dtype, L, S, gqa, mask, dropout) -> str:
    """Hash of mhsa.scaled_dot_product_attention and its backward."""
    torch.manual_seed(0)
    H, H_kv = 4, (2 if gqa else 4)
    q = torch.randn(2, H, L, 16, dtype=dtype, requires_grad=True)
    k = torch.randn(2, H_kv, S, 16, dtype=dtype, requires_grad=True)
    v = torch.randn(2, H_kv, S, 8, dtype=dtype, requires_grad=True)
    kwargs = {}
    if mask == "causal":
        kwargs["is_causal"] = True
    elif mask == "bool":
        kwargs["attn_mask"] = torch.rand(2, 1, L, S) > 0.3
    elif mask == "padding":
        pad = torch.ones(2, 1, 1, S, dtype=torch.bool)
        pad[1, ..., S // 2 :] = False
        kwargs["attn_mask"] = pad
    elif mask == "window":
        kwargs["window_size"] = (7, 2)
    torch.manual_seed(1)
    out = mhsa.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa, **kwargs)
    out.float().square().sum().backward()
    return digest([out, q.grad, k.grad, v.grad])


def cross_case(dtype, kw) -> str:
    """Hash of mhsa.MultiheadAttention (cross-attention) and its backward."""
    torch.manual_seed(0)
    m = mhsa.MultiheadAttention(32, 4, batch_first=True, dtype=dtype, **kw)
    q = torch.randn(2, 9, 32, dtype=dtype, requires_grad=True)
    kv = torch.randn(2, 70, m.kdim, dtype=dtype, requires_grad=True)
    kpm = torch.zeros(2, 70, dtype=torch.bool)
    kpm[0, 50:] = True
    out, w = m(q, kv, kv if m.kdim == m.vdim else kv[..., : m.vdim], key_padding_mask=kpm)
    (out.float().square().sum() + w.float().sum()).backward()
    return digest([out, w, q.grad, kv.grad] + [p.grad for p in m.parameters()])


def gqa_case(dtype) -> str:
    """Hash of grouped-query MultiheadSelfAttention, forward and backward."""
    torch.manual_seed(0)
    m = mhsa.MultiheadSelfAttention(32, 8, batch_first=True, dtype=dtype, num_kv_heads=2)
    x = torch.randn(2, 40, 32, dtype=dtype, requires_grad=True)
    out, w = m(x, is_causal=True)
    (out.float().square().sum() + w.float().sum()).backward()
    return digest([out, w, x.grad] + [p.grad for p in m.parameters()])


def main() -> None:
    torch.set_num_threads(2)
    grid = {}
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    for dtype, L, nw, mask, dropout, bf in itertools.product(
        dtypes,
        [5, 70, 300],
        ["none", "avg", "heads"],
        ["none", "causal", "float", "padding", "window"],
        [0.0, 0.2],
        [False, True],
    ):
        if nw != "none" and (bf or L == 300):
            continue
        key = f"padded/{dtype}/L{L}/{nw}/{mask}/p{dropout}/bf{int(bf)}"
        grid[key] = padded_case(dtype, L, nw != "none", nw == "avg", mask, dropout, bf)
    for dtype, causal, dropout in itertools.product(dtypes, [False, True], [0.0, 0.2]):
        grid[f"packed/{dtype}/causal{int(causal)}/p{dropout}"] = packed_case(dtype, causal, dropout)
    for dtype, (L, S), gqa, mask, dropout in itertools.product(
        dtypes,
        [(5, 70), (300, 40)],
        [False, True],
        ["none", "causal", "bool", "padding", "window"],
        [0.0, 0.2],
    ):
        key = f"sdpa/{dtype}/L{L}/S{S}/gqa{int(gqa)}/{mask}/p{dropout}"
        grid[key] = sdpa_case(dtype, L, S, gqa, mask, dropout)
    for dtype, name in itertools.product(dtypes, ["plain", "kdim", "bias_kv_zero"]):
        kw = {
            "plain": {},
            "kdim": {"kdim": 12, "vdim": 8},
            "bias_kv_zero": {"add_bias_kv": True, "add_zero_attn": True},
        }[name]
        grid[f"cross/{dtype}/{name}"] = cross_case(dtype, kw)
    for dtype in dtypes:
        grid[f"gqa/{dtype}"] = gqa_case(dtype)
    json.dump(grid, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
