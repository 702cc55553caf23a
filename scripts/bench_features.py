"""Benchmark of mhsa's features beyond nn.MultiheadAttention: sliding-window attention and
padding that costs nothing (issue #11), each against the dense call it replaces, measured in
the same process, interleaved, with an explicit thread count.

Rows (float32, forward+backward, need_weights=False, p=0):
* window: causal attention with window_size=(W, 0) against the dense causal mhsa call and
  against nn.MultiheadAttention with the equivalent boolean band mask.
* padding: a batch whose sequences are right-padded (key_padding_mask) against the same call
  without a mask (mhsa skips the key tiles that are all padding) and against nn.

Usage: scripts/bench_features.py [--threads 2] [--quick] [--out bench-output]
Writes features.md (a markdown table, the README's) and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable, List

import torch
from torch import nn

import mhsa
from mhsa._cpu_info import cpu_description


def timed(fns: List[Callable[[], None]], reps: int) -> List[float]:
    """Median milliseconds of each function, interleaved (ABAB...) after one warm-up call each."""
    for fn in fns:
        fn()
    samples: List[List[float]] = [[] for _ in fns]
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return [statistics.median(s) * 1e3 for s in samples]


def train_step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        xr = x.detach().requires_grad_()
        fn(xr).sum().backward()

    return step


def modules(E: int, H: int) -> tuple[nn.MultiheadAttention, mhsa.MultiheadSelfAttention]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True)
    return ref, mhsa.MultiheadSelfAttention.from_torch(ref)


def window_row(N: int, L: int, E: int, H: int, W: int, reps: int, with_torch: bool) -> str:
    ref, mod = modules(E, H)
    x = torch.randn(N, L, E)
    i = torch.arange(L).unsqueeze(1)
    j = torch.arange(L).unsqueeze(0)
    band = (j > i) | (j < i - W)
    fns = [
        train_step(lambda x: mod(x, need_weights=False, is_causal=True, window_size=(W, 0))[0], x),
        train_step(lambda x: mod(x, need_weights=False, is_causal=True)[0], x),
    ]
    if with_torch:
        fns.append(train_step(lambda x: ref(x, x, x, attn_mask=band, need_weights=False)[0], x))
    ms = timed(fns, reps)
    torch_ms = f"{ms[2]:.0f}" if with_torch else "not run"
    torch_ratio = f"{ms[2] / ms[0]:.2f}x" if with_torch else "-"
    return (
        f"| window ({W}, 0), causal | ({N}, {L}, {E}, {H}) | {ms[0]:.0f} | dense causal mhsa "
        f"{ms[1]:.0f} | {ms[1] / ms[0]:.2f}x | {torch_ms} | {torch_ratio} |"
    )


def padding_row(N: int, L: int, E: int, H: int, reps: int) -> str:
    ref, mod = modules(E, H)
    x = torch.randn(N, L, E)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[:, L // 2 :] = True
    ms = timed(
        [
            train_step(lambda x: mod(x, key_padding_mask=kpm, need_weights=False)[0], x),
            train_step(lambda x: mod(x, need_weights=False)[0], x),
            train_step(lambda x: ref(x, x, x, key_padding_mask=kpm, need_weights=False)[0], x),
        ],
        reps,
    )
    return (
        f"| right padding, last half | ({N}, {L}, {E}, {H}) | {ms[0]:.0f} | no mask mhsa "
        f"{ms[1]:.0f} | {ms[0] / ms[1]:.2f} of it | {ms[2]:.0f} | {ms[2] / ms[0]:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="smaller shapes, about a minute")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads; float32, "
        "forward+backward, need_weights=False, p=0; median ms of interleaved runs.",
        "",
        "| row | (N, L, E, H) | mhsa ms | baseline ms | mhsa vs baseline | torch ms | speedup vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    if args.quick:
        lines.append(window_row(1, 4096, 256, 4, 256, args.reps, with_torch=True))
        lines.append(padding_row(4, 2048, 256, 4, args.reps))
    else:
        lines.append(window_row(1, 16384, 512, 8, 512, args.reps, with_torch=True))
        lines.append(padding_row(8, 4096, 256, 4, args.reps))
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
