"""Benchmark KV-cache decoding: tokens/s of MultiheadSelfAttention.decode against a full forward.

For each prefix length P, a cache is filled with a P-token prompt, then single tokens are
decoded one at a time (each attends to everything before it: O(P*E + E^2) per token). The
alternative without a cache produces the same row by a causal forward over the whole prefix of
P + 1 tokens for every new token (O(P^2*E)). Both run in eval mode under torch.no_grad with the
thread count set explicitly; times are medians. Each row also gives the largest difference
between the decoded rows and the full forward's rows, as a check that both compute the same.

Writes bench_decode.csv and bench_decode.md to --out (scripts/bench.py measures everything else).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

import mhsa

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class DecodeRow:
    dtype: str
    N: int
    P: int
    E: int
    H: int
    decode_ms_per_token: float
    forward_ms_per_token: float
    decode_tokens_per_s: float
    forward_tokens_per_s: float
    speedup: float
    max_abs_diff: float


def bench_prefix(
    P: int, N: int, E: int, H: int, dtype: torch.dtype, tokens: int, reps: int
) -> DecodeRow:
    """Times ``tokens`` single-token decode steps after a ``P``-token prompt, and full causal
    forwards over ``P + 1`` tokens (the cost of one token without a cache)."""
    torch.manual_seed(0)
    attn = mhsa.MultiheadSelfAttention(E, H, batch_first=True, dtype=dtype).eval()
    x = torch.randn(N, P + tokens, E, dtype=dtype)
    with torch.no_grad():
        decode_seconds: list[float] = []
        outputs: list[torch.Tensor] = []
        for rep in range(reps):
            cache = attn.new_kv_cache(N, P + tokens)
            attn.decode(x[:, :P], cache)
            for i in range(P, P + tokens):
                start = time.perf_counter()
                out = attn.decode(x[:, i : i + 1], cache)
                decode_seconds.append(time.perf_counter() - start)
                if rep == 0:
                    outputs.append(out)
        forward_seconds: list[float] = []
        prefix = x[:, : P + 1]
        attn(prefix, is_causal=True, need_weights=False)  # warm-up
        for _ in range(reps):
            start = time.perf_counter()
            attn(prefix, is_causal=True, need_weights=False)
            forward_seconds.append(time.perf_counter() - start)
        reference = attn(x, is_causal=True, need_weights=False)[0][:, P:]
    diff = (torch.cat(outputs, dim=1).double() - reference.double()).abs().max().item()
    decode_s = statistics.median(decode_seconds)
    forward_s = statistics.median(forward_seconds)
    return DecodeRow(
        dtype=str(dtype).replace("torch.", ""),
        N=N,
        P=P,
        E=E,
        H=H,
        decode_ms_per_token=decode_s * 1e3,
        forward_ms_per_token=forward_s * 1e3,
        decode_tokens_per_s=N / decode_s,
        forward_tokens_per_s=N / forward_s,
        speedup=forward_s / decode_s,
        max_abs_diff=diff,
    )


def write_outputs(rows: list[DecodeRow], out: Path, threads: int) -> str:
    """Writes the CSV and the markdown table; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_decode.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(DecodeRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    lines = [
        f"KV-cache decoding, one new token per step, {threads} thread(s), "
        f"torch {torch.__version__}:",
        "",
        "| dtype | N | prefix P | E | H | decode (cache) tokens/s "
        "| full causal forward per token, tokens/s | speedup | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dtype} | {r.N} | {r.P} | {r.E} | {r.H} | {r.decode_tokens_per_s:.0f} "
            f"({r.decode_ms_per_token:.2f} ms) | {r.forward_tokens_per_s:.1f} "
            f"({r.forward_ms_per_token:.1f} ms) | {r.speedup:.0f}x | {r.max_abs_diff:.1e} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "bench_decode.md").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", default="512,4096", help="prefix lengths P, comma-separated")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together (N)")
    parser.add_argument("--embed-dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument(
        "--dtypes", default="float32", help=f"comma-separated, of {', '.join(DTYPES)}"
    )
    parser.add_argument("--tokens", type=int, default=32, help="decoded tokens per repeat")
    parser.add_argument("--reps", type=int, default=3, help="repeats (decode runs, full forwards)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dtype_name in args.dtypes.split(","):
        for P in (int(p) for p in args.prefixes.split(",")):
            row = bench_prefix(
                P,
                args.batch,
                args.embed_dim,
                args.heads,
                DTYPES[dtype_name],
                args.tokens,
                args.reps,
            )
            print(row, flush=True)
            rows.append(row)
    print(write_outputs(rows, args.out, torch.get_num_threads()))


if __name__ == "__main__":
    main()
