"""The demo's synthetic task: digit sequences whose targets need two kinds of attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

IGNORE = -100
"""Target value of positions that have no target (cross_entropy's ignore_index)."""

TASK_DESCRIPTION = (
    "sequences of 16 random digits; at every position i >= 1 predict "
    "(token[i-1] + number of 0s in token[0..i]) mod 10"
)


@dataclass(frozen=True)
class TaskConfig:
    """The synthetic task: digits, and per position (previous digit + zeros so far) mod 10."""

    vocab_size: int = 10
    seq_len: int = 16
    counted_token: int = 0


def make_batch(size: int, task: TaskConfig, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Draws ``size`` random sequences and their targets.

    Returns:
        ``(tokens, targets)``, both LongTensors ``(size, seq_len)``; position 0 has no previous
        token, so its target is ``IGNORE``.
    """
    tokens = torch.randint(0, task.vocab_size, (size, task.seq_len), generator=generator)
    zeros_so_far = (tokens == task.counted_token).long().cumsum(dim=1)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, 1:] = (tokens[:, :-1] + zeros_so_far[:, 1:]) % task.vocab_size
    return tokens, targets
