"""Helpers of test_transformers_integration.py: tiny randomly initialised transformers models
(no downloads) and one training pass (logits, loss, every parameter gradient) under a chosen
attention implementation. The assertions live in the test file."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from mhsa_testutils import attention_core


def cache_argument() -> str:
    """The name of the KV-cache argument of models and mask factories: "cache" in recent
    transformers (5.25), "past_key_values" before (5.22 and older; 5.25 still accepts it, with
    a deprecation message)."""
    from transformers import masking_utils

    parameters = inspect.signature(masking_utils.create_causal_mask).parameters
    return "cache" if "cache" in parameters else "past_key_values"


# Large enough weights that attention is far from uniform, so that a dropped mask changes the
# outputs by much more than any tolerance (transformers' default, 0.02, gives near-uniform
# attention in a tiny model).
INIT_STD = 0.3

# The sizes every tiny decoder config shares (4 query heads over 2 key/value heads).
TINY_DECODER = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=INIT_STD,
    tie_word_embeddings=False,
)


def tiny_llama_config(**overrides):
    """Llama with grouped-query attention: 4 query heads share 2 key/value heads."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY_DECODER, **overrides})


def tiny_mistral_config(sliding_window: Optional[int], **overrides):
    """Mistral (every layer sliding-window attention) with grouped-query attention."""
    from transformers import MistralConfig

    return MistralConfig(**{**TINY_DECODER, "sliding_window": sliding_window, **overrides})


def tiny_bert_config(**overrides):
    """BERT (bidirectional attention) without dropout, so that gradients are deterministic."""
    from transformers import BertConfig

    shared = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "initializer_range",
    )
    settings = dict(
        {name: TINY_DECODER[name] for name in shared},
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def build(model_class, config, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The model with random weights (seeded), in dtype, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    model = model_class(config)
    return model.to(dtype).eval()


@dataclasses.dataclass
class Run:
    """What one training pass produced."""

    logits: Tensor
    loss: Tensor
    grads: Dict[str, Tensor]


def training_pass(model: nn.Module, implementation: str, **inputs) -> Run:
    """Forward (with labels, so with the model's loss) and backward of a copy of ``model``
    under ``attn_implementation=implementation``; the copy keeps the gradients out of
    ``model``."""
    model = copy.deepcopy(model)
    model.set_attn_implementation(implementation)
    output = model(**inputs)
    output.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return Run(output.logits.detach(), output.loss.detach(), grads)


def logits(model: nn.Module, implementation: str, **inputs) -> Tensor:
    """Forward only, no gradients."""
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**inputs).logits


EXACT_EAGER = "eager_exact"


def _exact_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
):
    """transformers' eager attention (``eager_attention_forward`` of modeling_llama) with the
    softmax in the inputs' dtype: the suite's formula (mhsa_testutils.attention_core) on eager's
    additive mask. Eager's own softmax runs in float32, so a float64 model under "eager" is only
    float32-accurate, and a query with every key masked (left padding) turns float64's finfo.min
    mask into -inf and gives NaN, which then reaches every position."""
    assert dropout == 0.0, "the reference has no dropout"
    masks = [] if attention_mask is None else [attention_mask]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out, weights, _ = attention_core(query, key, value, masks=masks, scale=scale)
    return out.transpose(1, 2).contiguous(), weights


def register_references() -> None:
    """Registers mhsa ("mhsa") and the float64 reference ``EXACT_EAGER`` (eager's masks, the
    attention above) with transformers."""
    from transformers import AttentionInterface, AttentionMaskInterface, masking_utils

    import mhsa.integrations.transformers

    mhsa.integrations.transformers.register()
    AttentionInterface.register(EXACT_EAGER, _exact_eager_attention)
    AttentionMaskInterface.register(EXACT_EAGER, masking_utils.eager_mask)


def reference_implementation(dtype: torch.dtype) -> str:
    """The implementation mhsa is compared with in ``dtype``: transformers' eager attention,
    in float64 without its float32 softmax (see _exact_eager_attention)."""
    return EXACT_EAGER if dtype == torch.float64 else "eager"
