"""Benchmark mhsa against torch.nn.MultiheadAttention in the same process.

Times forward, backward and forward+backward (training mode), interleaving the two
implementations, after a time-based warm-up, as the median of repeats, with the thread count
set explicitly. Also measures the machine's GEMM rate (torch.mm at 2048^3 per dtype) so every row
shows GFLOP/s and its share of that rate, no-grad inference against nn.MultiheadAttention's
fast path, and the peak memory of one forward+backward step (fresh process per measurement).

Writes bench.csv, bench.md (the README's performance table) and speedup.png to --out.
--sdpa times mhsa.scaled_dot_product_attention against torch.nn.functional's instead (grouped-
query attention, a sliding window) and mhsa.MultiheadAttention's cross-attention against
nn.MultiheadAttention, and writes sdpa.md.
Speed is never asserted in tests; this script is the only place it is measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import mhsa
from mhsa._cpu_info import cpu_description, cpu_model_and_flags

FULL_SHAPES = [
    (8, 128, 512, 8),
    (4, 512, 512, 8),
    (1, 2048, 512, 8),
    (1, 4096, 1024, 16),
    (1, 8192, 512, 8),
]
QUICK_SHAPES = [(8, 128, 512, 8), (4, 512, 512, 8), (1, 2048, 512, 8)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What an AVX2-only CPU (the project's AMD EPYC machines) gives both sides, on a CPU that has more:
# ATen's AVX2 kernels and MKL's AVX2 code for torch, oneDNN capped at AVX2 (float32 micro-kernels
# only, as there), mhsa's AVX2 kernel copy and float32 compute for bfloat16 (no AVX512-BF16).
# Read at start-up by every library, hence a fresh process (--emulate-avx2).
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MHSA_CPU_CAPABILITY": "avx2",
    "MHSA_BF16_COMPUTE": "fp32",
}


def emulation_text() -> str:
    """The AVX2 emulation in force, for the report header ("" when none)."""
    if all(os.environ.get(k) == v for k, v in AVX2_ENV.items()):
        return (
            "Emulating an AVX2-only CPU ("
            + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
            + "). "
        )
    return ""


# Attention-sized tiles: the scores (128 queries x 512 keys, head dimension 64) and the context
# (128 x 64 over 512 keys), the two products of the forward's inner loop.
ENGINE_TILES = [(128, 512, 64), (128, 64, 512)]


def tile_rate(dtype: torch.dtype) -> float:
    """One thread's GFLOP/s of mhsa's tile GEMM engine on the attention-sized tiles (harmonic
    mean of the two shapes, each timed for 0.3 s)."""
    rates = [torch.ops.mhsa._tile_gemm_rate(dtype, m, n, k, 0.3) for m, n, k in ENGINE_TILES]
    return len(rates) / sum(1.0 / r for r in rates)


def torch_gemm_library() -> str:
    """torch's GEMM library (from torch.__config__.show()) and the CPU vendor, e.g. "torch GEMMs:
    MKL (float32), oneDNN (bfloat16); CPU vendor AuthenticAMD"."""
    config = torch.__config__.show()
    blas = "unknown"
    for part in config.replace(",", " ").split():
        if part.startswith("BLAS_INFO="):
            blas = part.split("=", 1)[1]
    names = {"mkl": "MKL", "open": "OpenBLAS", "openblas": "OpenBLAS", "accelerate": "Accelerate"}
    vendor = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    onednn = "oneDNN" if "MKL-DNN" in config or "oneDNN" in config else "no oneDNN"
    return (
        f"torch GEMMs: {names.get(blas, blas)} (float32), {onednn} (bfloat16, float16); "
        f"CPU vendor {vendor}"
    )


def engine_warning_text() -> str:
    """A loud mark for a run whose tiles are not on the micro-kernels this CPU has: the portable
    loops on an x86 CPU with AVX2+FMA, or a probe the CPU's flags promise that failed ("" when
    neither)."""
    info = torch.ops.mhsa._backend_info()
    flags = cpu_model_and_flags()[1]
    marks = []
    if "gemm=portable-loops" in info and {"avx2", "fma"} <= flags:
        marks.append("mhsa ran on the PORTABLE LOOPS on a CPU that has micro-kernels")
    if "probe-failures=" in info:
        marks.append("a micro-kernel probe FAILED (see probe-failures above)")
    return "".join(f"**WARNING: {m}.** " for m in marks)


@dataclass
class Row:
    mode: str  # "train" or "inference"
    dtype: str
    N: int
    L: int
    E: int
    H: int
    need_weights: bool
    dropout: float
    mhsa_fwd_ms: float
    torch_fwd_ms: float
    mhsa_bwd_ms: float
    torch_bwd_ms: float
    mhsa_step_ms: float
    torch_step_ms: float
    speedup: float
    mhsa_gflops: float
    gemm_pct: float
    # torch.mm's GFLOP/s in the row's dtype, timed interleaved with the row's steps (see
    # row_gemm): the machine's speed moves by 10-20% within a run on a shared virtual machine,
    # so the percentage and the ceiling use the rate measured alongside the row.
    gemm_rate: float = float("nan")
    # mhsa's GFLOP/s as a share of its own tile engine's rate on an attention-sized tile times
    # the thread count (see tile_rate): carries from one CPU to another.
    engine_pct: float = float("nan")
    mhsa_peak_mib: float = float("nan")
    torch_peak_mib: float = float("nan")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def interleaved(
    fns: list[Callable[[], None]], warmup_s: float, min_reps: int, min_s: float
) -> list[list[float]]:
    """Runs each function in turn (ABAB...), after a time-based warm-up; returns seconds per call."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(samples[0]) < min_reps or time.perf_counter() - start < min_s:
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return samples


ROW_GEMM_SIZE = 1024


def row_gemm(dtype_name: str, rates: dict[str, float]) -> tuple[Callable[[], None], float] | None:
    """torch.mm at ROW_GEMM_SIZE^3 in the dtype, and its FLOPs, to time alongside a row; None
    where the dtype has no native GEMM (the start-up rate says so, see gemm_pct_text)."""
    if rates.get(dtype_name, 0.0) < 0.1 * max(rates.values()):
        return None
    n = ROW_GEMM_SIZE
    a = torch.randn(n, n, dtype=DTYPES[dtype_name])
    b = torch.randn(n, n, dtype=DTYPES[dtype_name])
    return (lambda: torch.mm(a, b), 2.0 * n**3)


def timed_with_gemm(
    fns: list[Callable[[], None]], gemm, args: argparse.Namespace
) -> tuple[list[list[float]], float]:
    """interleaved(fns + [the GEMM]): the functions' samples and the GEMM's GFLOP/s (nan without
    one)."""
    if gemm is None:
        return interleaved(fns, args.warmup, args.reps, args.min_time), float("nan")
    samples = interleaved([*fns, gemm[0]], args.warmup, args.reps, args.min_time)
    return samples[:-1], gemm[1] / statistics.median(samples[-1]) / 1e9


def gemm_pct_text(row: Row, rates: dict[str, float]) -> str:
    """The row's GFLOP/s as a percentage of its dtype's GEMM rate, or "-" where that rate is
    below a tenth of the fastest dtype's: torch.mm then runs emulated kernels (float16 on CPUs
    without AVX512-FP16/AMX-FP16), and a percentage of it says nothing about the machine."""
    if rates.get(row.dtype, 0.0) < 0.1 * max(rates.values()):
        return "- (no native GEMM)"
    return f"{row.gemm_pct:.0f}%"


def ceiling_text(row: Row, rates: dict[str, float]) -> str:
    """The speedup mhsa would have if it ran the row's useful FLOPs (no recompute) at its dtype's
    GEMM rate: torch's time divided by that ideal time. A target above it cannot be met on this
    machine by any kernel that computes the same FLOPs."""
    if rates.get(row.dtype, 0.0) < 0.1 * max(rates.values()) or row.gemm_pct <= 0:
        return "-"
    return f"{row.speedup * 100 / row.gemm_pct:.2f}x"


def gemm_rate(dtype: torch.dtype, size: int = 2048) -> float:
    """GFLOP/s of torch.mm at size^3 in dtype, median of repeats. A dtype that torch.mm runs
    below 20 GFLOP/s at 512^3 (emulated 16-bit GEMMs on CPUs without their instructions, where a
    2048^3 product takes minutes) is reported at that size."""
    for n in (512, size):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up
        (times,) = interleaved(
            [lambda a=a, b=b: torch.mm(a, b)], warmup_s=0.0, min_reps=3, min_s=0.0
        )
        rate = 2 * n**3 / statistics.median(times) / 1e9
        if rate < 20.0:
            break
    return rate


def make_pair(E: int, H: int, dropout: float, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, dropout=dropout, batch_first=True, dtype=dtype)
    ours = mhsa.MultiheadSelfAttention.from_torch(ref)
    return ours, ref


def step_fns(
    module: nn.Module, x: torch.Tensor, need_weights: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    def forward() -> None:
        module(x, x, x, need_weights=need_weights)

    def step() -> None:
        out, w = module(x, x, x, need_weights=need_weights)
        loss = out.float().sum()
        if w is not None:
            loss = loss + w.float().sum()
        loss.backward()

    return forward, step


def bench_train(
    N: int,
    L: int,
    E: int,
    H: int,
    dtype_name: str,
    need_weights: bool,
    dropout: float,
    args: argparse.Namespace,
    rates: dict[str, float],
) -> Row:
    dtype = DTYPES[dtype_name]
    ours, ref = make_pair(E, H, dropout, dtype)
    ours.train()
    ref.train()
    x = torch.randn(N, L, E, dtype=dtype, requires_grad=True)
    o_fwd, o_step = step_fns(ours, x, need_weights)
    r_fwd, r_step = step_fns(ref, x, need_weights)
    fwd = interleaved([o_fwd, r_fwd], args.warmup, args.reps, args.min_time)
    step, rate = timed_with_gemm([o_step, r_step], row_gemm(dtype_name, rates), args)
    o_f, r_f = median_ms(fwd[0]), median_ms(fwd[1])
    o_s, r_s = median_ms(step[0]), median_ms(step[1])
    flops = 24 * N * L * E * E + 12 * N * L * L * E
    gflops = flops / (o_s / 1e3) / 1e9
    return Row(
        "train",
        dtype_name,
        N,
        L,
        E,
        H,
        need_weights,
        dropout,
        o_f,
        r_f,
        o_s - o_f,
        r_s - r_f,
        o_s,
        r_s,
        r_s / o_s,
        gflops,
        100 * gflops / (rate if rate == rate else rates[dtype_name]),
        rate,
    )


def bench_inference(
    N: int,
    L: int,
    E: int,
    H: int,
    dtype_name: str,
    args: argparse.Namespace,
    rates: dict[str, float],
) -> Row:
    dtype = DTYPES[dtype_name]
    ours, ref = make_pair(E, H, 0.0, dtype)
    ours.eval()
    ref.eval()
    x = torch.randn(N, L, E, dtype=dtype)

    def o() -> None:
        with torch.no_grad():
            ours(x, x, x, need_weights=False)

    def r() -> None:
        with torch.no_grad():
            ref(x, x, x, need_weights=False)  # eligible for the native fast path

    times, rate = timed_with_gemm([o, r], row_gemm(dtype_name, rates), args)
    o_f, r_f = median_ms(times[0]), median_ms(times[1])
    flops = 8 * N * L * E * E + 4 * N * L * L * E
    gflops = flops / (o_f / 1e3) / 1e9
    nan = float("nan")
    return Row(
        "inference",
        dtype_name,
        N,
        L,
        E,
        H,
        False,
        0.0,
        o_f,
        r_f,
        nan,
        nan,
        o_f,
        r_f,
        r_f / o_f,
        gflops,
        100 * gflops / (rate if rate == rate else rates[dtype_name]),
        rate,
    )


MEMORY_SNIPPET = r"""
import gc, sys, torch, mhsa
from torch import nn
impl, N, L, E, H, p, nw, dtype, threads = sys.argv[1:]
N, L, E, H, p, nw = int(N), int(L), int(E), int(H), float(p), nw == "1"
torch.set_num_threads(int(threads))
dt = getattr(torch, dtype)
torch.manual_seed(0)
ref = nn.MultiheadAttention(E, H, dropout=p, batch_first=True, dtype=dt)
m = mhsa.MultiheadSelfAttention.from_torch(ref) if impl == "mhsa" else ref
m.train()
x = torch.randn(N, L, E, dtype=dt, requires_grad=True)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
base = rss("VmRSS:")
out, w = m(x, x, x, need_weights=nw)
loss = out.float().sum() + (w.float().sum() if w is not None else 0)
loss.backward()
print(rss("VmHWM:") - base)
"""


def peak_memory_mib(
    impl: str,
    N: int,
    L: int,
    E: int,
    H: int,
    dropout: float,
    need_weights: bool,
    dtype: str,
    threads: int,
) -> float:
    """Peak RSS growth (MiB) over one forward+backward step, measured in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # large tensors go back to the OS
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SNIPPET,
            impl,
            str(N),
            str(L),
            str(E),
            str(H),
            str(dropout),
            "1" if need_weights else "0",
            dtype,
            str(threads),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def profile_step(N: int, L: int, E: int, H: int, dtype: torch.dtype) -> None:
    """Where one training step's time goes: torch.profiler's top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    mod, _ = make_pair(E, H, 0.0, dtype)  # (mhsa, nn.MultiheadAttention)
    x = torch.randn(N, L, E, dtype=dtype, requires_grad=True)
    forward, step = step_fns(mod, x, False)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"one mhsa training step, (N, L, E, H) = ({N}, {L}, {E}, {H}), {dtype}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


# --sdpa: (N, L, head dim) with 8 query heads over 2 key/value heads (enable_gqa=True), and the
# sliding-window row: (N, L, head dim, window) against torch given the equivalent band mask.
SDPA_HEADS = (8, 2)
SDPA_SHAPES = [(1, 2048, 64), (4, 512, 64)]
SDPA_WINDOW = (1, 8192, 64, (1024, 0))


def sdpa_row(
    name: str,
    dtype_name: str,
    N: int,
    L: int,
    D: int,
    ours: Callable[..., torch.Tensor],
    theirs: Callable[..., torch.Tensor],
    args: argparse.Namespace,
) -> str:
    """Forward and forward+backward (gradients of query, key and value) of both calls on the same
    inputs, interleaved; a markdown row, printed too."""
    H, H_kv = SDPA_HEADS
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(N, heads, L, D, generator=g).to(dtype).requires_grad_()
        for heads in (H, H_kv, H_kv)
    )

    def forward(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(q, k, v)

        return run

    def step(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        return lambda: torch.autograd.grad(fn(q, k, v).float().sum(), (q, k, v))

    fwd = interleaved([forward(ours), forward(theirs)], args.warmup, args.reps, args.min_time)
    steps = interleaved([step(ours), step(theirs)], args.warmup, args.reps, args.min_time)
    o_f, t_f = median_ms(fwd[0]), median_ms(fwd[1])
    o_s, t_s = median_ms(steps[0]), median_ms(steps[1])
    print(
        f"sdpa {name} {dtype_name} N={N} L={L} H={H} H_kv={H_kv} D={D}: fwd mhsa {o_f:.1f} ms, "
        f"torch {t_f:.1f} ms ({t_f / o_f:.2f}x); fwd+bwd mhsa {o_s:.1f} ms, torch {t_s:.1f} ms "
        f"({t_s / o_s:.2f}x)",
        flush=True,
    )
    return (
        f"| {name} | {dtype_name} | {N}, {L}, {H}/{H_kv}, {D} | {o_f:.1f} | {t_f:.1f} | "
        f"{t_f / o_f:.2f}x | {o_s:.1f} | {t_s:.1f} | **{t_s / o_s:.2f}x** |"
    )


# Cross-attention: (N, L queries, S keys, E, H), mhsa.MultiheadAttention against
# nn.MultiheadAttention (need_weights=False, as nn.TransformerDecoderLayer calls it).
CROSS_SHAPE = (4, 512, 2048, 512, 8)


def cross_attention_row(dtype_name: str, args: argparse.Namespace) -> str:
    """Forward and forward+backward (gradients of the query, the memory and every parameter) of
    mhsa.MultiheadAttention and nn.MultiheadAttention with the same weights, interleaved."""
    N, L, S, E, H = CROSS_SHAPE
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(E, H, batch_first=True, dtype=dtype)
    ours = mhsa.MultiheadAttention(E, H, batch_first=True, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(0)
    q = torch.randn(N, L, E, generator=g).to(dtype).requires_grad_()
    memory = torch.randn(N, S, E, generator=g).to(dtype).requires_grad_()

    def forward(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                module(q, memory, memory, need_weights=False)

        return run

    def step(module: nn.Module) -> Callable[[], None]:
        inputs = [q, memory, *module.parameters()]
        return lambda: torch.autograd.grad(
            module(q, memory, memory, need_weights=False)[0].float().sum(), inputs
        )

    fwd = interleaved([forward(ours), forward(theirs)], args.warmup, args.reps, args.min_time)
    steps = interleaved([step(ours), step(theirs)], args.warmup, args.reps, args.min_time)
    o_f, t_f = median_ms(fwd[0]), median_ms(fwd[1])
    o_s, t_s = median_ms(steps[0]), median_ms(steps[1])
    print(
        f"cross-attention {dtype_name} N={N} L={L} S={S} E={E} H={H}: fwd mhsa {o_f:.1f} ms, "
        f"nn {t_f:.1f} ms ({t_f / o_f:.2f}x); fwd+bwd mhsa {o_s:.1f} ms, nn {t_s:.1f} ms "
        f"({t_s / o_s:.2f}x)",
        flush=True,
    )
    return (
        f"| MultiheadAttention cross-attention vs nn | {dtype_name} | {N}, L={L} S={S}, {H}, "
        f"E={E} | {o_f:.1f} | {t_f:.1f} | {t_f / o_f:.2f}x | {o_s:.1f} | {t_s:.1f} | "
        f"**{t_s / o_s:.2f}x** |"
    )


def run_sdpa(args: argparse.Namespace, dtypes: list[str], header: str) -> None:
    """mhsa.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention
    (torch's default CPU path): grouped-query attention, not causal, in each dtype; then a
    sliding window (left 1024, causal side 0) at L = 8192 in float32, torch given the equivalent
    (L, L) bool band mask. Writes OUT/sdpa.md."""
    import torch.nn.functional as F

    lines = [
        header,
        "",
        "Forward (no_grad) and forward+backward (gradients of query, key and value); median ms of "
        "interleaved runs; ratio = torch / mhsa.",
        "",
        "| row | dtype | N, L, H/H_kv, D | mhsa fwd ms | torch fwd ms | fwd ratio | "
        "mhsa fwd+bwd ms | torch fwd+bwd ms | fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype_name in dtypes:
        for N, L, D in SDPA_SHAPES:
            lines.append(
                sdpa_row(
                    "GQA",
                    dtype_name,
                    N,
                    L,
                    D,
                    lambda q, k, v: mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                    args,
                )
            )
    N, L, D, window = SDPA_WINDOW
    i = torch.arange(L).unsqueeze(1)
    j = torch.arange(L).unsqueeze(0)
    band = (j <= i + window[1]) & (j >= i - window[0])  # True = may attend
    lines.append(
        sdpa_row(
            f"GQA, window {window}",
            "float32",
            N,
            L,
            D,
            lambda q, k, v: mhsa.scaled_dot_product_attention(
                q, k, v, enable_gqa=True, window_size=window
            ),
            lambda q, k, v: F.scaled_dot_product_attention(
                q, k, v, attn_mask=band, enable_gqa=True
            ),
            args,
        )
    )
    for dtype_name in dtypes:
        lines.append(cross_attention_row(dtype_name, args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sdpa.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/sdpa.md")


def write_outputs(
    rows: list[Row],
    rates: dict[str, float],
    engine_rates: dict[str, float],
    out: Path,
    threads: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    lines = [
        f"{emulation_text()}CPU: {cpu_description()}. mhsa: {torch.ops.mhsa._backend_info()}. "
        f"torch {torch.__version__}; {torch_gemm_library()}. {engine_warning_text()}",
        "",
        f"Threads: {threads}. GEMM rate at the start (torch.mm at 2048^3, at 512^3 where under "
        "20 GFLOP/s): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
        + f'. Each row\'s "GEMM GFLOP/s" is torch.mm at {ROW_GEMM_SIZE}^3 timed interleaved with '
        'that row\'s mhsa and torch calls; its ceiling and "% of GEMM" use that rate. '
        "\"% of engine\" is mhsa's GFLOP/s over its own tile engine's single-thread rate on "
        f"attention-sized tiles ({', '.join(f'{m}x{n}x{k}' for m, n, k in ENGINE_TILES)}) "
        "times the threads: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s per thread" for k, v in engine_rates.items())
        + ".",
        "",
        "| mode | dtype | N, L, E, H | weights | dropout | mhsa fwd ms | torch fwd ms | mhsa fwd+bwd ms | torch fwd+bwd ms | speedup | ceiling at GEMM rate | mhsa GFLOP/s | GEMM GFLOP/s | % of GEMM | % of engine | peak MiB mhsa / torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        step = "-" if r.mode == "inference" else f"{r.mhsa_step_ms:.1f}"
        tstep = "-" if r.mode == "inference" else f"{r.torch_step_ms:.1f}"
        mem = (
            ""
            if r.mhsa_peak_mib != r.mhsa_peak_mib
            else f"{r.mhsa_peak_mib:.0f} / {r.torch_peak_mib:.0f}"
        )
        lines.append(
            f"| {r.mode} | {r.dtype} | {r.N}, {r.L}, {r.E}, {r.H} | {r.need_weights} | {r.dropout} | "
            f"{r.mhsa_fwd_ms:.1f} | {r.torch_fwd_ms:.1f} | {step} | {tstep} | **{r.speedup:.2f}x** | "
            f"{ceiling_text(r, rates)} | {r.mhsa_gflops:.0f} | "
            f"{'-' if r.gemm_rate != r.gemm_rate else f'{r.gemm_rate:.0f}'} | "
            f"{gemm_pct_text(r, rates)} | "
            f"{'-' if r.engine_pct != r.engine_pct else f'{r.engine_pct:.0f}%'} | {mem} |"
        )
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        groups: dict[str, list[Row]] = {}
        for r in rows:
            label = f"{r.mode} {r.dtype} weights={r.need_weights} p={r.dropout}"
            groups.setdefault(label, []).append(r)
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: r.L)
            ax.plot([r.L for r in rs], [r.speedup for r in rs], marker="o", label=label)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("speedup vs nn.MultiheadAttention (x)")
        ax.set_title(f"mhsa vs torch {torch.__version__}, {threads} threads")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "speedup.png", dpi=110)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rows, about a minute")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per measurement")
    parser.add_argument("--reps", type=int, default=5, help="minimum repeats per measurement")
    parser.add_argument(
        "--min-time", type=float, default=1.0, help="minimum seconds per measurement"
    )
    parser.add_argument(
        "--dtypes", default=None, help="default float32,bfloat16,float16 (--sdpa: no float16)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument("--shapes", default=None, help="override, e.g. 4x512x512x8,1x2048x512x8")
    parser.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="run torch and mhsa as on an AVX2-only CPU (ISA caps, see AVX2_ENV), in a new process",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="time short inference calls and per-token decoding instead (medians over many "
        "calls, see scripts/bench_latency.py), write OUT/latency.md",
    )
    parser.add_argument(
        "--sdpa",
        action="store_true",
        help="time mhsa.scaled_dot_product_attention against torch's (8 query heads over 2 "
        "key/value heads, and a sliding window at L = 8192) instead, write OUT/sdpa.md; "
        "--dtypes picks the dtypes of the GQA rows",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print the top operators (torch.profiler) of one mhsa training step "
        "of the first shape and dtype, then stop",
    )
    args = parser.parse_args()
    if args.emulate_avx2 and not emulation_text():
        # The caps are read when the libraries load: start again with them set.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})

    torch.set_num_threads(args.threads)
    if args.quick:
        args.warmup, args.reps, args.min_time = 0.2, 3, 0.3
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.dtypes is None:
        args.dtypes = "float32,bfloat16" if args.sdpa else "float32,bfloat16,float16"
    dtypes = args.dtypes.split(",")
    print(
        f"{emulation_text()}CPU: {cpu_description()}; mhsa: {torch.ops.mhsa._backend_info()}",
        flush=True,
    )
    if engine_warning_text():
        print(engine_warning_text(), flush=True)
    print(
        f"torch {torch.__version__}, mhsa {mhsa.__version__}, threads {torch.get_num_threads()}",
        flush=True,
    )
    if args.profile:
        profile_step(*shapes[0], DTYPES[dtypes[0]])
        return
    if args.latency:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_latency import run_latency

        run_latency(
            args.out,
            f"{emulation_text()}CPU: {cpu_description()}. mhsa: "
            f"{torch.ops.mhsa._backend_info()}. torch {torch.__version__}. Threads: "
            f"{args.threads}. {engine_warning_text()}",
        )
        return
    if args.sdpa:
        run_sdpa(
            args,
            dtypes,
            f"{emulation_text()}CPU: {cpu_description()}. mhsa: "
            f"{torch.ops.mhsa._backend_info()}. torch {torch.__version__}. Threads: "
            f"{args.threads}. {engine_warning_text()}",
        )
        return
    rates = {d: gemm_rate(DTYPES[d]) for d in dtypes}
    print("GEMM rate: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()), flush=True)
    print(torch_gemm_library(), flush=True)
    # A 16-bit dtype computed in fp32 (its _backend_info mode says so) runs float32's tiles.
    info = torch.ops.mhsa._backend_info()
    engine_rates = {
        d: tile_rate(torch.float32 if f"{d}=fp32-compute" in info else DTYPES[d]) for d in dtypes
    }
    print(
        "mhsa tile engine, one thread, attention-sized tiles: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in engine_rates.items()),
        flush=True,
    )

    rows: list[Row] = []
    configs = (
        [(False, 0.0), (True, 0.0), (False, 0.1)] if not args.quick else [(False, 0.0), (True, 0.0)]
    )
    for dtype in dtypes:
        for N, L, E, H in shapes:
            for need_weights, dropout in configs:
                if need_weights and N * H * L * L * 4 * 3 > 8 * 2**30:
                    continue  # nn.MultiheadAttention would need > 8 GiB for its L x L tensors
                if dtype in ("bfloat16", "float16") and (need_weights or dropout or L > 2048):
                    continue  # keeps the 16-bit rows affordable where torch's GEMMs are emulated
                row = bench_train(N, L, E, H, dtype, need_weights, dropout, args, rates)
                row.engine_pct = 100 * row.mhsa_gflops / (args.threads * engine_rates[dtype])
                rows.append(row)
                print(
                    f"train {dtype} N={N} L={L} E={E} H={H} weights={need_weights} p={dropout}: "
                    f"mhsa {row.mhsa_step_ms:.1f} ms, torch {row.torch_step_ms:.1f} ms, "
                    f"speedup {row.speedup:.2f}x, {row.mhsa_gflops:.0f} GFLOP/s ({gemm_pct_text(row, rates)} of GEMM, "
                    f"{row.engine_pct:.0f}% of engine)",
                    flush=True,
                )
            if dtype in ("bfloat16", "float16") and L > 2048:
                continue
            row = bench_inference(N, L, E, H, dtype, args, rates)
            row.engine_pct = 100 * row.mhsa_gflops / (args.threads * engine_rates[dtype])
            rows.append(row)
            print(
                f"inference {dtype} N={N} L={L} E={E} H={H}: mhsa {row.mhsa_fwd_ms:.1f} ms, "
                f"torch {row.torch_fwd_ms:.1f} ms, speedup {row.speedup:.2f}x",
                flush=True,
            )
    if not args.no_memory:
        N, L, E, H = (1, 8192, 512, 8) if not args.quick else (1, 2048, 512, 8)
        for row in rows:
            if (
                (row.N, row.L, row.E, row.H) == (N, L, E, H)
                and row.mode == "train"
                and row.dtype == "float32"
                and not row.need_weights
            ):
                row.mhsa_peak_mib = peak_memory_mib(
                    "mhsa", N, L, E, H, row.dropout, False, "float32", args.threads
                )
                row.torch_peak_mib = peak_memory_mib(
                    "torch", N, L, E, H, row.dropout, False, "float32", args.threads
                )
                print(
                    f"peak memory fwd+bwd N={N} L={L} E={E} H={H} p={row.dropout}: mhsa {row.mhsa_peak_mib:.0f} MiB, "
                    f"torch {row.torch_peak_mib:.0f} MiB ({100 * row.mhsa_peak_mib / row.torch_peak_mib:.0f}%)",
                    flush=True,
                )
    write_outputs(rows, rates, engine_rates, args.out, args.threads)
    (args.out / "rates.json").write_text(json.dumps(rates))
    print(f"wrote {args.out}/bench.csv, bench.md, speedup.png")


if __name__ == "__main__":
    main()
