"""``mhsa.KVCache``: the keys and values of past tokens for KV-cache decoding.

No ``from __future__ import annotations`` here: TorchScript reads the field annotations of the
NamedTuple and needs them as types, not strings.
"""

from typing import NamedTuple

import torch
from torch import Tensor


class KVCache(NamedTuple):
    """Projected keys and values of the tokens decoded so far, and how many there are.

    Made by :meth:`mhsa.MultiheadSelfAttention.new_kv_cache` and filled in place by
    :meth:`mhsa.MultiheadSelfAttention.decode`; the tuple itself never changes, so it can be
    passed around (also in TorchScript, where it is a named tuple, and to C++ as a tuple).

    Attributes:
        key: ``(batch, num_heads, max_len, head_dim)``, the projected keys.
        value: ``(batch, num_heads, max_len, head_dim)``, the projected values.
        length: int64 tensor of shape ``()``: the number of tokens cached so far, the same for
            every sequence of the batch (``int(cache.length)`` reads it).
    """

    key: Tensor
    value: Tensor
    length: Tensor


def empty_kv_cache(
    batch_size: int,
    max_len: int,
    num_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> KVCache:
    """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
    if batch_size <= 0:
        raise ValueError("new_kv_cache: expected batch_size > 0, got " + str(batch_size))
    if max_len <= 0:
        raise ValueError("new_kv_cache: expected max_len > 0, got " + str(max_len))
    # Zeros, not empty: slots past `length` are never read, but a saved or printed cache should
    # not show leftover memory.
    key = torch.zeros([batch_size, num_heads, max_len, head_dim], dtype=dtype, device=device)
    value = torch.zeros([batch_size, num_heads, max_len, head_dim], dtype=dtype, device=device)
    length = torch.zeros([], dtype=torch.long, device=device)
    return KVCache(key, value, length)
