"""``mhsa.MultiheadSelfAttention``: a drop-in for self-attention ``nn.MultiheadAttention``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from . import functional
from .kv_cache import KVCache, empty_kv_cache


def check_head_arguments(embed_dim: int, num_heads: int, dropout: float) -> None:
    """The constructor checks the mhsa modules share with nn.MultiheadAttention (ValueError)."""
    if embed_dim <= 0 or num_heads <= 0:
        raise ValueError(
            f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} "
            f"and num_heads={num_heads} instead"
        )
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention computed by mhsa's C++ operator.

    Every token is projected into a query, a key and a value for each of ``num_heads`` heads;
    each head scores every query against every key (scaled dot product), turns the scores into
    weights with a softmax and takes the weighted sum of the values; the heads' outputs are
    concatenated and projected once more.

    Parameters, their names, shapes, initialization and ``state_dict`` keys are exactly those of
    ``nn.MultiheadAttention(embed_dim, num_heads, dropout, bias, batch_first=...)``
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``), so state
    dicts load both ways. Differences: ``is_causal=True`` needs no ``attn_mask``, and a query
    whose keys are all masked gets zero attention instead of NaN.

    The module works in eager mode, under ``torch.compile`` (``fullgraph=True``, static or dynamic
    shapes), ``torch.export`` / AOTInductor, TorchScript and ``torch.autocast("cpu",
    dtype=torch.bfloat16)``. :meth:`from_torch` builds one from an ``nn.MultiheadAttention``
    (copying its weights); :func:`mhsa.replace_attention` swaps mhsa into a whole model in place
    (sharing them).

    Args:
        embed_dim: total dimension E of the model.
        num_heads: number of heads H; must divide ``embed_dim``.
        dropout: dropout probability on the attention weights (training mode only).
        bias: add ``in_proj_bias`` and ``out_proj.bias``.
        batch_first: inputs and outputs are ``(N, L, E)`` instead of ``(L, N, E)``.
        device, dtype: factory arguments for the parameters.
        num_kv_heads: grouped-query attention (Llama, Mistral): H_kv key/value heads shared by
            the ``num_heads`` query heads (H a multiple of H_kv), ``in_proj_weight`` of shape
            ``((H + 2 H_kv) D, E)`` (D = E / H: query rows, then key rows, then value rows) and
            KV caches of H_kv heads. None: H_kv = H, nn.MultiheadAttention's layout.
    """

    __constants__ = ["batch_first"]

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        num_kv_heads: Optional[int] = None,
    ) -> None:
        """Creates the parameters, initialized as nn.MultiheadAttention does (see the class)."""
        check_head_arguments(embed_dim, num_heads, dropout)
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if kv_heads <= 0 or num_heads % kv_heads != 0:
            raise ValueError(
                f"num_kv_heads ({num_kv_heads}) must be positive and divide num_heads ({num_heads})"
            )
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_kv_heads = kv_heads
        self.embed_dim = embed_dim
        self.kdim = embed_dim
        self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        rows = (num_heads + 2 * kv_heads) * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty((rows, embed_dim), **factory_kwargs))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(rows, **factory_kwargs))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(
            embed_dim, embed_dim, bias=bias, **factory_kwargs
        )
        # Attributes nn.MultiheadAttention has and that code inspecting it reads.
        self.bias_k = None
        self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
        if self.out_proj.bias is not None:
            nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        window_size: Tuple[int, int] = (-1, -1),
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Self-attention over ``query``; same arguments and returns as nn.MultiheadAttention.

        Args:
            query: ``(L, N, E)``, ``(N, L, E)`` with ``batch_first``, or unbatched ``(L, E)``.
            key, value: omitted, or the very same tensor as ``query`` (so that ``attn(x, x, x)``
                works); anything else is cross-attention, which mhsa does not support
                (``ValueError``).
            key_padding_mask: ``(N, L)`` (unbatched ``(L)``); bool (True = ignore that key) or
                float (added to the scores).
            need_weights: also return the attention weights.
            attn_mask: ``(L, L)`` or ``(N*num_heads, L, L)``; bool (True = may not attend) or
                float (added to the scores).
            average_attn_weights: average the returned weights over the heads.
            is_causal: apply a causal mask; unlike nn.MultiheadAttention no ``attn_mask`` is
                needed (if one is given, both apply).
            window_size: ``(left, right)``: sliding-window attention, query i sees key j only if
                ``i - left <= j <= i + right`` (-1: unbounded on that side); beyond
                nn.MultiheadAttention, combined with every other mask.

        Returns:
            ``(attn_output, attn_weights)``: output shaped like ``query``; weights ``(N, L, L)``
            averaged over heads or ``(N, H, L, L)`` (unbatched: without N), or None when
            ``need_weights`` is False.
        """
        if key is not None:
            if key is not query:
                raise ValueError(
                    "mhsa.MultiheadSelfAttention: key must be the query tensor itself "
                    "(self-attention); cross-attention is not supported"
                )
        if value is not None:
            if value is not query:
                raise ValueError(
                    "mhsa.MultiheadSelfAttention: value must be the query tensor itself "
                    "(self-attention); cross-attention is not supported"
                )
        if attn_mask is not None and not torch.jit.is_scripting():
            # nn.TransformerEncoder(Layer) derives is_causal from the values of its mask; under
            # torch.compile/torch.export that is a data-dependent SymBool, which the op's bool
            # argument cannot take. With a mask given it is only the hint "attn_mask is causal"
            # (nn.MultiheadAttention's meaning) and the mask alone gives the same result, so an
            # is_causal that is unknown at trace time is dropped; a plain bool passes unchanged.
            is_causal = guard_or_false(is_causal)
        return functional.multi_head_self_attention(
            query,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            dropout_p=self.dropout,
            training=self.training,
            batch_first=self.batch_first,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
            window_size=window_size,
            num_kv_heads=None if self.num_kv_heads == self.num_heads else self.num_kv_heads,
        )

    def merge_masks(
        self,
        attn_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        query: Tensor,
    ) -> Tuple[Optional[Tensor], Optional[int]]:
        """``nn.MultiheadAttention.merge_masks``, for code written against nn.MultiheadAttention.

        PyTorch's fused ``nn.TransformerEncoderLayer`` path calls it (that path is turned off for
        mhsa modules by :func:`mhsa.replace_attention`, but TorchScript compiles it all the same).
        Returns ``(merged_mask, mask_type)``: type 1 for a key padding mask alone, type 2 for an
        attention mask (with the padding mask added), ``(None, None)`` without masks.
        """
        mask_type: Optional[int] = None
        merged_mask: Optional[Tensor] = None
        if key_padding_mask is not None:
            mask_type = 1
            merged_mask = key_padding_mask
        if attn_mask is not None:
            batch_size, seq_len, _ = query.shape
            mask_type = 2
            if attn_mask.dim() == 3:
                attn_mask_expanded = attn_mask.view(batch_size, -1, seq_len, seq_len)
            else:
                attn_mask_expanded = attn_mask.view(1, 1, seq_len, seq_len).expand(
                    batch_size, self.num_heads, -1, -1
                )
            merged_mask = attn_mask_expanded
            if key_padding_mask is not None:
                key_padding_mask_expanded = key_padding_mask.view(batch_size, 1, 1, seq_len).expand(
                    -1, self.num_heads, -1, -1
                )
                merged_mask = attn_mask_expanded + key_padding_mask_expanded
        return merged_mask, mask_type

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiheadSelfAttention":
        """Builds an mhsa module with the weights, dropout and layout of ``module``.

        ``module`` must be shaped for self-attention: packed in-projection (kdim = vdim =
        embed_dim), no ``add_bias_kv``, no ``add_zero_attn``.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        if not module._qkv_same_embed_dim:
            raise ValueError("mhsa: kdim/vdim different from embed_dim is not supported")
        if module.bias_k is not None or module.bias_v is not None:
            raise ValueError("mhsa: add_bias_kv is not supported")
        if module.add_zero_attn:
            raise ValueError("mhsa: add_zero_attn is not supported")
        weight = module.in_proj_weight
        converted = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            batch_first=module.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        converted.load_state_dict(module.state_dict())
        # load_state_dict copies into parameters of weight.dtype; keep any parameter of another
        # dtype (e.g. an in_proj_bias nn.MultiheadAttention accepts in float32 next to float64
        # weights) in its own dtype, as the source module has it.
        for name, source in module.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = converted.get_submodule(owner_name) if owner_name else converted
            if getattr(owner, leaf).dtype != source.dtype:
                setattr(
                    owner,
                    leaf,
                    nn.Parameter(source.detach().clone(), requires_grad=source.requires_grad),
                )
        converted.train(module.training)
        return converted

    @torch.jit.export
    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
    ) -> KVCache:
        """An empty :class:`mhsa.KVCache` for :meth:`decode`.

        Args:
            batch_size: number of sequences N decoded together.
            max_len: the most tokens each sequence may reach (prompt and generated ones).
            dtype, device: of the cached keys and values; default those of ``in_proj_weight``.
                The tokens given to :meth:`decode` must have this dtype.
        """
        cache_dtype = self.in_proj_weight.dtype if dtype is None else dtype
        cache_device = self.in_proj_weight.device if device is None else device
        return empty_kv_cache(
            batch_size, max_len, self.num_kv_heads, self.head_dim, cache_dtype, cache_device
        )

    @torch.jit.export
    def decode(self, x_new: Tensor, cache: KVCache) -> Tensor:
        """Outputs of the next tokens of each sequence, using and extending the KV cache.

        Appends the keys and values of ``x_new`` to ``cache`` in place (and advances
        ``cache.length``); each new token attends to the cached tokens and to the new tokens up
        to itself, so the result equals the matching rows of ``self(whole_sequence,
        is_causal=True)`` in eval mode, at O(L*E + E^2) per token instead of O(L^2*E).
        Inference only: runs under ``torch.no_grad()`` and never applies dropout.

        Args:
            x_new: the next T >= 1 tokens, ``(N, T, E)`` with ``batch_first``, else
                ``(T, N, E)``; the cache's dtype.
            cache: from :meth:`new_kv_cache` with the same N; must have room for T more tokens.

        Returns:
            The outputs of the new tokens, shaped like ``x_new``.
        """
        in_proj_bias = self.in_proj_bias
        if in_proj_bias is not None and in_proj_bias.dtype != x_new.dtype:
            # as in forward: a bias of another floating dtype is cast like F.linear does
            if in_proj_bias.is_floating_point() and x_new.is_floating_point():
                in_proj_bias = in_proj_bias.to(x_new.dtype)
        with torch.no_grad():
            if self.num_kv_heads != self.num_heads:
                output = self._decode_grouped(x_new, in_proj_bias, cache)
            else:
                output = functional.decode_step(
                    x_new,
                    self.in_proj_weight,
                    in_proj_bias,
                    self.out_proj.weight,
                    self.out_proj.bias,
                    self.num_heads,
                    self.batch_first,
                    cache.key,
                    cache.value,
                    cache.length,
                )
        return output

    def _decode_grouped(
        self, x_new: Tensor, in_proj_bias: Optional[Tensor], cache: KVCache
    ) -> Tensor:
        """decode with grouped-query heads: the new keys and values go into the H_kv-head cache,
        and the new queries attend to the cache through the fused attention op, causally with
        the diagonal at the cached length (query t sits at position length + t)."""
        x = x_new if self.batch_first else x_new.transpose(0, 1)
        if x.dim() != 3 or x.shape[2] != self.embed_dim:
            raise ValueError(
                f"decode: expected x_new of 3 dims with embed_dim {self.embed_dim} last, got "
                f"shape {list(x_new.shape)}"
            )
        N, T = x.shape[0], x.shape[1]
        H, H_kv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if cache.key.shape[0] != N or cache.key.shape[1] != H_kv or cache.key.dtype != x.dtype:
            raise ValueError(
                f"decode: the cache holds {list(cache.key.shape)} {cache.key.dtype}, expected "
                f"({N}, {H_kv}, max_len, {D}) {x.dtype}"
            )
        start = int(cache.length.item())
        end = start + T
        if end > cache.key.shape[2]:
            raise ValueError(
                f"decode: the cache has room for {cache.key.shape[2] - start} more tokens, got {T}"
            )
        q, k, v = F.linear(x, self.in_proj_weight, in_proj_bias).split(
            [H * D, H_kv * D, H_kv * D], -1
        )
        cache.key[:, :, start:end] = k.unflatten(-1, (H_kv, D)).transpose(1, 2)
        cache.value[:, :, start:end] = v.unflatten(-1, (H_kv, D)).transpose(1, 2)
        cache.length.add_(T)
        context = torch.ops.mhsa._attention_block_forward(
            q.unflatten(-1, (H, D)).transpose(1, 2),
            cache.key[:, :, :end],
            cache.value[:, :, :end],
            None,
            0.0,
            True,
            None,
            [-1, -1],
            False,
            True,
            start,
        )[0]
        output = F.linear(
            context.transpose(1, 2).flatten(2), self.out_proj.weight, self.out_proj.bias
        )
        return output if self.batch_first else output.transpose(0, 1)

    def extra_repr(self) -> str:
        kv = "" if self.num_kv_heads == self.num_heads else f", num_kv_heads={self.num_kv_heads}"
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}{kv}"
        )

    @torch.jit.export
    def forward_packed(
        self,
        x: Tensor,
        cu_seqlens: Tensor,
        max_seqlen: Optional[int] = None,
        is_causal: bool = False,
        window_size: Tuple[int, int] = (-1, -1),
    ) -> Tensor:
        """Self-attention over packed variable-length sequences (``batch_first`` does not apply).

        Args:
            x: ``(T, E)``, B sequences back to back.
            cu_seqlens: ``(B + 1,)`` int32 or int64 offsets from 0 to T: sequence ``b`` is
                ``x[cu_seqlens[b]:cu_seqlens[b + 1]]`` and attends only to itself.
            max_seqlen: optional bound on the sequence lengths, checked.
            is_causal: causal mask within each sequence.
            window_size: ``(left, right)`` sliding window, -1 for an unbounded side.

        Returns:
            ``(T, E)``; equal to running each sequence alone through :meth:`forward` (see
            :func:`mhsa.functional.multi_head_self_attention_packed`).
        """
        if self.num_kv_heads != self.num_heads:
            raise NotImplementedError(
                "forward_packed: grouped-query heads (num_kv_heads) are not supported by the "
                "packed op; run the sequences as a padded batch with a key_padding_mask"
            )
        return functional.multi_head_self_attention_packed(
            x,
            cu_seqlens,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            max_seqlen=max_seqlen,
            dropout_p=self.dropout,
            training=self.training,
            is_causal=is_causal,
            window_size=window_size,
        )
