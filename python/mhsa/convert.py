"""``mhsa.replace_attention``: put mhsa into an existing model in place of nn.MultiheadAttention."""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, TypeVar

import torch
from torch import nn

from .modules import MultiheadSelfAttention
from .multihead_attention import MultiheadAttention

__all__ = ["SkippedAttention", "replace_attention"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SUPPORTED_DEVICES = ("cpu", "meta")
# Hook tables that nn.Module.__call__ runs around forward(). The replacement takes over the very
# same dictionaries, so hooks registered on the old module keep running (their handles still
# remove them): the two modules' forward signatures are the same.
_FORWARD_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


class SkippedAttention(NamedTuple):
    """An ``nn.MultiheadAttention`` that :func:`replace_attention` left in place, and why."""

    name: str
    """Qualified name of the module inside the model (as in ``model.named_modules()``)."""
    reason: str
    """Why mhsa cannot serve it."""


def _why_not_convertible(
    parent: Optional[nn.Module], child_name: str, module: nn.MultiheadAttention
) -> Optional[str]:
    """None if ``module`` (``parent.<child_name>``) can become an mhsa module, else why not."""
    if type(module) is not nn.MultiheadAttention:
        return f"{type(module).__qualname__} is a subclass of nn.MultiheadAttention (its forward may differ)"
    weight = module.out_proj.weight
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"):
        parameter = getattr(module, name)
        if parameter is not None and parameter.dtype != weight.dtype:
            return (
                f"{name} dtype {parameter.dtype} differs from out_proj.weight dtype {weight.dtype}"
            )
    if module.in_proj_weight is not None:
        weight = module.in_proj_weight
    if weight.dtype not in _SUPPORTED_DTYPES:
        return f"dtype {weight.dtype} (mhsa supports float32, float64, bfloat16 and float16)"
    # What nn.MultiheadAttention itself runs: out_proj in in_proj_weight's dtype (its input is
    # the attention output in that dtype) and an out_proj.bias of the same dtype. in_proj_bias
    # may be any floating dtype (cast to the input's, as F.linear does).
    out_weight, out_bias = module.out_proj.weight, module.out_proj.bias
    if out_weight.dtype != weight.dtype:
        return f"out_proj.weight dtype {out_weight.dtype} differs from in_proj_weight dtype {weight.dtype}"
    if out_bias is not None and out_bias.dtype != out_weight.dtype:
        return f"out_proj.bias dtype {out_bias.dtype} differs from out_proj.weight dtype {out_weight.dtype}"
    in_bias = module.in_proj_bias
    if in_bias is not None and not in_bias.dtype.is_floating_point:
        return f"in_proj_bias dtype {in_bias.dtype} is not a floating dtype"
    if weight.device.type not in _SUPPORTED_DEVICES:
        return f"device {weight.device} (mhsa has CPU kernels only)"
    return None


def _is_self_attention(parent: Optional[nn.Module], child_name: str, module: nn.MultiheadAttention):
    """Whether ``module`` has self-attention's shape (packed projection, no extra keys) and is not
    a decoder layer's cross-attention: it becomes a MultiheadSelfAttention, else a
    MultiheadAttention."""
    if isinstance(parent, nn.TransformerDecoderLayer) and child_name == "multihead_attn":
        return False
    return (
        module._qkv_same_embed_dim
        and module.bias_k is None
        and module.bias_v is None
        and not module.add_zero_attn
    )


def _share_general(module: nn.MultiheadAttention) -> MultiheadAttention:
    """A MultiheadAttention holding the very same Parameter objects (and out_proj) as ``module``."""
    # Placeholders on the meta device, replaced by module's own parameters below.
    converted = MultiheadAttention.shaped_like(module, device=torch.device("meta"))
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        setattr(converted, name, getattr(module, name))
    converted.in_proj_bias = module.in_proj_bias
    converted.bias_k = module.bias_k
    converted.bias_v = module.bias_v
    converted.out_proj = module.out_proj
    return _take_hooks_and_mode(module, converted)


def _take_hooks_and_mode(module: nn.MultiheadAttention, converted: ModuleT) -> ModuleT:
    """Moves ``module``'s forward hooks and training mode to its replacement ``converted``."""
    for table in _FORWARD_HOOK_TABLES:
        if hasattr(module, table) and hasattr(converted, table):
            setattr(converted, table, getattr(module, table))
    converted.train(module.training)
    return converted


def _share(module: nn.MultiheadAttention) -> MultiheadSelfAttention:
    """An mhsa module that holds the very same Parameter objects (and out_proj) as ``module``."""
    converted = MultiheadSelfAttention(
        module.embed_dim,
        module.num_heads,
        dropout=module.dropout,
        bias=module.in_proj_bias is not None,
        batch_first=module.batch_first,
        device="meta",  # placeholders only; replaced by module's own parameters below
    )
    converted.in_proj_weight = module.in_proj_weight
    converted.in_proj_bias = module.in_proj_bias
    converted.out_proj = module.out_proj
    return _take_hooks_and_mode(module, converted)


def _keep_attention_on_the_module_path(model: nn.Module) -> None:
    """Turns off PyTorch's fused inference path around mhsa modules.

    In eval mode without grad, ``nn.TransformerEncoderLayer.forward`` calls
    ``torch._transformer_encoder_layer_fwd`` with ``self_attn.in_proj_weight`` & co. instead of
    calling ``self_attn``, and ``nn.TransformerEncoder`` turns a padded batch into a nested tensor
    for it; either would bypass mhsa. A layer whose ``activation_relu_or_gelu`` is 0 (what
    PyTorch itself sets for an activation it cannot fuse) never takes the fused path, and an
    encoder whose ``use_nested_tensor`` is False (what its ``__init__`` sets for such a layer)
    keeps dense tensors. Neither attribute has any other effect: the layer still applies its own
    ``activation``.
    """
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and isinstance(
            module.self_attn, (MultiheadSelfAttention, MultiheadAttention)
        ):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder) and any(
            isinstance(layer, nn.TransformerEncoderLayer)
            and isinstance(layer.self_attn, (MultiheadSelfAttention, MultiheadAttention))
            for layer in module.layers
        ):
            module.use_nested_tensor = False


def replace_attention(
    model: ModuleT,
    *,
    include: Optional[Callable[[str, nn.MultiheadAttention], bool]] = None,
    skipped: Optional[List[SkippedAttention]] = None,
) -> ModuleT:
    """Replaces, in place, every ``nn.MultiheadAttention`` in ``model`` by an equivalent mhsa
    module, and returns ``model``.

    Works anywhere in the module tree: inside ``nn.TransformerEncoderLayer``,
    ``nn.TransformerEncoder``, ``nn.TransformerDecoderLayer.self_attn``, ``nn.Transformer`` and
    user modules. Outputs and gradients of the model are unchanged (mhsa computes the same
    function; with dropout > 0 in training mode the random pattern differs).

    **Parameters are shared, not copied**: the new module holds the very same ``Parameter``
    objects (``in_proj_weight``, ``in_proj_bias``) and the very same ``out_proj`` submodule as
    the module it replaces. An optimizer created before the conversion keeps updating the
    model's weights, and ``state_dict`` keys do not change. Forward hooks registered on a
    replaced module move to its replacement. Training/eval mode and ``dropout`` carry over.

    Self-attention modules (packed projection, no ``add_bias_kv``/``add_zero_attn``) become
    :class:`mhsa.MultiheadSelfAttention`; the others, ``nn.TransformerDecoderLayer.multihead_attn``
    (the decoder's cross-attention) included, become :class:`mhsa.MultiheadAttention`, with the
    same sharing of parameters (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``,
    ``bias_k``, ``bias_v`` too).

    Left as they are, and listed in ``skipped`` if given: subclasses of
    ``nn.MultiheadAttention``, dtypes other than float32/float64/bfloat16/float16, parameters of
    mixed dtypes nn itself would not run, parameters on a device other than the CPU (or
    ``meta``), and modules for which ``include(name, module)`` returns False.

    A :class:`mhsa.MultiheadSelfAttention` computes self-attention only. A user module that
    calls a self-attention-shaped ``nn.MultiheadAttention`` as ``attn(q, kv, kv)`` with a
    different key cannot be recognized from the module tree: exclude it with ``include`` (and
    convert it with :meth:`mhsa.MultiheadAttention.from_torch`), or its converted module raises
    a ``ValueError`` when called.

    In eval mode under ``torch.no_grad()``, ``nn.TransformerEncoderLayer`` and
    ``nn.TransformerEncoder`` have a fused fast path that reads the attention weights directly
    and would bypass mhsa. It is turned off for every layer whose ``self_attn`` is an mhsa
    module (by setting the layer's ``activation_relu_or_gelu`` to 0 and the encoder's
    ``use_nested_tensor`` to False, exactly what PyTorch sets for a layer it cannot fuse); the
    layers then compute the same result through their submodules. This also applies to mhsa
    modules that were already in ``model``.

    Args:
        model: the model to convert in place. If ``model`` itself is an
            ``nn.MultiheadAttention``, nothing can be replaced in place: the converted module is
            returned instead (or ``model`` if it is skipped).
        include: optional filter called as ``include(qualified_name, module)`` for each
            candidate; return False to keep that module as it is.
        skipped: optional list; a :class:`SkippedAttention` ``(name, reason)`` is appended to it
            for each ``nn.MultiheadAttention`` left in place.

    Returns:
        ``model``, converted.

    Example::

        layer = nn.TransformerEncoderLayer(64, 8, batch_first=True)
        model = nn.TransformerEncoder(layer, num_layers=2)
        skipped = []
        mhsa.replace_attention(model, skipped=skipped)
        assert isinstance(model.layers[0].self_attn, mhsa.MultiheadSelfAttention)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_attention: expected an nn.Module, got {type(model).__name__}")

    converted: Dict[int, nn.Module] = {}  # id(old module) -> replacement (for shared modules)

    def convert(
        parent: Optional[nn.Module], name: str, child_name: str, module: nn.MultiheadAttention
    ) -> nn.Module:
        if id(module) in converted:
            return converted[id(module)]
        reason = _why_not_convertible(parent, child_name, module)
        if reason is None and include is not None and not include(name, module):
            reason = "excluded by include(name, module)"
        if reason is not None:
            if skipped is not None:
                skipped.append(SkippedAttention(name, reason))
            return module
        if _is_self_attention(parent, child_name, module):
            replacement: nn.Module = _share(module)
        else:
            replacement = _share_general(module)
        converted[id(module)] = replacement
        return replacement

    if isinstance(model, nn.MultiheadAttention):
        return convert(None, "", "", model)  # type: ignore[return-value]

    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                replacement = convert(parent, name, child_name, child)
                if replacement is not child:
                    setattr(parent, child_name, replacement)
    _keep_attention_on_the_module_path(model)
    return model
