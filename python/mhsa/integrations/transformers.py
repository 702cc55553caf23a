"""mhsa as an attention implementation of Hugging Face transformers (``attn_implementation="mhsa"``).

    import mhsa.integrations.transformers
    mhsa.integrations.transformers.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="mhsa")

:func:`register` adds two functions to transformers under the name ``"mhsa"``:

* :func:`attention_forward` in ``AttentionInterface``: each attention layer of the model calls it
  with the projected queries, keys and values, and it calls
  :func:`mhsa.scaled_dot_product_attention` (forward and backward fused in C++);
* :func:`attention_mask` in ``AttentionMaskInterface``: the model calls it once per forward (per
  kind of layer) to build the mask, and it returns a :class:`StructuredMask`, which says what is
  masked instead of spelling out an L x S matrix.

How each mask reaches the op (``L`` queries, ``S`` keys):

* causal: ``is_causal=True`` when the op's top-left alignment is the right one (no cache:
  L == S); with a KV cache the new queries are the last L of the S positions (bottom-right
  alignment), which is ``window_size=(-1, S - L)``; a single new query (L == 1) sees every key
  and gets no mask at all;
* sliding window (Mistral, Qwen2, ...): ``window_size``, shifted the same way under a cache; keys
  no query can see any more are sliced off rather than masked;
* padding (``attention_mask`` with zeros, left or right): a ``(N, 1, 1, S)`` boolean mask;
* packed sequences (``position_ids`` that restart, or the ``cu_seq_lens_q`` / ``cu_seq_lens_k``
  keyword arguments of FlashAttention's variable-length form): the sequences are unpacked into a
  padded batch, run through the op with the causal / window structure, and packed again, so no
  query ever sees another sequence;
* a 4-D mask the caller passes (boolean or additive float): to the op as it is;
* a mask pattern this module does not recognise (a model's own ``or_mask_function`` for image
  tokens, chunked attention): the dense boolean mask that transformers would give SDPA (exact,
  but L x S memory; a warning says so).

A query that sees no key at all (a left-padding position under a causal mask) gets a zero
output, where eager attention averages over every key; both are discarded padding.

Model features the op does not have are refused with :class:`NotImplementedError` naming the
feature, never computed differently: logit soft-capping (``softcap``, Gemma 2), attention sinks
(``s_aux`` / ``sinks``, gpt-oss), an additive relative-position bias (``position_bias``, T5) and
returning the attention weights (``output_attentions=True``; use ``attn_implementation="eager"``).

Importing this module imports transformers; ``import mhsa`` does not.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

import mhsa

try:
    from transformers import AttentionInterface, AttentionMaskInterface, masking_utils
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mhsa.integrations.transformers needs Hugging Face transformers: "
        "pip install 'mhsa[transformers]' (or 'transformers>=5.20,<6')"
    ) from error

__all__ = ["NAME", "StructuredMask", "attention_forward", "attention_mask", "register"]

NAME = "mhsa"
"""The ``attn_implementation`` name under which :func:`register` makes mhsa available."""


def register() -> None:
    """Makes ``attn_implementation="mhsa"`` available to every transformers model.

    Registers :func:`attention_forward` with ``transformers.AttentionInterface`` and
    :func:`attention_mask` with ``transformers.AttentionMaskInterface`` under :data:`NAME`.
    Calling it again changes nothing.
    """
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, attention_mask)


@dataclasses.dataclass(frozen=True)
class StructuredMask:
    """Which keys each query of one attention call may see, without an L x S matrix.

    Query ``i`` (of ``q_length``) sees key ``j`` (of ``kv_length``) exactly when all of these hold:

    * ``lower <= j - i <= upper`` (a bound that is None is absent): causal attention is
      ``upper = 0`` without a cache and ``upper = kv_length - q_length`` with one (the queries
      are the last positions), a sliding window adds a ``lower`` bound;
    * ``key_padding[b, j]`` is True, if ``key_padding`` is given (shape ``(N, kv_length)``);
    * ``segments[b, i] == segments[b, j]``, if ``segments`` is given (shape ``(N, q_length)``,
      q_length == kv_length; ids count up from 0 in each row): packed sequences.

    ``ndim``, ``shape`` and ``contiguous()`` describe it as the ``(N, 1, q_length, kv_length)``
    mask it stands for, so that transformers' own code passes it through as it does a 4-D
    tensor (``generate`` with a static cache builds the mask in advance and hands it to the
    model).
    """

    batch_size: int
    q_length: int
    kv_length: int
    lower: Optional[int] = None
    upper: Optional[int] = None
    key_padding: Optional[Tensor] = None
    segments: Optional[Tensor] = None

    ndim = 4

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(N, 1, q_length, kv_length)``, the shape of the mask this stands for."""
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def contiguous(self) -> StructuredMask:
        """Itself (there is no memory layout to change)."""
        return self


# ----------------------------------------------------------------------------------------------
# The mask function (AttentionMaskInterface)


@dataclasses.dataclass(frozen=True)
class _Pattern:
    """A mask function of transformers.masking_utils, read back: key position ``p_k`` is visible
    from query position ``p_q`` when ``-left <= p_k - p_q <= right`` (None: unbounded), within
    one packed sequence if ``segments`` is set. ``position_ids`` is set when the function compares
    positions from ``position_ids`` rather than indices (only valid together with segments)."""

    left: Optional[int] = None
    right: Optional[int] = None
    segments: Optional[Tensor] = None
    position_ids: Optional[Tensor] = None


def _tighter(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _intersect(a: _Pattern, b: _Pattern) -> Optional[_Pattern]:
    """Both patterns at once, or None if that is not a single pattern."""
    if a.segments is not None and b.segments is not None:
        return None
    if a.position_ids is not None and b.position_ids is not None:
        return None
    return _Pattern(
        left=_tighter(a.left, b.left),
        right=_tighter(a.right, b.right),
        segments=a.segments if a.segments is not None else b.segments,
        position_ids=a.position_ids if a.position_ids is not None else b.position_ids,
    )


def _closure_variables(function: Callable) -> Dict[str, Any]:
    cells = function.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(function.__code__.co_freevars, cells)}


def _read_pattern(function: Callable) -> Optional[_Pattern]:
    """The pattern of a mask function built by transformers.masking_utils, or None when it is
    (or contains) anything else: another library's or a model's own function, or a combination
    that is not an intersection (``or_masks``, chunked attention, block overlays)."""
    if function is masking_utils.causal_mask_function:
        return _Pattern(right=0)
    if function is masking_utils.bidirectional_mask_function:
        return _Pattern()
    if getattr(function, "__module__", None) != masking_utils.__name__:
        return None
    variables = _closure_variables(function)
    name = function.__qualname__
    if name == "and_masks.<locals>.and_mask" and "mask_functions" in variables:
        pattern: Optional[_Pattern] = _Pattern()
        for part in variables["mask_functions"]:
            part_pattern = _read_pattern(part)
            if part_pattern is None or pattern is None:
                return None
            pattern = _intersect(pattern, part_pattern)
        return pattern
    if name == "sliding_window_overlay.<locals>.inner_mask" and "sliding_window" in variables:
        # kv_idx > q_idx - sliding_window
        return _Pattern(left=int(variables["sliding_window"]) - 1)
    if (
        name == "sliding_window_bidirectional_overlay.<locals>.inner_mask"
        and "sliding_window" in variables
    ):
        # abs(q_idx - kv_idx) <= sliding_window
        window = int(variables["sliding_window"])
        return _Pattern(left=window, right=window)
    if (
        name == "packed_sequence_mask_function.<locals>.inner_mask"
        and "packed_sequence_mask" in variables
    ):
        return _Pattern(segments=variables["packed_sequence_mask"])
    if (
        name == "remap_positions_for_packed_sequence.<locals>.inner_mask"
        and "mask_function" in variables
        and "position_ids" in variables
    ):
        inner = _read_pattern(variables["mask_function"])
        if inner is None or inner.segments is not None or inner.position_ids is not None:
            return None
        return dataclasses.replace(inner, position_ids=variables["position_ids"])
    return None


def _positions_follow_indices(position_ids: Tensor, segments: Tensor) -> bool:
    """Whether, inside every packed sequence, positions grow by exactly 1 from token to token,
    so that differences of positions equal differences of indices there."""
    same_sequence = segments[:, 1:] == segments[:, :-1]
    steps = position_ids[:, 1:] - position_ids[:, :-1]
    return bool((steps[same_sequence] == 1).all())


def _structure(
    pattern: _Pattern,
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int,
    kv_offset: int,
    key_padding: Optional[Tensor],
) -> Optional[StructuredMask]:
    """The pattern at these sizes and offsets, or None if it is not a :class:`StructuredMask`."""
    segments = pattern.segments
    if segments is not None:
        if q_offset != 0 or kv_offset != 0 or not q_length == kv_length == segments.shape[-1]:
            return None
        segments = segments.expand(batch_size, -1)
        if key_padding is not None:
            return None
    if pattern.position_ids is not None:
        if segments is None:
            return None
        positions = pattern.position_ids.expand(batch_size, -1)
        if not _positions_follow_indices(positions, segments):
            return None
    # Query i is at position q_offset + i, key j at kv_offset + j.
    shift = q_offset - kv_offset
    return StructuredMask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        lower=None if pattern.left is None else shift - pattern.left,
        upper=None if pattern.right is None else shift + pattern.right,
        key_padding=key_padding,
        segments=segments,
    )


def attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Union[int, Tensor] = 0,
    kv_offset: Union[int, Tensor] = 0,
    mask_function: Optional[Callable] = None,
    attention_mask: Optional[Tensor] = None,
    **kwargs: Any,
) -> Union[StructuredMask, Tensor]:
    """The mask for one kind of attention layer, as transformers' mask factories ask for it.

    Called by ``transformers.masking_utils.create_causal_mask`` and its siblings (registered by
    :func:`register`), with the same arguments as ``masking_utils.sdpa_mask``: the sizes, the
    offsets of the first query and key positions (non-zero with a cache), the mask function
    (causal, sliding window, packed sequences, ...) and the 2-D padding mask.

    Returns:
        A :class:`StructuredMask` when the mask function is one of transformers' own patterns
        (causal, bidirectional, sliding window, packed sequences, and their intersections).
        Otherwise the ``(N, 1, q_length, kv_length)`` boolean mask (True = attend) that
        ``sdpa_mask`` builds for the same arguments, with a warning: exact, but dense.
    """
    if isinstance(attention_mask, StructuredMask):
        # Built in advance (generate with a static cache) and handed back by the model.
        return attention_mask
    if mask_function is None:
        mask_function = masking_utils.causal_mask_function
    q_offset, kv_offset = int(q_offset), int(kv_offset)
    key_padding = None
    if attention_mask is not None:
        # Column p of the 2-D mask is position p; positions it does not cover are not attended
        # (masking_utils.prepare_padding_mask pads with False).
        padding = masking_utils.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        key_padding = padding[:, kv_offset : kv_offset + kv_length].to(torch.bool)
        if bool(key_padding.all()):
            key_padding = None
    pattern = _read_pattern(mask_function)
    structured = None
    if pattern is not None:
        structured = _structure(
            pattern, batch_size, q_length, kv_length, q_offset, kv_offset, key_padding
        )
    if structured is not None:
        return structured
    warnings.warn(
        "mhsa attention: this model's mask is not one of transformers' causal, bidirectional, "
        "sliding-window or packed-sequence patterns; it is passed to the op as a dense boolean "
        "(L x S) mask",
        stacklevel=2,
    )
    # Never None: both shortcuts off (they would mean "causal" / "no mask" to SDPA).
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    return masking_utils.sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------
# The attention function (AttentionInterface)


def _refuse_unsupported(
    module: torch.nn.Module, softcap: Optional[float], kwargs: Dict[str, Any]
) -> None:
    """Raises NotImplementedError naming the first feature the op does not have."""
    config = getattr(module, "config", None)
    if softcap is not None:
        raise NotImplementedError(
            f"mhsa attention does not support logit soft-capping (softcap={softcap}, e.g. "
            "Gemma 2's attn_logit_softcapping): the op computes softmax(q k^T * scale + mask) "
            "with no tanh cap. Use attn_implementation='eager' for this model."
        )
    for name in ("s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"mhsa attention does not support attention sinks ({name}, learned per-head "
                "logits added to the softmax's denominator, e.g. gpt-oss). Use "
                "attn_implementation='eager' for this model."
            )
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError(
            "mhsa attention does not support an additive relative-position bias "
            "(position_bias, e.g. T5). Use attn_implementation='eager' or 'sdpa' for this model."
        )
    if kwargs.get("output_attentions", getattr(config, "output_attentions", False)):
        raise NotImplementedError(
            "mhsa attention does not return attention weights (output_attentions=True): the "
            "op never forms them. Use attn_implementation='eager' to inspect them."
        )


def _mask_without_tensor(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    is_causal: Optional[bool],
    sliding_window: Optional[int],
) -> StructuredMask:
    """The mask of a call that got none, for models that build no mask: causal if the call or
    the module says so, with the new queries as the last positions when keys are cached (the
    alignment of a KV cache), and the ``sliding_window`` the model passes."""
    if is_causal is None:
        is_causal = bool(getattr(module, "is_causal", True))
    L, S = query.shape[2], key.shape[2]
    shift = S - L
    lower = upper = None
    if is_causal:
        upper = shift
        if sliding_window is not None:
            lower = shift - (sliding_window - 1)
    elif sliding_window is not None:
        lower, upper = shift - sliding_window, shift + sliding_window
    return StructuredMask(
        batch_size=query.shape[0], q_length=L, kv_length=S, lower=lower, upper=upper
    )


def _segments_from_cu_seq_lens(
    cu_seq_lens_q: Tensor, cu_seq_lens_k: Optional[Tensor], length: int
) -> Tensor:
    """``(1, length)`` sequence ids from FlashAttention's cumulative sequence lengths."""
    if cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_q.cpu(), cu_seq_lens_k.cpu()):
        raise NotImplementedError(
            "mhsa attention: packed sequences with cu_seq_lens_k different from cu_seq_lens_q "
            "(queries and keys packed differently) are not supported"
        )
    bounds = cu_seq_lens_q.to(torch.long)
    if int(bounds[0]) != 0 or int(bounds[-1]) != length or bool((bounds.diff() < 0).any()):
        raise ValueError(
            f"mhsa attention: cu_seq_lens_q {bounds.tolist()} does not split {length} tokens"
        )
    lengths = bounds.diff()
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    # Empty sequences take no tokens: number the remaining ones 0, 1, 2, ...
    ids = torch.unique_consecutive(ids, return_inverse=True)[1]
    return ids.reshape(1, length)


def _with_cu_seq_lens(
    mask: StructuredMask, query: Tensor, kwargs: Dict[str, Any]
) -> StructuredMask:
    """The mask with the packed sequences that ``cu_seq_lens_q`` / ``cu_seq_lens_k`` describe."""
    cu_seq_lens_q = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens_q is None:
        return mask
    if query.shape[0] != 1 or mask.q_length != mask.kv_length:
        raise NotImplementedError(
            "mhsa attention: cu_seq_lens_q is supported for a batch of one packed row without "
            f"a cache; got batch {query.shape[0]}, {mask.q_length} queries, {mask.kv_length} keys"
        )
    if mask.key_padding is not None:
        raise NotImplementedError(
            "mhsa attention: cu_seq_lens_q together with a padding attention_mask is not supported"
        )
    segments = _segments_from_cu_seq_lens(cu_seq_lens_q, kwargs.get("cu_seq_lens_k"), mask.q_length)
    segments = segments.to(query.device)
    if mask.segments is not None:
        if not torch.equal(segments, mask.segments):
            raise ValueError(
                "mhsa attention: the packed sequences of cu_seq_lens_q and of position_ids differ"
            )
        return mask
    return dataclasses.replace(mask, segments=segments)


def _dense_band(
    lower: Optional[int], upper: Optional[int], key_padding: Optional[Tensor], L: int, S: int
) -> Tensor:
    """The boolean ``(N or 1, 1, L, S)`` mask of a band, for bands the op's window cannot express."""
    offsets = torch.arange(S).view(1, S) - torch.arange(L).view(L, 1)
    if key_padding is not None:
        offsets = offsets.to(key_padding.device)
    keep = torch.ones(L, S, dtype=torch.bool, device=offsets.device)
    if lower is not None:
        keep &= offsets >= lower
    if upper is not None:
        keep &= offsets <= upper
    keep = keep.view(1, 1, L, S)
    if key_padding is not None:
        keep = keep & key_padding[:, None, None, :]
    return keep


def _attend_band(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    lower: Optional[int],
    upper: Optional[int],
    key_padding: Optional[Tensor],
    dropout: float,
    scaling: Optional[float],
) -> Tensor:
    """Attention where query i sees key j when ``lower <= j - i <= upper`` and the key is not
    padding, through the op's ``is_causal`` / ``window_size`` (top-left aligned)."""
    L, S = query.shape[2], key.shape[2]
    if lower is not None and 0 < lower < S:
        # Keys before `lower` are out of every query's window: slice them off.
        key, value = key[:, :, lower:], value[:, :, lower:]
        if key_padding is not None:
            key_padding = key_padding[:, lower:]
        S -= lower
        upper = None if upper is None else upper - lower
        lower = 0
    attn_mask: Optional[Tensor] = None
    if key_padding is not None:
        attn_mask = key_padding[:, None, None, :]
    window = [-1, -1]  # the op's (left, right); -1: unbounded
    if (
        (upper is not None and upper < 0)
        or (lower is not None and lower > 0)
        or (lower is not None and upper is not None and lower > upper)
    ):
        # Some queries see no key at all (the band ends before the first key or starts after
        # the last): a window cannot say that, a mask can. No transformers model asks for it.
        attn_mask = _dense_band(lower, upper, key_padding, L, S)
    else:
        if lower is not None and -lower < L - 1:
            window[0] = -lower
        if upper is not None and upper < S - 1:
            window[1] = upper
    is_causal = window[1] == 0
    if is_causal:
        window[1] = -1
    return mhsa.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
        window_size=None if window == [-1, -1] else (window[0], window[1]),
    )


def _attend_packed(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: StructuredMask,
    dropout: float,
    scaling: Optional[float],
) -> Tensor:
    """Attention within packed sequences: unpacks them into a right-padded batch (one row per
    sequence), attends with the mask's band, and packs the outputs back."""
    segments = mask.segments
    assert segments is not None
    N, L = segments.shape
    steps = segments[:, 1:] - segments[:, :-1]
    if bool((segments[:, 0] != 0).any()) or bool(((steps != 0) & (steps != 1)).any()):
        raise ValueError("mhsa attention: packed sequence ids must count up from 0 in each row")
    counts = segments[:, -1] + 1
    first_id = counts.cumsum(0) - counts
    sequence = (segments + first_id[:, None]).reshape(-1)  # of each token, over all rows
    B = int(counts.sum())
    lengths = torch.bincount(sequence, minlength=B)
    starts = lengths.cumsum(0) - lengths
    index = torch.arange(N * L, device=sequence.device) - starts[sequence]  # within its sequence
    longest = int(lengths.max())

    def unpack(x: Tensor) -> Tensor:  # (N, H, L, D) -> (B, H, longest, D)
        rows = x.transpose(1, 2).reshape(N * L, x.shape[1], x.shape[3])
        padded = rows.new_zeros(B, longest, x.shape[1], x.shape[3])
        return padded.index_put((sequence, index), rows).transpose(1, 2)

    key_padding = None
    if mask.upper is None or mask.upper > 0:
        # Keys after a query are visible: the padding at the end of each row must be masked.
        key_padding = torch.arange(longest, device=lengths.device)[None, :] < lengths[:, None]
    out = _attend_band(
        unpack(query),
        unpack(key),
        unpack(value),
        mask.lower,
        mask.upper,
        key_padding,
        dropout,
        scaling,
    )
    rows = out.transpose(1, 2)[sequence, index]  # (N * L, H, Ev)
    return rows.reshape(N, L, out.shape[1], out.shape[3]).transpose(1, 2)


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Union[StructuredMask, Tensor, None],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs: Any,
) -> Tuple[Tensor, None]:
    """One attention call of a transformers model, computed by :func:`mhsa.scaled_dot_product_attention`.

    The signature is the one transformers gives every function of its ``AttentionInterface``
    (see ``transformers.integrations.sdpa_attention``).

    Args:
        module: the model's attention layer (its ``is_causal`` is read when no mask is given).
        query: ``(N, H, L, E)``.
        key: ``(N, H_kv, S, E)``; H must be a multiple of H_kv (grouped-query attention).
        value: ``(N, H_kv, S, Ev)``.
        attention_mask: what :func:`attention_mask` built (a :class:`StructuredMask`), a 4-D
            tensor (boolean, True = attend, or additive float) broadcastable to
            ``(N, H, L, S)``, or None (then causal per ``is_causal`` / ``module.is_causal``,
            bottom-right aligned when S > L, with ``sliding_window`` if given).
        dropout: dropout probability on the attention weights.
        scaling: the score scale (default ``E ** -0.5``).
        sliding_window: the model's window, used only when no mask is given (the mask already
            says it otherwise).
        softcap: must be None (see :func:`_refuse_unsupported`).
        is_causal: overrides ``module.is_causal`` when no mask is given.
        **kwargs: ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (packed sequences, batch of one row) are
            honoured; ``s_aux``, ``sinks``, ``position_bias`` and ``output_attentions=True`` are
            refused; the rest (``position_ids``, ``max_length_q``, ...) is not needed.

    Returns:
        ``(output, None)``: ``output`` is ``(N, L, H, Ev)``, as transformers expects; there are
        no attention weights.

    Raises:
        NotImplementedError: the call asks for a feature the op does not have.
    """
    _refuse_unsupported(module, softcap, kwargs)
    if attention_mask is None:
        attention_mask = _mask_without_tensor(module, query, key, is_causal, sliding_window)
    if isinstance(attention_mask, StructuredMask):
        mask = attention_mask
        if (mask.q_length, mask.kv_length) != (query.shape[2], key.shape[2]):
            raise ValueError(
                f"mhsa attention: the mask is for {mask.q_length} queries and {mask.kv_length} "
                f"keys, the call has {query.shape[2]} and {key.shape[2]}"
            )
        mask = _with_cu_seq_lens(mask, query, kwargs)
        if mask.segments is not None:
            out = _attend_packed(query, key, value, mask, dropout, scaling)
        else:
            out = _attend_band(
                query, key, value, mask.lower, mask.upper, mask.key_padding, dropout, scaling
            )
    elif isinstance(attention_mask, Tensor):
        if kwargs.get("cu_seq_lens_q") is not None:
            raise NotImplementedError(
                "mhsa attention: cu_seq_lens_q together with a 4-D attention mask is not supported"
            )
        if attention_mask.dtype != torch.bool:
            attention_mask = attention_mask.to(query.dtype)
        out = mhsa.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    else:
        raise TypeError(
            f"mhsa attention: unsupported attention_mask of type {type(attention_mask).__name__}"
        )
    return out.transpose(1, 2).contiguous(), None
