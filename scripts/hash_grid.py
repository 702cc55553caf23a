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
    json.dump(grid, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
