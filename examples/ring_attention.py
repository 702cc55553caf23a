"""Context-parallel training with mhsa's ring self-attention, one sequence split over the ranks.

    torchrun --nproc_per_node 4 examples/ring_attention.py

Every rank holds a quarter of the sequence (zigzag split, so that causal work is even), trains
the attention for a few steps on its slice, then checks the gathered output against one process
on the full sequence. tests/python/test_distributed.py runs it with 2 ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import mhsa
from mhsa.distributed import (
    ContextParallelSelfAttention,
    all_reduce_gradients,
    shard_sequence,
    unshard_sequence,
)


def main() -> None:
    """Trains, then compares with one process; raises if the results differ."""
    dist.init_process_group("gloo")  # torchrun provides rank, world size and address
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same weights, data and dropout seeds on every rank
    attn = mhsa.MultiheadSelfAttention(64, 4, dropout=0.1, batch_first=True)
    ring = ContextParallelSelfAttention(attn, load_balance=True)  # shares attn's parameters
    optimizer = torch.optim.SGD(attn.parameters(), lr=0.5)

    x = torch.randn(2, 1024, 64)  # the full sequence, L = 1024
    target = torch.randn(2, 1024, 64)
    x_local = shard_sequence(x, load_balance=True)  # (2, 1024 / P, 64)
    target_local = shard_sequence(target, load_balance=True)
    for step in range(3):
        optimizer.zero_grad()
        out_local = ring(x_local, is_causal=True)
        # This rank's share of the mean squared error over the full sequence.
        loss = (out_local - target_local).square().sum() / target.numel()
        loss.backward()
        all_reduce_gradients(attn)  # sum of the ranks' contributions: the full loss's gradient
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            print(f"step {step}: loss {total.item():.5f}")

    attn.eval()
    with torch.no_grad():
        out = unshard_sequence(ring(x_local, is_causal=True), load_balance=True)
        reference, _ = attn(x, is_causal=True, need_weights=False)  # one process, full sequence
    if rank == 0:
        print(
            f"ring attention on {dist.get_world_size()} ranks vs one process: max difference "
            f"{(out - reference).abs().max().item():.2e}"
        )
    torch.testing.assert_close(out, reference)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
