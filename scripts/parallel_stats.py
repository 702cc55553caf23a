"""How mhsa's work spreads over many threads, checked on a small machine.

Runs one forward+backward step of (N, L, E, H) with 16 and 64 intra-op threads (more threads
than this machine has cores is fine: the question is how many threads get work, not speed) and
prints, per parallel phase, how many distinct threads ran tasks and the load balance (the
busiest thread's task count over the mean). Needs MHSA_PARALLEL_STATS=1 in the environment
before torch starts, which this script sets for itself by re-running under it.

Usage: scripts/parallel_stats.py [--threads 16,64] [--shapes 1x2048x512x8,1x8192x1024x16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def measure(shape: str, threads: int) -> dict:
    code = f"""
import json, torch, mhsa
torch.set_num_threads({threads})
N, L, E, H = {tuple(int(v) for v in shape.split("x"))}
attn = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
x = torch.randn(N, L, E, requires_grad=True)
torch.ops.mhsa._parallel_stats()  # reset
out, _ = attn(x, need_weights=False)
out.sum().backward()
print(json.dumps(json.loads(torch.ops.mhsa._parallel_stats())))
"""
    env = dict(os.environ, MHSA_PARALLEL_STATS="1", OMP_NUM_THREADS=str(threads))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="16,64")
    parser.add_argument("--shapes", default="1x2048x512x8,1x8192x1024x16")
    args = parser.parse_args()
    print(
        "| (N, L, E, H) | threads | phase | threads with work | tasks | max/mean tasks per thread |"
    )
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            for phase, s in measure(shape, threads).items():
                print(
                    f"| ({shape.replace('x', ', ')}) | {threads} | {phase} | {s['threads']} | "
                    f"{s['tasks']} | {s['max_over_mean']:.2f} |"
                )


if __name__ == "__main__":
    main()
