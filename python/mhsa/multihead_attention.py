"""``mhsa.MultiheadAttention``: a drop-in for all of ``nn.MultiheadAttention``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .modules import check_head_arguments


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` computed by mhsa's C++ operators: self- and cross-attention.

    The same constructor, parameters (names, shapes, initialization, ``state_dict`` keys) and
    ``forward`` as ``nn.MultiheadAttention``, so state dicts load both ways: a packed
    ``in_proj_weight`` when ``kdim == vdim == embed_dim``, else ``q_proj_weight``,
    ``k_proj_weight`` and ``v_proj_weight``; ``bias_k``/``bias_v`` with ``add_bias_kv``; a zero
    key and value appended with ``add_zero_attn``. Query and key lengths may differ.

    The op is ``torch.ops.mhsa.multi_head_attention``: the projections are GEMMs and the
    attention core is mhsa's fused kernel, forward and backward, in O(L) memory. Self-attention
    (``attn(x, x, x)``) with the packed projection runs :class:`mhsa.MultiheadSelfAttention`'s
    fused op. Beyond nn: ``is_causal=True`` needs no ``attn_mask`` (if one is given, both apply;
    with L != S the causal mask is top-left aligned, key j visible to query i iff j <= i), a
    ``window_size``, and a query whose keys are all masked gets zero attention instead of NaN.
    """

    __constants__ = ["batch_first"]

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """Creates the parameters, initialized as nn.MultiheadAttention does."""
        check_head_arguments(embed_dim, num_heads, dropout)
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if not self._qkv_same_embed_dim:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory_kwargs))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **factory_kwargs))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **factory_kwargs))
            self.register_parameter("in_proj_weight", None)
        else:
            self.in_proj_weight = nn.Parameter(
                torch.empty((3 * embed_dim, embed_dim), **factory_kwargs)
            )
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory_kwargs))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(
            embed_dim, embed_dim, bias=bias, **factory_kwargs
        )
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, embed_dim), **factory_kwargs))
            self.bias_v = nn.Parameter(torch.empty((1, 1, embed_dim), **factory_kwargs))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        window_size: Tuple[int, int] = (-1, -1),
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention of ``query`` over ``key``/``value``; nn.MultiheadAttention's arguments.

        Args:
            query: ``(L, N, E)``, ``(N, L, E)`` with ``batch_first``, or unbatched ``(L, E)``.
            key: ``(S, N, kdim)`` (or batch first / unbatched like ``query``).
            value: ``(S, N, vdim)``.
            key_padding_mask: ``(N, S)`` (unbatched ``(S)``); bool (True = ignore that key) or
                float (added to the scores).
            need_weights: also return the attention weights.
            attn_mask: ``(L, S)`` or ``(N*num_heads, L, S)``; bool (True = may not attend) or
                float (added to the scores).
            average_attn_weights: average the returned weights over the heads.
            is_causal: causal mask (top-left aligned); no ``attn_mask`` needed.
            window_size: ``(left, right)``: query i sees key j only if
                ``i - left <= j <= i + right`` (-1: unbounded on that side).

        Returns:
            ``(attn_output, attn_weights)``: output ``(L, N, E)`` (like ``query``); weights
            ``(N, L, S')`` or ``(N, H, L, S')`` (S' counts the keys ``add_bias_kv`` and
            ``add_zero_attn`` add), or None when ``need_weights`` is False.
        """
        if attn_mask is not None and not torch.jit.is_scripting():
            # As in MultiheadSelfAttention.forward: with a mask given, is_causal is only nn's
            # hint; an is_causal unknown at trace time is dropped (the mask gives the result).
            is_causal = guard_or_false(is_causal)
        output, weights = torch.ops.mhsa.multi_head_attention(
            query,
            key,
            value,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.q_proj_weight,
            self.k_proj_weight,
            self.v_proj_weight,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.out_proj.weight,
            self.out_proj.bias,
            self.dropout,
            self.training,
            self.batch_first,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
            [window_size[0], window_size[1]],
        )
        if need_weights:
            return output, weights
        return output, None

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiheadAttention":
        """Builds an mhsa module with a copy of the weights, dropout and layout of ``module``."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        weight = module.out_proj.weight
        converted = cls.shaped_like(module, device=weight.device, dtype=weight.dtype)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted

    @classmethod
    def shaped_like(
        cls,
        module: nn.MultiheadAttention,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "MultiheadAttention":
        """A freshly initialized mhsa module with ``module``'s constructor arguments."""
        return cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            device=device,
            dtype=dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"bias={self.in_proj_bias is not None}, add_bias_kv={self.bias_k is not None}, "
            f"add_zero_attn={self.add_zero_attn}, kdim={self.kdim}, vdim={self.vdim}, "
            f"batch_first={self.batch_first}"
        )
