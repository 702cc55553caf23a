"""Context-parallel ("ring") self-attention over ``torch.distributed``.

Each rank of a process group holds a contiguous slice of the sequence (or, with
``load_balance=True``, two slices in a zigzag split that evens out causal work). The input and
output projections run locally with mhsa's weights; the attention core passes key/value blocks
around the ring of ranks with point-to-point communication (``isend``/``irecv``), overlapped
with the computation on the block already at hand, and merges the partial results by their
per-row log-sum-exp. Backward passes the key/value blocks around once more together with their
accumulated gradients, which end on the rank that owns the block.

Every (query segment, key segment) block runs on mhsa's fused kernels, through the internal ops
``torch.ops.mhsa._attention_block_forward`` and ``_attention_block_backward``: they read the
local projections in place, return the block's log-sum-exp, place a causal block's diagonal at
its global offset (``diagonal``) and compute a block's gradients from the merged output and
log-sum-exp of its rows. Python only merges the block results (O(L/P) per block) and moves the
blocks around.

Only ``torch.distributed`` is used for communication, with no assumption about the backend
(gloo on CPU; NCCL works the same way). Nothing here runs at ``import mhsa``; the module is
imported on first use of ``mhsa.distributed``, and a process group is needed only when the
functions are called.

Dropout draws the very same random numbers as mhsa's single-process operator at the same seed:
the keep bit of (batch n, head h, query i, key j) comes from the counter-based Philox generator
keyed by the *global* positions i and j (each block passes its place in the whole L x L
attention as the ops' ``dropout_plane``, and every rank the seed the group's first rank drew as
the operator would), so a context-parallel run with dropout equals a one-process run.

Parameter gradients computed by :func:`ring_self_attention` are each rank's local contributions;
the gradient of a loss summed over the whole sequence is their sum over the group
(:func:`all_reduce_gradients`). A data-parallel wrapper such as ``DistributedDataParallel``
over the same group averages instead of summing, i.e. gives 1/P of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple, Union

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
# Dropout: the seed the one-process operator would draw, shared by every rank.


@dataclass(frozen=True)
class _Dropout:
    p: float
    # int64 (2,), [0] the seed: the block ops' shared_rng_state (forward) and rng_state
    # (backward). With dropout_plane = (L, L, first query, first key) the blocks draw the keep
    # bits of those global positions, the one-process operator's at the same seed.
    rng_state: Tensor


def _local_seed() -> Tensor:
    """The dropout seed as mhsa's operator draws it (one ``random64`` from torch's default CPU
    generator), as an int64 (1,) tensor holding its 64 bits."""
    return torch.empty((1,), dtype=torch.int64).random_(-(2**63), None)


def _draw_seed(group: Optional[dist.ProcessGroup], device: torch.device) -> Tensor:
    """:func:`_local_seed` on every rank, the value of the group's first rank kept everywhere;
    returns the (2,) ``rng_state`` of the block ops. ``device``: where the backend communicates
    (the input's device)."""
    seed = _local_seed().to(device)
    dist.broadcast(seed, src=_global_rank(group, 0), group=group)
    return _rng_state(seed)


def _rng_state(seed: Tensor) -> Tensor:
    """The block ops' int64 (2,) rng_state of the (1,) ``seed``."""
    return torch.cat([seed, seed.new_zeros(1)])


_NO_DROPOUT_STATE = torch.zeros(2, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The attention core: blocks of (local queries) x (one rank's keys/values), each computed by
# mhsa's fused kernels (torch.ops.mhsa._attention_block_forward / _attention_block_backward).


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


def _visible(q: _Segment, k: _Segment, is_causal: bool) -> Optional[bool]:
    """None: no query of ``q`` sees any key of ``k`` (skip the block); False: every query sees
    every key; True: a causal mask is needed."""
    if not is_causal or k.start + k.length - 1 <= q.start:
        return False
    if k.start > q.start + q.length - 1:
        return None
    return True


def _blocks(ring: _Ring, q_rank: int, k_rank: int, is_causal: bool):
    """(query segment, key segment, needs a causal mask) for every segment of ``q_rank``'s
    queries against every segment of ``k_rank``'s keys that it can see: one fused-kernel call
    each (the kernels tile the block themselves and skip the tiles above a causal diagonal)."""
    for qs in ring.segments(q_rank):
        for ks in ring.segments(k_rank):
            masked = _visible(qs, ks, is_causal)
            if masked is not None:
                yield qs, ks, masked


def _block_options(
    ring: _Ring, qs: _Segment, ks: _Segment, masked: bool, drop: Optional[_Dropout]
) -> Dict[str, object]:
    """The block ops' mask and dropout arguments for queries ``qs`` against keys ``ks``: the
    causal diagonal at their global offset, and the dropout plane of the whole L x L attention
    with the block at (qs.start, ks.start)."""
    options: Dict[str, object] = {"is_causal": masked, "diagonal": qs.start - ks.start}
    if drop is not None:
        options["dropout_p"] = drop.p
        options["dropout_plane"] = [ring.global_len, ring.global_len, qs.start, ks.start]
    return options


def _rows(t: Tensor, seg: _Segment) -> Tensor:
    """Rows ``seg`` of an (N, H, L/P, ...) tensor (a view)."""
    return t.narrow(2, seg.local, seg.length)


def _kv_heads(kv: Tensor, which: int, seg: _Segment) -> Tensor:
    """Keys (``which`` 0) or values (1) of positions ``seg`` of a (N, L/P, 2, H_kv, D) block, as
    the (N, H_kv, length, D) view the block ops read in place."""
    return kv.narrow(1, seg.local, seg.length).select(2, which).transpose(1, 2)


def _block_forward(
    ring: _Ring,
    q: Tensor,
    kv: Tensor,
    qs: _Segment,
    ks: _Segment,
    masked: bool,
    drop: Optional[_Dropout],
) -> Tuple[Tensor, Tensor]:
    """(output, log-sum-exp) of queries ``qs`` of ``q`` (N, H, L/P, D) against keys ``ks`` of
    ``kv``; the output is dropped out and rescaled already, the log-sum-exp is +inf for a row
    that sees no key of the block."""
    out, _, lse, _ = torch.ops.mhsa._attention_block_forward(
        _rows(q, qs),
        _kv_heads(kv, 0, ks),
        _kv_heads(kv, 1, ks),
        shared_rng_state=None if drop is None else drop.rng_state,
        **_block_options(ring, qs, ks, masked, drop),
    )
    return out, lse


def _merge(out: Tensor, lse: Tensor, block_out: Tensor, block_lse: Tensor, first: bool) -> None:
    """Merges a block's (output, log-sum-exp) into the running (out, lse) of the same rows:
    out = sum_b exp(lse_b - lse) out_b, lse = logaddexp over the blocks. ``lse`` is -inf for a
    row without a key so far; a block's +inf (the row sees none of its keys) weighs 0."""
    block_lse = block_lse.masked_fill(block_lse == math.inf, -math.inf)
    if first:
        out.copy_(block_out)
        lse.copy_(block_lse)
        return
    new_lse = torch.logaddexp(lse, block_lse)
    safe = new_lse.masked_fill(new_lse == -math.inf, 0.0)
    out.mul_((lse - safe).exp_().unsqueeze(-1))
    out.add_(block_out * (block_lse - safe).exp_().unsqueeze(-1))
    lse.copy_(new_lse)


def _split_heads(qkv: Tensor, num_heads: int, kv_heads: int) -> Tuple[Tensor, Tensor]:
    """The local queries (N, H, L/P, D), a view of ``qkv`` (N, L/P, (H + 2 H_kv) D), and the
    local keys and values as the contiguous (N, L/P, 2, H_kv, D) block that travels around the
    ring."""
    head_dim = qkv.size(-1) // (num_heads + 2 * kv_heads)
    q = qkv.narrow(-1, 0, num_heads * head_dim).unflatten(-1, (num_heads, head_dim))
    kv = qkv.narrow(-1, num_heads * head_dim, 2 * kv_heads * head_dim)
    return q.transpose(1, 2), kv.unflatten(-1, (2, kv_heads, head_dim)).contiguous()


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the block ops' log-sum-exp, in which the ring merges and accumulates."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _RingAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D)) v over the whole ring, from the local projections ``qkv``
    (N, L/P, (H + 2 H_kv) D) to the local context (N, L/P, H D); query head h reads key/value
    head h // (H / H_kv)."""

    @staticmethod
    def forward(
        ctx,
        qkv: Tensor,
        ring: _Ring,
        num_heads: int,
        kv_heads: int,
        is_causal: bool,
        drop: Optional[_Dropout],
    ) -> Tensor:
        batch, local_len = qkv.size(0), qkv.size(1)
        q, kv = _split_heads(qkv, num_heads, kv_heads)
        acc = _accumulation_dtype(qkv.dtype)
        # (N, L/P, H, D) memory, as the block ops return their outputs: the context is a view.
        out = qkv.new_zeros((batch, local_len, num_heads, q.size(-1)), dtype=acc)
        out_heads = out.transpose(1, 2)
        lse = qkv.new_full((batch, num_heads, local_len), -math.inf, dtype=acc)
        merged = set()  # query segments with a block merged in
        for step in range(ring.world):
            works: List[dist.Work] = []
            if step < ring.world - 1:
                incoming = torch.empty_like(kv)
                works = ring.exchange(kv, incoming)
            k_rank = (ring.rank - step) % ring.world
            for qs, ks, masked in _blocks(ring, ring.rank, k_rank, is_causal):
                block_out, block_lse = _block_forward(ring, q, kv, qs, ks, masked, drop)
                _merge(
                    _rows(out_heads, qs),
                    _rows(lse, qs),
                    block_out,
                    block_lse,
                    first=qs.local not in merged,
                )
                merged.add(qs.local)
            for work in works:
                work.wait()
            if works:
                kv = incoming
        context = out.to(qkv.dtype).flatten(2)
        # The block ops' backward reads +inf for a row that sees no key at all.
        lse.masked_fill_(lse == -math.inf, math.inf)
        ctx.save_for_backward(qkv, context, lse)
        ctx.ring, ctx.is_causal, ctx.drop = ring, is_causal, drop
        ctx.num_heads, ctx.kv_heads = num_heads, kv_heads
        return context

    @staticmethod
    def backward(ctx, grad_context: Tensor):
        qkv, context, lse = ctx.saved_tensors
        ring: _Ring = ctx.ring
        drop: Optional[_Dropout] = ctx.drop
        num_heads = ctx.num_heads
        rng_state = _NO_DROPOUT_STATE if drop is None else drop.rng_state
        q, kv = _split_heads(qkv, num_heads, ctx.kv_heads)
        acc = _accumulation_dtype(qkv.dtype)

        def heads(t: Tensor) -> Tensor:  # (N, L/P, E) -> (N, H, L/P, D)
            return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)

        out, grad_out = heads(context), heads(grad_context.contiguous())
        # (N, L/P, (H + 2 H_kv) D) as qkv: the query columns, then the key/value block's.
        grad_qkv = torch.zeros_like(qkv, dtype=acc, memory_format=torch.contiguous_format)
        query_width = num_heads * q.size(-1)
        grad_q = heads(grad_qkv.narrow(-1, 0, query_width))
        # The send of the last step's gradients and the tensor it sends (kept alive until done).
        sending: Optional[Tuple[dist.Work, Tensor]] = None
        # Message order between two neighbours is the same on both sides (kv_0, dkv_0, kv_1,
        # dkv_1, ...), as backends that match point-to-point messages by order require.
        for step in range(ring.world):
            grad_kv = torch.zeros_like(kv, dtype=acc)
            received: Optional[Tensor] = None
            grad_work: Optional[dist.Work] = None
            if step > 0:
                received = torch.empty_like(grad_kv)
                grad_work = dist.irecv(received, ring.prev_rank, group=ring.group)
            works: List[dist.Work] = []
            if step < ring.world - 1:
                incoming = torch.empty_like(kv)
                works = ring.exchange(kv, incoming)
            k_rank = (ring.rank - step) % ring.world
            for qs, ks, masked in _blocks(ring, ring.rank, k_rank, ctx.is_causal):
                # The gradients through this block, from the whole attention's output and
                # log-sum-exp of these rows (the op computes rowsum(dO * O) from them).
                grad_q_block, grad_k_block, grad_v_block = torch.ops.mhsa._attention_block_backward(
                    _rows(grad_out, qs),
                    None,
                    _rows(q, qs),
                    _kv_heads(kv, 0, ks),
                    _kv_heads(kv, 1, ks),
                    _rows(out, qs),
                    _rows(lse, qs),
                    rng_state,
                    **_block_options(ring, qs, ks, masked, drop),
                )
                _rows(grad_q, qs).add_(grad_q_block)
                _kv_heads(grad_kv, 0, ks).add_(grad_k_block)
                _kv_heads(grad_kv, 1, ks).add_(grad_v_block)
            if grad_work is not None and received is not None:
                grad_work.wait()
                grad_kv += received
            if ring.world > 1:
                send = dist.isend(grad_kv, ring.next_rank, group=ring.group)
                if sending is not None:
                    sending[0].wait()  # posted a whole step's computation ago
                sending = (send, grad_kv)
            for work in works:
                work.wait()
            if works:
                kv = incoming
        if ring.world > 1:
            # The accumulated gradient of this rank's own block comes back from the previous.
            grad_kv = torch.empty_like(grad_kv)
            dist.irecv(grad_kv, ring.prev_rank, group=ring.group).wait()
            if sending is not None:
                sending[0].wait()
        grad_qkv.narrow(-1, query_width, qkv.size(-1) - query_width).copy_(grad_kv.flatten(2))
        return grad_qkv.to(qkv.dtype), None, None, None, None, None


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
            "shape, dtype and the same settings (num_heads, num_kv_heads, is_causal, dropout_p, "
            f"training, batch_first, load_balance, dtype); got {rows}"
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
    num_kv_heads: Optional[int] = None,
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
        num_kv_heads: grouped-query attention with H_kv key/value heads (H a multiple of H_kv),
            ``in_proj_weight`` of shape ``((H + 2 H_kv) E / H, E)`` as for
            ``mhsa.MultiheadSelfAttention(num_kv_heads=...)``; the blocks passed around the ring
            are then H / H_kv times smaller. None: H_kv = H.

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
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if (
        num_heads <= 0
        or kv_heads <= 0
        or num_heads % kv_heads != 0
        or x.size(-1) != embed
        or embed % num_heads != 0
        or in_proj_weight.size(0) != (num_heads + 2 * kv_heads) * (embed // num_heads)
    ):
        raise ValueError(
            f"mhsa.distributed.ring_self_attention: x of shape {tuple(x.shape)} does not fit "
            f"in_proj_weight {tuple(in_proj_weight.shape)} with num_heads={num_heads} and "
            f"num_kv_heads={num_kv_heads}"
        )
    unbatched = x.dim() == 2
    seq_first = unbatched or not batch_first
    local_len = x.size(0) if seq_first else x.size(1)
    dropping = training and dropout_p > 0.0
    ring = _Ring(group, rank, world, local_len * world, load_balance)
    settings = (
        num_heads,
        kv_heads,
        int(is_causal),
        int(dropout_p * 2**40) if dropping else 0,
        int(batch_first),
        int(load_balance),
        {torch.float64: 2, torch.float32: 1, torch.bfloat16: 3, torch.float16: 4}.get(x.dtype, 0),
    )
    _check_same_everywhere(ring, x, settings)
    _check_divisible(ring.global_len, world, load_balance)
    drop = _Dropout(dropout_p, _draw_seed(group, x.device)) if dropping else None

    qkv = F.linear(x, in_proj_weight, in_proj_bias)
    if unbatched:
        qkv = qkv.unsqueeze(0)
    elif not batch_first:
        qkv = qkv.transpose(0, 1)
    context = _RingAttention.apply(qkv, ring, num_heads, kv_heads, is_causal, drop)
    if unbatched:
        context = context.squeeze(0)
    elif not batch_first:
        context = context.transpose(0, 1)
    return F.linear(context, out_proj_weight, out_proj_bias)


class ContextParallelSelfAttention(nn.Module):
    """Runs an :class:`mhsa.MultiheadSelfAttention` context-parallel over a process group.

    The wrapper owns no parameters of its own: ``self.attn`` is the module given, so its
    parameters are the very same ``Parameter`` objects (an optimizer or a data-parallel wrapper
    built on either sees the same tensors). Dropout, ``batch_first``, grouped-query heads
    (``num_kv_heads``) and training mode are the wrapped module's.

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
            num_kv_heads=attn.num_kv_heads,
        )
