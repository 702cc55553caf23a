"""Latency rows of scripts/bench (--latency): the time per call of short inputs and per generated
token, in inference (eval, no_grad), medians over many calls, mhsa and torch interleaved.

- forward at (N, L, E, H): mhsa.MultiheadSelfAttention against nn.MultiheadAttention (its
  fast path where it takes it: batch_first, eval, no_grad);
- decode per token after a prefix P: mhsa's decode (its KV cache) against the loop a user writes
  without mhsa over the same cache: F.linear for q, k and v, the new key and value written into
  the cache, F.scaled_dot_product_attention of the new query over the cached keys and values,
  F.linear for the output. The cache length is reset to P before every call, so each call
  appends the (P+1)-th token.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import mhsa

FORWARD_SHAPES = [
    (1, 1, 512, 8),
    (1, 8, 512, 8),
    (1, 32, 512, 8),
    (1, 128, 512, 8),
    (8, 32, 256, 4),
]
DECODE_CASES = [(256, 4, 512), (256, 4, 4096), (1024, 16, 512), (1024, 16, 4096)]  # E, H, prefix


@dataclass
class LatencyRow:
    what: str
    mhsa_us: float
    torch_us: float

    @property
    def speedup(self) -> float:
        return self.torch_us / self.mhsa_us


def median_us_interleaved(fns: list[Callable[[], object]], calls: int, blocks: int) -> list[float]:
    """Median over `blocks` of the mean time of `calls` consecutive calls, per function, the
    functions' blocks interleaved (ABAB...), after one warm-up block each."""
    for fn in fns:
        for _ in range(calls):
            fn()
    means: list[list[float]] = [[] for _ in fns]
    for _ in range(blocks):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            means[k].append((time.perf_counter() - t0) / calls)
    return [statistics.median(m) * 1e6 for m in means]


def forward_row(N: int, L: int, E: int, H: int, calls: int, blocks: int) -> LatencyRow:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    mod = mhsa.MultiheadSelfAttention.from_torch(ref).eval()
    x = torch.randn(N, L, E)
    with torch.no_grad():
        torch.testing.assert_close(
            mod(x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], rtol=1e-4, atol=1e-5
        )
        m, t = median_us_interleaved(
            [lambda: mod(x, need_weights=False), lambda: ref(x, x, x, need_weights=False)],
            calls,
            blocks,
        )
    return LatencyRow(f"forward ({N}, {L}, {E}, {H})", m, t)


def decode_row(E: int, H: int, prefix: int, calls: int, blocks: int) -> tuple[LatencyRow, float]:
    """The decode row, and the bytes of cache one token's step reads (keys and values, float32)."""
    torch.manual_seed(0)
    D = E // H
    mod = mhsa.MultiheadSelfAttention(E, H, batch_first=True).eval()
    cache = mod.new_kv_cache(batch_size=1, max_len=prefix + 1)
    with torch.no_grad():
        mod.decode(torch.randn(1, prefix, E), cache)  # the prompt
    w_in, b_in = mod.in_proj_weight.detach(), mod.in_proj_bias.detach()
    w_out, b_out = mod.out_proj.weight.detach(), mod.out_proj.bias.detach()
    k_cache, v_cache = cache.key.clone(), cache.value.clone()
    x = torch.randn(1, 1, E)

    def mhsa_step() -> torch.Tensor:
        cache.length.fill_(prefix)
        return mod.decode(x, cache)

    def torch_step() -> torch.Tensor:
        q, k, v = F.linear(x, w_in, b_in).split(E, dim=-1)
        k_cache[:, :, prefix] = k.view(1, H, D)
        v_cache[:, :, prefix] = v.view(1, H, D)
        ctx = F.scaled_dot_product_attention(
            q.view(1, 1, H, D).transpose(1, 2),
            k_cache[:, :, : prefix + 1],
            v_cache[:, :, : prefix + 1],
        )
        return F.linear(ctx.transpose(1, 2).reshape(1, 1, E), w_out, b_out)

    with torch.no_grad():
        torch.testing.assert_close(mhsa_step(), torch_step(), rtol=1e-4, atol=1e-5)
        m, t = median_us_interleaved([mhsa_step, torch_step], calls, blocks)
    cache_bytes = 2 * (prefix + 1) * E * 4
    return LatencyRow(f"decode, 1 token after {prefix}, E = {E}, H = {H}", m, t), cache_bytes


def run_latency(out: Path, header: str, calls: int = 50, blocks: int = 15) -> list[LatencyRow]:
    """Measures every latency row, prints it and writes out/latency.md."""
    rows: list[LatencyRow] = []
    lines = [
        header,
        "",
        "| call | mhsa µs | torch µs | speedup | cache read per token |",
        "|---|---|---|---|---|",
    ]
    for N, L, E, H in FORWARD_SHAPES:
        row = forward_row(N, L, E, H, calls, blocks)
        rows.append(row)
        print(
            f"{row.what}: mhsa {row.mhsa_us:.0f} µs, torch {row.torch_us:.0f} µs, "
            f"speedup {row.speedup:.2f}x",
            flush=True,
        )
        lines.append(
            f"| {row.what} | {row.mhsa_us:.0f} | {row.torch_us:.0f} | {row.speedup:.2f}x | |"
        )
    for E, H, prefix in DECODE_CASES:
        row, cache_bytes = decode_row(E, H, prefix, calls, blocks)
        rows.append(row)
        bandwidth = cache_bytes / (row.mhsa_us * 1e-6) / 1e9
        print(
            f"{row.what}: mhsa {row.mhsa_us:.0f} µs, torch {row.torch_us:.0f} µs, speedup "
            f"{row.speedup:.2f}x; cache {cache_bytes / 2**20:.2f} MiB per token, "
            f"{bandwidth:.1f} GB/s",
            flush=True,
        )
        lines.append(
            f"| {row.what} | {row.mhsa_us:.0f} | {row.torch_us:.0f} | {row.speedup:.2f}x | "
            f"{cache_bytes / 2**20:.2f} MiB ({bandwidth:.1f} GB/s at mhsa's time) |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/latency.md", flush=True)
    return rows
