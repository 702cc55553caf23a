"""Benchmark of context-parallel ring self-attention (mhsa.distributed) on one machine.

For each world size P (default 1, 2, 4) spawns P ranks (gloo on 127.0.0.1, one thread each),
gives every rank its L/P slice of one sequence and measures one forward+backward step of
``mhsa.distributed.ContextParallelSelfAttention``: the peak RSS growth of each rank (per-rank
memory should fall as 1/P) and the wall time (slowest rank). For comparison it measures the
one-process operator (``mhsa.MultiheadSelfAttention`` on the full sequence) in a fresh process
with 1 thread and with P=2's thread count, 2.

The fair comparison for P = 2 is the one-process operator with 2 threads: both then use two
cores (two single-threaded ranks, or one process whose kernels split the work over two
threads), and both run the same fused kernels on the same L x L attention (the ring's blocks
are ``torch.ops.mhsa._attention_block_forward``/``_backward`` calls). The 1-thread row is what
one core does: on a quiet machine with two free cores both two-core rows are about half of it.
On a machine shared with other jobs the times are only comparable within one run.

    .venv/bin/python scripts/bench_distributed.py              # L = 32768, E = 64, H = 1
    .venv/bin/python scripts/bench_distributed.py --length 4096 --worlds 1,2
    .venv/bin/python scripts/bench_distributed.py --causal --load-balance --worlds 2

Speed is never asserted in tests; this script only measures and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Dict, List

import torch
import torch.distributed as dist

import mhsa


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> float:
    """Resets the peak RSS (VmHWM) to the current RSS and returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_mib("VmRSS:")


def _rank_main(rank: int, world: int, port: int, args: Dict, outdir: str) -> None:
    """One rank: a warm-up step, then one measured forward+backward on its slice."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=1800),
    )
    torch.manual_seed(0)
    attn = mhsa.MultiheadSelfAttention(args["embed"], args["heads"], batch_first=True)
    cp = mhsa.distributed.ContextParallelSelfAttention(attn, load_balance=args["load_balance"])
    # Warm-up at L = 4096: loads the code paths the measured step uses, so that their pages do
    # not count as the step's memory.
    warm = torch.randn(1, 4096 // world, args["embed"], requires_grad=True)
    cp(warm, is_causal=args["causal"]).sum().backward()
    local_len = args["length"] // world
    x = torch.randn(1, local_len, args["embed"], requires_grad=True)
    attn.zero_grad()
    dist.barrier()
    base = _reset_peak()
    start = time.perf_counter()
    cp(x, is_causal=args["causal"]).sum().backward()
    seconds = time.perf_counter() - start
    peak = _rss_mib("VmHWM:") - base
    Path(outdir, f"rank{rank}.json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ring(world: int, args: Dict) -> Dict[str, float]:
    """Spawns ``world`` ranks; returns the slowest rank's time and the largest per-rank peak."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as outdir:
        port = _free_port()
        procs = [
            context.Process(target=_rank_main, args=(r, world, port, args, outdir))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(
                f"ring benchmark with P={world} failed: exit codes {[p.exitcode for p in procs]}"
            )
        results = [json.loads(Path(outdir, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "seconds": max(r["seconds"] for r in results),
        "peak_mib": max(r["peak_mib"] for r in results),
    }


ONE_PROCESS_SNIPPET = """
import json, sys, time, torch, mhsa
length, embed, heads, causal, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
attn = mhsa.MultiheadSelfAttention(embed, heads, batch_first=True)
warm = torch.randn(1, 4096, embed, requires_grad=True)
attn(warm, need_weights=False, is_causal=bool(causal))[0].sum().backward()
x = torch.randn(1, length, embed, requires_grad=True)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
base = rss("VmRSS:")
start = time.perf_counter()
attn(x, need_weights=False, is_causal=bool(causal))[0].sum().backward()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": rss("VmHWM:") - base}))
"""


def run_one_process(threads: int, args: Dict) -> Dict[str, float]:
    """The one-process operator on the full sequence, in a fresh process."""
    command = [
        sys.executable,
        "-c",
        ONE_PROCESS_SNIPPET,
        str(args["length"]),
        str(args["embed"]),
        str(args["heads"]),
        str(int(args["causal"])),
        str(threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=32768, help="global sequence length L")
    parser.add_argument("--embed", type=int, default=64, help="embedding dimension E")
    parser.add_argument("--heads", type=int, default=1, help="number of heads H")
    parser.add_argument("--causal", action="store_true", help="causal attention")
    parser.add_argument(
        "--load-balance",
        action="store_true",
        help="the ring's zigzag split (even causal work over the ranks)",
    )
    parser.add_argument("--worlds", default="1,2,4", help="world sizes P, comma-separated")
    options = parser.parse_args()
    args = {
        "length": options.length,
        "embed": options.embed,
        "heads": options.heads,
        "causal": options.causal,
        "load_balance": options.load_balance,
    }
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned ranks
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large tensors go back to the OS when freed
    worlds: List[int] = [int(w) for w in options.worlds.split(",")]

    print(
        f"float32, N=1, L={options.length}, E={options.embed}, H={options.heads}, causal={options.causal}, "
        + ("load_balance=True, " if options.load_balance else "")
        + f"{os.cpu_count()} CPUs, one thread per rank",
        flush=True,
    )
    rows = []
    for threads in sorted({1, 2}):
        r = run_one_process(threads, args)
        print(
            f"one process, mhsa op, {threads} thread(s): {r['seconds']:.2f} s, peak {r['peak_mib']:.0f} MiB",
            flush=True,
        )
        rows.append((f"one process (mhsa op), {threads} thread{'s' if threads > 1 else ''}", r))
    for world in worlds:
        r = run_ring(world, args)
        print(
            f"ring P={world}: {r['seconds']:.2f} s, peak per rank {r['peak_mib']:.0f} MiB",
            flush=True,
        )
        rows.append((f"ring attention, P = {world} (1 thread per rank)", r))

    print()
    print(
        f"| L = {options.length}, E = {options.embed}, H = {options.heads}, float32, fwd+bwd | time s | peak MiB per rank |"
    )
    print("|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
