"""Context-parallel ("ring") self-attention over ``torch.distributed``.

Each rank of a process group holds a contiguous slice of the sequence (or, with
``load_balance=True``, two slices in a zigzag split that evens out causal work). The input and
output projections run locally with mhsa's weights; the attention core passes key/value blocks
around the ring of ranks with point-to-point communication (``isend``/``irecv``), overlapped
with the computation on the block already at hand, and merges the partial results by their
per-row log-sum-exp. Backward passes the key/value blocks around once more together with their
accumulated gradients, which end on the rank that owns the block.

Only ``torch.distributed`` is used for communication, with no assumption about the backend
(gloo on CPU; NCCL works the same way). Nothing here runs at ``import mhsa``; the module is
imported on first use of ``mhsa.distributed``, and a process group is needed only when the
functions are called.

Dropout draws the very same random numbers as mhsa's single-process operator at the same seed:
the mask element of (batch n, head h, query i, key j) comes from the counter-based Philox-4x32-10
generator keyed by the *global* positions i and j, exactly as in mhsa's C++ kernels
(``csrc/cpu/attention_tile.h``), so a context-parallel run with dropout equals a one-process run.

Parameter gradients computed by :func:`ring_self_attention` are each rank's local contributions;
the gradient of a loss summed over the whole sequence is their sum over the group
(:func:`all_reduce_gradients`). A data-parallel wrapper such as ``DistributedDataParallel``
over the same group averages instead of summing, i.e. gives 1/P of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .modules import MultiheadSelfAttention

__all__ = [
    "ring_self_attention",
    "ContextParallelSelfAttention",
    "shard_sequence",
    "unshard_sequence",
    "all_reduce_gradients",
]

# Query rows handled at once inside a (query slice, key block) pair: bounds the score scratch to
# _QUERY_CHUNK x (block length) elements however long the slice is.
_QUERY_CHUNK = 128

_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Sequence layout: which global positions each rank holds.


@dataclass(frozen=True)
class _Segment:
    """A contiguous run of positions: local rows [local, local + length) are global positions
    [start, start + length)."""

    local: int
    start: int
    length: int


def _segments(rank: int, world: int, global_len: int, load_balance: bool) -> List[_Segment]:
    """The positions rank ``rank`` of ``world`` holds, as contiguous segments in local order."""
    if not load_balance:
        block = global_len // world
        return [_Segment(0, rank * block, block)]
    chunk = global_len // (2 * world)
    return [
        _Segment(0, rank * chunk, chunk),
        _Segment(chunk, (2 * world - 1 - rank) * chunk, chunk),
    ]


def _check_divisible(global_len: int, world: int, load_balance: bool) -> None:
    parts = 2 * world if load_balance else world
    if global_len % parts != 0:
        split = "zigzag split (load_balance=True)" if load_balance else "split"
        raise ValueError(
            f"mhsa.distributed: sequence length {global_len} must be divisible by {parts} for the "
            f"{split} over {world} ranks"
        )


def _group_info(group: Optional[dist.ProcessGroup]) -> Tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "mhsa.distributed: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group first (torchrun sets up the environment)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _global_rank(group: Optional[dist.ProcessGroup], group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def shard_sequence(
    x: Tensor,
    group: Optional[dist.ProcessGroup] = None,
    load_balance: bool = False,
    *,
    seq_dim: int = 1,
) -> Tensor:
    """This rank's slice of a full sequence, in the layout :func:`ring_self_attention` expects.

    Args:
        x: the full sequence, the same on every rank; the sequence runs along ``seq_dim``
            (1 for ``(N, L, E)``, 0 for ``(L, N, E)`` or unbatched ``(L, E)``).
        group: the context-parallel process group (default: the world).
        load_balance: zigzag split: the sequence is cut into 2P chunks and rank r holds chunks
            r and 2P-1-r, so that every rank does the same amount of causal work. Otherwise
            rank r holds positions r*L/P ... (r+1)*L/P - 1.
        seq_dim: the sequence dimension of ``x``.

    Returns:
        A new contiguous tensor with L/P positions along ``seq_dim``.
    """
    rank, world = _group_info(group)
    global_len = x.size(seq_dim)
    _check_divisible(global_len, world, load_balance)
    pieces = [
        x.narrow(seq_dim, s.start, s.length)
        for s in _segments(rank, world, global_len, load_balance)
    ]
    return torch.cat(pieces, dim=seq_dim) if len(pieces) > 1 else pieces[0].contiguous()


def unshard_sequence(
    x_local: Tensor,
    group: Optional[dist.ProcessGroup] = None,
    load_balance: bool = False,
    *,
    seq_dim: int = 1,
) -> Tensor:
    """Inverse of :func:`shard_sequence`: gathers every rank's slice into the full sequence.

    A collective (``all_gather``): every rank of ``group`` must call it, with slices of the same
    shape. The result is the same on every rank. It is not differentiable (use it on outputs,
    e.g. for evaluation; train on the local slices).
    """
    _, world = _group_info(group)
    x_local = x_local.detach().contiguous()
    gathered = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(gathered, x_local, group=group)
    local_len = x_local.size(seq_dim)
    global_len = local_len * world
    shape = list(x_local.shape)
    shape[seq_dim] = global_len
    full = x_local.new_empty(shape)
    for r, part in enumerate(gathered):
        for s in _segments(r, world, global_len, load_balance):
            full.narrow(seq_dim, s.start, s.length).copy_(part.narrow(seq_dim, s.local, s.length))
    return full


def all_reduce_gradients(
    parameters: Union[nn.Module, Iterable[Tensor]], group: Optional[dist.ProcessGroup] = None
) -> None:
    """Sums the ``.grad`` of ``parameters`` over ``group`` in place.

    After a backward pass through :func:`ring_self_attention` each rank holds its local
    contribution to the parameter gradients; their sum is the gradient of the loss summed over
    the whole sequence. Every rank must call this with the same parameters in the same order;
    parameters without a gradient are skipped (on every rank alike).
    """
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)


# ---------------------------------------------------------------------------------------------
# Dropout masks: Philox-4x32-10 keyed by global positions, bit-exact with mhsa's C++ kernels.


def _mulhilo(a: Tensor, multiplier: int) -> Tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of a * multiplier for 32-bit values a, without int64 overflow."""
    product_low = a * (multiplier & 0xFFFF)  # < 2^48
    product_high = a * (multiplier >> 16)  # < 2^48
    low_sum = product_low + ((product_high & 0xFFFF) << 16)  # < 2^49
    return (product_high >> 16) + (low_sum >> 32), low_sum & _MASK32


def _philox(counter: Tensor, seed: int) -> List[Tensor]:
    """The four 32-bit output words of Philox-4x32-10 at 64-bit ``counter`` (int64, >= 0) under
    the 64-bit key ``seed``, as int64 tensors."""
    c0 = counter & _MASK32
    c1 = counter >> 32
    c2 = torch.zeros_like(counter)
    c3 = torch.zeros_like(counter)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return [c0, c1, c2, c3]


@dataclass(frozen=True)
class _Dropout:
    p: float
    seed: int  # unsigned 64-bit key


def _dropout_factors(
    drop: _Dropout,
    batch: int,
    heads: int,
    global_len: int,
    rows: Tensor,
    key_start: int,
    key_len: int,
    dtype: torch.dtype,
) -> Tensor:
    """keep / (1 - p) or 0 for every (n, h, query row in ``rows``, key in [key_start,
    key_start + key_len)), shape (N, H, len(rows), key_len); the same values as mhsa's
    ``dropout_factors`` draws for those global positions."""
    groups_per_row = (global_len + 3) // 4
    first_group = key_start // 4
    n_groups = (key_start + key_len - 1) // 4 - first_group + 1
    device = rows.device
    head_index = torch.arange(batch * heads, dtype=torch.int64, device=device).view(
        batch, heads, 1, 1
    )
    row_base = (head_index * global_len + rows.view(1, 1, -1, 1)) * groups_per_row
    counter = row_base + (
        first_group + torch.arange(n_groups, dtype=torch.int64, device=device)
    ).view(1, 1, 1, -1)
    words = torch.stack(_philox(counter, drop.seed), dim=-1).flatten(
        -2
    )  # word j % 4 of group j // 4
    offset = key_start - 4 * first_group
    uniform = words[..., offset : offset + key_len] >> 8  # 24-bit uniforms
    threshold = int(min(drop.p, 1.0) * 16777216.0)
    scale = 0.0 if drop.p >= 1.0 else 1.0 / (1.0 - drop.p)
    return (uniform >= threshold).to(dtype) * scale


def _draw_seed(group: Optional[dist.ProcessGroup], device: torch.device) -> int:
    """Draws the dropout key as mhsa's operator does (one ``random64`` from torch's default CPU
    generator) and makes every rank use the value of the group's first rank. ``device``: where
    the backend communicates (the input's device)."""
    seed = torch.empty((1,), dtype=torch.int64).random_(-(2**63), None).to(device)
    dist.broadcast(seed, src=_global_rank(group, 0), group=group)
    return int(seed.item()) & 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The attention core: blocks of (local queries) x (one rank's keys/values).


@dataclass(frozen=True)
class _Ring:
    group: Optional[dist.ProcessGroup]
    rank: int
    world: int
    global_len: int
    load_balance: bool

    @property
    def next_rank(self) -> int:
        return _global_rank(self.group, (self.rank + 1) % self.world)

    @property
    def prev_rank(self) -> int:
        return _global_rank(self.group, (self.rank - 1) % self.world)

    def segments(self, rank: int) -> List[_Segment]:
        return _segments(rank, self.world, self.global_len, self.load_balance)

    def exchange(self, send: Tensor, recv: Tensor) -> List[dist.Work]:
        """Starts sending ``send`` to the next rank and receiving ``recv`` from the previous."""
        ops = [
            dist.P2POp(dist.isend, send, self.next_rank, self.group),
            dist.P2POp(dist.irecv, recv, self.prev_rank, self.group),
        ]
        return dist.batch_isend_irecv(ops)


def _visible(q_start: int, q_len: int, k_start: int, k_len: int, is_causal: bool) -> Optional[bool]:
    """None: no query of the rows sees any key of the block (skip it); False: every query sees
    every key; True: a causal mask is needed."""
    if not is_causal or k_start + k_len - 1 <= q_start:
        return False
    if k_start > q_start + q_len - 1:
        return None
    return True


def _pairs(ring: _Ring, q_rank: int, k_rank: int, is_causal: bool):
    """(first local row, its global position, row count, key segment, needs a causal mask) for
    every query chunk of ``q_rank`` against every key segment of ``k_rank`` that it can see."""
    for qs in ring.segments(q_rank):
        for c0 in range(0, qs.length, _QUERY_CHUNK):
            c_len = min(_QUERY_CHUNK, qs.length - c0)
            q_start = qs.start + c0
            for ks in ring.segments(k_rank):
                masked = _visible(q_start, c_len, ks.start, ks.length, is_causal)
                if masked is not None:
                    yield qs.local + c0, q_start, c_len, ks, masked


def _scores(q: Tensor, k: Tensor, q_start: int, k_start: int, masked: bool) -> Tensor:
    """Scores of (already scaled) queries against keys, with the causal mask if ``masked``."""
    s = torch.matmul(q, k.transpose(-1, -2))
    if masked:
        q_pos = torch.arange(q_start, q_start + q.size(-2), device=q.device).view(-1, 1)
        k_pos = torch.arange(k_start, k_start + k.size(-2), device=q.device).view(1, -1)
        s.masked_fill_(k_pos > q_pos, float("-inf"))
    return s


def _forward_block(
    ring: _Ring,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_rank: int,
    out: Tensor,
    lse: Tensor,
    is_causal: bool,
    drop: Optional[_Dropout],
) -> None:
    """Merges the attention of the local (scaled) queries to ``k_rank``'s keys/values into
    (out, lse)."""
    batch, heads = q.shape[0], q.shape[1]
    for row, q_start, rows, ks, masked in _pairs(ring, ring.rank, k_rank, is_causal):
        sl = slice(ks.local, ks.local + ks.length)
        s = _scores(q[:, :, row : row + rows], k[:, :, sl], q_start, ks.start, masked)
        row_max = s.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
        p = s.sub_(row_max).exp_()  # unnormalized probabilities, in place of the scores
        row_sum = p.sum(dim=-1, keepdim=True)
        block_lse = (row_max + row_sum.log()).squeeze(-1)  # -inf for a row that sees no key
        if drop is not None:
            positions = torch.arange(q_start, q_start + rows, device=q.device)
            p.mul_(
                _dropout_factors(
                    drop, batch, heads, ring.global_len, positions, ks.start, ks.length, p.dtype
                )
            )
        block_out = torch.matmul(p, v[:, :, sl]).div_(
            torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)
        )
        old_lse = lse[:, :, row : row + rows]
        new_lse = torch.logaddexp(old_lse, block_lse)
        safe = torch.where(torch.isinf(new_lse), torch.zeros_like(new_lse), new_lse)
        out_c = out[:, :, row : row + rows]
        out_c.mul_(torch.exp(old_lse - safe).unsqueeze(-1))
        out_c.add_(block_out.mul_(torch.exp(block_lse - safe).unsqueeze(-1)))
        old_lse.copy_(new_lse)


def _backward_block(
    ring: _Ring,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_rank: int,
    grad_out: Tensor,
    lse: Tensor,
    delta: Tensor,
    grad_q: Tensor,
    grad_k: Tensor,
    grad_v: Tensor,
    is_causal: bool,
    drop: Optional[_Dropout],
    scale: float,
) -> None:
    """Adds the gradients through the local (scaled) queries x ``k_rank``'s keys/values block;
    ``grad_q`` is with respect to the unscaled queries."""
    batch, heads = q.shape[0], q.shape[1]
    for row, q_start, rows, ks, masked in _pairs(ring, ring.rank, k_rank, is_causal):
        q_c = q[:, :, row : row + rows]
        sl = slice(ks.local, ks.local + ks.length)
        k_s, v_s = k[:, :, sl], v[:, :, sl]
        d_out = grad_out[:, :, row : row + rows]
        s = _scores(q_c, k_s, q_start, ks.start, masked)
        p = s.sub_(lse[:, :, row : row + rows].unsqueeze(-1)).exp_()  # in place of the scores
        d_p = torch.matmul(d_out, v_s.transpose(-1, -2))
        if drop is not None:
            positions = torch.arange(q_start, q_start + rows, device=q.device)
            factors = _dropout_factors(
                drop, batch, heads, ring.global_len, positions, ks.start, ks.length, p.dtype
            )
            grad_v[:, :, sl] += torch.matmul((p * factors).transpose(-1, -2), d_out)
            d_p.mul_(factors)
        else:
            grad_v[:, :, sl] += torch.matmul(p.transpose(-1, -2), d_out)
        d_s = d_p.sub_(delta[:, :, row : row + rows].unsqueeze(-1)).mul_(p)
        grad_q[:, :, row : row + rows] += torch.matmul(d_s, k_s).mul_(scale)
        grad_k[:, :, sl] += torch.matmul(d_s.transpose(-1, -2), q_c)


class _RingAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D)) v over the whole ring; q, k, v are the local (N, H, L/P, D)."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, ring: _Ring, is_causal: bool, drop: Optional[_Dropout]
    ) -> Tensor:
        scale = 1.0 / math.sqrt(q.size(-1))
        q_scaled = q * scale
        kv = torch.stack([k, v])
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        for step in range(ring.world):
            works: List[dist.Work] = []
            if step < ring.world - 1:
                incoming = torch.empty_like(kv)
                works = ring.exchange(kv, incoming)
            _forward_block(
                ring,
                q_scaled,
                kv[0],
                kv[1],
                (ring.rank - step) % ring.world,
                out,
                lse,
                is_causal,
                drop,
            )
            for work in works:
                work.wait()
            if works:
                kv = incoming
        ctx.save_for_backward(q_scaled, k, v, out, lse)
        ctx.ring, ctx.is_causal, ctx.drop, ctx.scale = ring, is_causal, drop, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_scaled, k, v, out, lse = ctx.saved_tensors
        ring: _Ring = ctx.ring
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1)
        grad_q = torch.zeros_like(q_scaled)
        kv = torch.stack([k, v])
        sends: List[Tuple[dist.Work, Tensor]] = []  # (work, the tensor it sends: kept alive)
        # Message order between two neighbours is the same on both sides (kv_0, dkv_0, kv_1,
        # dkv_1, ...), as backends that match point-to-point messages by order require.
        for step in range(ring.world):
            grad_kv = torch.zeros_like(kv)
            received: Optional[Tensor] = None
            grad_work: Optional[dist.Work] = None
            if step > 0:
                received = torch.empty_like(kv)
                grad_work = dist.irecv(received, ring.prev_rank, group=ring.group)
            works: List[dist.Work] = []
            if step < ring.world - 1:
                incoming = torch.empty_like(kv)
                works = ring.exchange(kv, incoming)
            _backward_block(
                ring,
                q_scaled,
                kv[0],
                kv[1],
                (ring.rank - step) % ring.world,
                grad_out,
                lse,
                delta,
                grad_q,
                grad_kv[0],
                grad_kv[1],
                ctx.is_causal,
                ctx.drop,
                ctx.scale,
            )
            if grad_work is not None and received is not None:
                grad_work.wait()
                grad_kv += received
            if ring.world > 1:
                sends.append((dist.isend(grad_kv, ring.next_rank, group=ring.group), grad_kv))
            for work in works:
                work.wait()
            if works:
                kv = incoming
        if ring.world > 1:
            # The accumulated gradient of this rank's own block comes back from the previous.
            grad_kv = torch.empty_like(kv)
            dist.irecv(grad_kv, ring.prev_rank, group=ring.group).wait()
            for work, _ in sends:
                work.wait()
        return grad_q, grad_kv[0], grad_kv[1], None, None, None


# ---------------------------------------------------------------------------------------------
# Public entry points.


def _check_same_everywhere(ring: _Ring, x: Tensor, description: Tuple[int, ...]) -> None:
    """All-gathers (shape, settings) and raises the same clear error on every rank if they
    differ, instead of letting mismatched messages hang or corrupt the ring."""
    info = [x.dim(), *x.shape, *([0] * (3 - x.dim())), *description]
    mine = torch.tensor(info, dtype=torch.int64, device=x.device)
    everyone = [torch.empty_like(mine) for _ in range(ring.world)]
    dist.all_gather(everyone, mine, group=ring.group)
    everyone = [t.cpu() for t in everyone]
    if any(not torch.equal(t, everyone[0]) for t in everyone):
        rows = "; ".join(
            f"rank {r}: shape {tuple(t[1 : 1 + int(t[0])].tolist())}, settings {t[4:].tolist()}"
            for r, t in enumerate(everyone)
        )
        raise ValueError(
            "mhsa.distributed.ring_self_attention: every rank must pass a local slice of the same "
            "shape, dtype and the same settings (num_heads, is_causal, dropout_p, training, "
            f"batch_first, load_balance); got {rows}"
        )


def ring_self_attention(
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    num_heads: int,
    *,
    group: Optional[dist.ProcessGroup] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    training: bool = True,
    batch_first: bool = True,
    load_balance: bool = False,
) -> Tensor:
    """Context-parallel multi-head self-attention: this rank's slice of the output.

    Computes what ``mhsa.functional.multi_head_self_attention`` computes on the full sequence
    (no masks besides ``is_causal``), for the positions this rank holds. Every rank of ``group``
    must call it together, with slices of the same shape (checked: a mismatch raises
    ``ValueError`` on every rank).

    Args:
        x: this rank's slice: ``(N, L/P, E)`` if ``batch_first`` else ``(L/P, N, E)``, or
            unbatched ``(L/P, E)``; as :func:`shard_sequence` makes it (with the same
            ``load_balance``). Rank r holds positions r*L/P ... (r+1)*L/P - 1, or with
            ``load_balance`` chunks r and 2P-1-r of 2P.
        in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias: as for
            ``mhsa.MultiheadSelfAttention``; their gradients are this rank's contributions
            (sum them over the group with :func:`all_reduce_gradients`).
        num_heads: number of heads H; must divide E.
        group: the context-parallel process group (default: the world).
        is_causal: causal attention over global positions; blocks a rank cannot see are skipped.
        dropout_p: dropout on the attention weights when ``training``; the masks are those of
            the one-process operator at the same seed (the seed is drawn from torch's default
            CPU generator on every rank, and the group's first rank's value is used).
        training: apply dropout.
        batch_first: layout of a 3-D ``x``.
        load_balance: ``x`` is the zigzag split of :func:`shard_sequence`.

    Returns:
        This rank's slice of the attention output, shaped like ``x``.
    """
    rank, world = _group_info(group)
    if x.dim() not in (2, 3):
        raise ValueError(
            f"mhsa.distributed.ring_self_attention: expected a 2-D or 3-D x, got shape {tuple(x.shape)}"
        )
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(
            f"mhsa.distributed.ring_self_attention: dropout_p must be in [0, 1], got {dropout_p}"
        )
    embed = in_proj_weight.size(1)
    if x.size(-1) != embed or embed % num_heads != 0:
        raise ValueError(
            f"mhsa.distributed.ring_self_attention: x of shape {tuple(x.shape)} does not fit "
            f"in_proj_weight {tuple(in_proj_weight.shape)} with num_heads={num_heads}"
        )
    unbatched = x.dim() == 2
    seq_first = unbatched or not batch_first
    local_len = x.size(0) if seq_first else x.size(1)
    dropping = training and dropout_p > 0.0
    ring = _Ring(group, rank, world, local_len * world, load_balance)
    settings = (
        num_heads,
        int(is_causal),
        int(dropout_p * 2**40) if dropping else 0,
        int(batch_first),
        int(load_balance),
        {torch.float64: 2, torch.float32: 1}.get(x.dtype, 0),
    )
    _check_same_everywhere(ring, x, settings)
    _check_divisible(ring.global_len, world, load_balance)
    drop = _Dropout(dropout_p, _draw_seed(group, x.device)) if dropping else None

    qkv = F.linear(x, in_proj_weight, in_proj_bias)
    if unbatched:
        qkv = qkv.unsqueeze(0)
    elif not batch_first:
        qkv = qkv.transpose(0, 1)
    batch = qkv.size(0)
    head_dim = embed // num_heads
    q, k, v = (
        qkv.reshape(batch, local_len, 3, num_heads, head_dim)
        .permute(2, 0, 3, 1, 4)
        .contiguous()
        .unbind(0)
    )
    context = _RingAttention.apply(q, k, v, ring, is_causal, drop)
    context = context.permute(0, 2, 1, 3).reshape(batch, local_len, embed)
    if unbatched:
        context = context.squeeze(0)
    elif not batch_first:
        context = context.transpose(0, 1)
    return F.linear(context, out_proj_weight, out_proj_bias)


class ContextParallelSelfAttention(nn.Module):
    """Runs an :class:`mhsa.MultiheadSelfAttention` context-parallel over a process group.

    The wrapper owns no parameters of its own: ``self.attn`` is the module given, so its
    parameters are the very same ``Parameter`` objects (an optimizer or a data-parallel wrapper
    built on either sees the same tensors). Dropout, ``batch_first`` and training mode are the
    wrapped module's.

    Args:
        attn: the attention module whose weights to use.
        group: the context-parallel process group (default: the world).
        load_balance: inputs are the zigzag split of :func:`shard_sequence`.
    """

    def __init__(
        self,
        attn: MultiheadSelfAttention,
        group: Optional[dist.ProcessGroup] = None,
        load_balance: bool = False,
    ) -> None:
        """Wraps ``attn``; see the class."""
        super().__init__()
        if not isinstance(attn, MultiheadSelfAttention):
            raise TypeError(f"expected an mhsa.MultiheadSelfAttention, got {type(attn).__name__}")
        self.attn = attn
        self.group = group
        self.load_balance = load_balance

    def forward(self, x_local: Tensor, *, is_causal: bool = False) -> Tensor:
        """This rank's slice of the output for this rank's slice ``x_local`` of the sequence."""
        attn = self.attn
        return ring_self_attention(
            x_local,
            attn.in_proj_weight,
            attn.in_proj_bias,
            attn.out_proj.weight,
            attn.out_proj.bias,
            attn.num_heads,
            group=self.group,
            is_causal=is_causal,
            dropout_p=attn.dropout,
            training=attn.training,
            batch_first=attn.batch_first,
            load_balance=self.load_balance,
        )
