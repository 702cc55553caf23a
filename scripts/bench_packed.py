"""Benchmark packed variable-length sequences against the padded batch.

B sequences of mixed lengths (default 16, spread geometrically from 64 to 2048 tokens) run
three ways, interleaved, with an explicit thread count:

* ``packed``: ``MultiheadSelfAttention.forward_packed`` on the (T, E) concatenation;
* ``padded mhsa``: the module on the (B, max L, E) zero-padded batch with a ``key_padding_mask``;
* ``padded torch``: ``nn.MultiheadAttention`` on the same padded batch and mask.

Reports the median milliseconds of forward (no grad, eval) and of a training step
(forward + backward, input and parameters requiring grad), and prints one markdown row per
mode. The attention work of the packed form is proportional to sum L^2 (printed as the
"useful fraction" of B * max(L)^2). Speed is never asserted in tests.

    PYTHONPATH=python python scripts/bench_packed.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch
from torch import nn

import mhsa


def lengths_between(count: int, shortest: int, longest: int) -> List[int]:
    """``count`` lengths spaced geometrically from ``shortest`` to ``longest``."""
    if count == 1:
        return [longest]
    ratio = (longest / shortest) ** (1.0 / (count - 1))
    return [round(shortest * ratio**i) for i in range(count)]


def median_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="skip nn.MultiheadAttention (slow, O(B H L^2) memory)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    E, H = args.embed_dim, args.heads
    lengths = lengths_between(args.sequences, args.min_len, args.max_len)
    B, Lmax, T = len(lengths), max(lengths), sum(lengths)
    ref = nn.MultiheadAttention(E, H, batch_first=True)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)

    x = torch.randn(T, E)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    padded = torch.zeros(B, Lmax, E)
    kpm = torch.ones(B, Lmax, dtype=torch.bool)  # True = padding
    for b, (s, n) in enumerate(zip(cu[:-1].tolist(), lengths)):
        padded[b, :n] = x[s : s + n]
        kpm[b, :n] = False

    # The three agree on the real tokens (checked once, so the bench compares like with like).
    with torch.no_grad():
        mod.eval()
        ref.eval()
        out_packed = mod.forward_packed(x, cu)
        out_padded = mod(padded, key_padding_mask=kpm, need_weights=False)[0]
        real = torch.cat([out_padded[b, :n] for b, n in enumerate(lengths)])
        assert torch.allclose(out_packed, real, atol=1e-4), (out_packed - real).abs().max()

    def packed_step(train: bool) -> Callable[[], None]:
        def run() -> None:
            if train:
                xg = x.detach().requires_grad_()
                mod.forward_packed(xg, cu).sum().backward()
            else:
                with torch.no_grad():
                    mod.forward_packed(x, cu)

        return run

    def padded_step(module: nn.Module, train: bool, is_nn: bool) -> Callable[[], None]:
        def run() -> None:
            xp = padded.detach().requires_grad_(train)
            with torch.set_grad_enabled(train):
                if is_nn:
                    out = module(xp, xp, xp, key_padding_mask=kpm, need_weights=False)[0]
                else:
                    out = module(xp, key_padding_mask=kpm, need_weights=False)[0]
                if train:
                    out.sum().backward()

        return run

    useful = sum(n * n for n in lengths) / (B * Lmax * Lmax)
    print(
        f"threads {args.threads}; B={B} lengths {lengths[0]}..{lengths[-1]} (T={T}, max {Lmax}); "
        f"E={E}, H={H}; float32; useful fraction of the padded attention "
        f"sum L^2 / (B max L^2) = {useful:.2f}"
    )
    print(
        "| mode | packed ms | padded mhsa ms | padded torch ms "
        "| packed vs padded mhsa | packed vs padded torch |"
    )
    print("|---|---|---|---|---|---|")
    for train in (False, True):
        mod.train(train)
        ref.train(train)
        packed = median_ms(packed_step(train), args.repeats)
        pad_mhsa = median_ms(padded_step(mod, train, False), args.repeats)
        pad_torch = (
            float("nan")
            if args.no_torch
            else median_ms(padded_step(ref, train, True), args.repeats)
        )
        mode = "train fwd+bwd" if train else "inference fwd"
        print(
            f"| {mode} | {packed:.1f} | {pad_mhsa:.1f} | {pad_torch:.1f} "
            f"| **{pad_mhsa / packed:.2f}x** | **{pad_torch / packed:.2f}x** |"
        )


if __name__ == "__main__":
    main()
