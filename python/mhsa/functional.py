"""Functional form of mhsa's multi-head self-attention."""

from typing import Optional, Tuple

import torch
from torch import Tensor


def multi_head_self_attention(
    query: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    num_heads: int,
    dropout_p: float = 0.0,
    training: bool = True,
    batch_first: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    need_weights: bool = True,
    attn_mask: Optional[Tensor] = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
    num_kv_heads: Optional[int] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Multi-head self-attention with explicit weights (query = key = value).

    Same semantics as ``torch.nn.functional.multi_head_attention_forward`` for self-attention
    with a packed input projection, plus ``batch_first``.

    Args:
        query: ``(L, N, E)``, ``(N, L, E)`` if ``batch_first``, or unbatched ``(L, E)``.
        in_proj_weight: ``(3E, E)``, rows ``[0:E]`` project queries, then keys, then values.
        in_proj_bias: ``(3E)`` or None.
        out_proj_weight: ``(E, E)``.
        out_proj_bias: ``(E)`` or None.
        num_heads: number of heads H; must divide E.
        dropout_p: dropout probability on the attention weights, used when ``training``.
        training: apply dropout.
        batch_first: layout of a 3-D query.
        key_padding_mask: ``(N, L)`` (``(L)`` unbatched); bool (True = ignore that key) or float
            (added to the scores).
        need_weights: also return the attention weights.
        attn_mask: ``(L, L)`` or ``(N*H, L, L)``; bool (True = may not attend) or float (added).
        average_attn_weights: return weights averaged over heads ``(N, L, L)`` instead of
            per head ``(N, H, L, L)``.
        is_causal: apply a causal mask (no ``attn_mask`` needed; combined with one if given).
        window_size: ``(left, right)`` sliding-window (local) attention: query i sees key j only
            if ``i - left <= j <= i + right``; -1 leaves that side unbounded. Combined with every
            other mask; key tiles outside the band are never computed (work O(L * window)).
        num_kv_heads: grouped-query attention with H_kv key/value heads (H a multiple of H_kv):
            ``in_proj_weight`` is ``((H + 2 H_kv) E / H, E)``, rows for the H query heads, then
            the H_kv key heads, then the H_kv value heads. None: H_kv = H.

    Returns:
        ``(attn_output, attn_weights)``; ``attn_weights`` is None unless ``need_weights``.
        A query whose keys are all masked gets zero attention (its output is the output
        projection bias) and zero weights, never NaN.
    """
    output, weights = torch.ops.mhsa.multi_head_self_attention(
        query,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        dropout_p,
        training,
        batch_first,
        key_padding_mask,
        need_weights,
        attn_mask,
        average_attn_weights,
        is_causal,
        [window_size[0], window_size[1]],
        num_kv_heads,
    )
    if need_weights:
        return output, weights
    return output, None


def decode_step(
    x_new: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    num_heads: int,
    batch_first: bool,
    key_cache: Tensor,
    value_cache: Tensor,
    cache_length: Tensor,
) -> Tensor:
    """One step of KV-cache decoding (inference only): the op ``mhsa::decode_step``.

    Projects the next T >= 1 tokens, writes their keys and values into the caches at positions
    ``[cache_length, cache_length + T)``, adds T to ``cache_length`` (all three in place) and
    returns the new tokens' outputs: each attends to the cached tokens and to the new tokens up
    to itself, as in one causal forward over the whole sequence.

    Args:
        x_new: ``(T, N, E)``, or ``(N, T, E)`` if ``batch_first``.
        in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads: as in
            :func:`multi_head_self_attention` (the biases in ``x_new``'s dtype).
        batch_first: layout of ``x_new`` and of the output.
        key_cache, value_cache: ``(N, num_heads, max_len, E / num_heads)``, ``x_new``'s dtype.
        cache_length: int64 tensor of shape ``()``, tokens cached so far.

    Returns:
        The outputs of the new tokens, shaped like ``x_new``.

    Raises:
        RuntimeError: the cache has no room for T more tokens, shapes or dtypes do not match, or
            an input requires grad while grad mode is on.
    """
    return torch.ops.mhsa.decode_step(
        x_new,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        batch_first,
        key_cache,
        value_cache,
        cache_length,
    )


def multi_head_self_attention_packed(
    x: Tensor,
    cu_seqlens: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    num_heads: int,
    max_seqlen: Optional[int] = None,
    dropout_p: float = 0.0,
    training: bool = True,
    is_causal: bool = False,
    window_size: Tuple[int, int] = (-1, -1),
) -> Tensor:
    """Multi-head self-attention over packed variable-length sequences.

    ``x`` holds B sequences back to back (FlashAttention's "varlen" layout): sequence ``b`` is
    ``x[cu_seqlens[b]:cu_seqlens[b + 1]]``. Each sequence attends only to itself, and the result
    equals running each one alone through :func:`multi_head_self_attention` (outputs and
    gradients; parameter gradients are summed over the sequences), for work proportional to
    ``sum(L_b ** 2)`` rather than ``B * max(L) ** 2``.

    Args:
        x: ``(T, E)``, the sequences concatenated along dim 0.
        cu_seqlens: ``(B + 1,)`` int32 or int64 offsets on x's device, from 0 to T, never
            decreasing (a zero-length sequence is allowed and contributes nothing).
        in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads: as in
            :func:`multi_head_self_attention`.
        max_seqlen: optional bound on the sequence lengths (FlashAttention's argument); when
            given, a longer sequence is an error.
        dropout_p: dropout probability on the attention weights, used when ``training``. One
            seed is drawn per call (``torch.manual_seed`` reproduces it) and every sequence gets
            its own stream, so the masks differ from those of per-sequence calls.
        training: apply dropout.
        is_causal: causal mask within each sequence.
        window_size: ``(left, right)``: query ``i`` sees only keys ``i - left .. i + right`` of
            its sequence; -1 leaves that side unbounded.

    Returns:
        ``(T, E)``, the attention output of every row of ``x``.

    The arguments after ``num_heads`` are meant to be passed by keyword; they are not
    keyword-only because TorchScript cannot compile keyword-only arguments with defaults.
    """
    return torch.ops.mhsa.multi_head_self_attention_packed(
        x,
        cu_seqlens,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        max_seqlen=max_seqlen,
        dropout_p=dropout_p,
        training=training,
        is_causal=is_causal,
        window_size=[window_size[0], window_size[1]],
    )


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    window_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on mhsa's fused kernels.

    The same semantics as PyTorch's function, forward and backward in O(L) memory, plus a
    sliding window. The op is ``torch.ops.mhsa.scaled_dot_product_attention`` (eager,
    ``torch.compile(fullgraph=True)``, ``torch.export``, TorchScript and C++).

    Args:
        query: ``(..., H, L, E)``.
        key: ``(..., H_kv, S, E)``.
        value: ``(..., H_kv, S, Ev)``; ``Ev`` may differ from ``E``.
        attn_mask: bool (True = may attend, as in PyTorch) or float (added to the scores),
            broadcastable to ``(..., H, L, S)``. A mask of keys only, ``(N, 1, 1, S)``, is read
            as padding: key tiles after the last visible key are skipped.
        dropout_p: dropout probability on the attention weights (applied whenever > 0, as in
            PyTorch; pass 0.0 in evaluation).
        is_causal: query i sees keys j <= i (top-left aligned when L != S, as in PyTorch);
            combined with ``attn_mask`` if both are given.
        scale: the softmax scale, default ``1 / sqrt(E)``.
        enable_gqa: grouped-query attention: H a multiple of H_kv, query head h reads key/value
            head ``h // (H // H_kv)``.
        window_size: ``(left, right)``: query i sees only keys ``i - left .. i + right``; -1
            leaves a side unbounded. Key tiles outside the band are never computed.

    Returns:
        ``(..., H, L, Ev)``. A query that can see no key gets zeros (PyTorch's math path gives
        the same; no NaN).
    """
    return torch.ops.mhsa.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
        None if window_size is None else [window_size[0], window_size[1]],
    )
