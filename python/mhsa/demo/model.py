"""The demo's model: a tiny causal transformer on mhsa's attention or nn.MultiheadAttention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

import mhsa
from mhsa.demo.task import TaskConfig


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the small transformer."""

    d_model: int = 64
    num_heads: int = 2
    num_layers: int = 1
    d_mlp: int = 256


class Block(nn.Module):
    """One pre-LayerNorm transformer layer: causal self-attention, then an MLP, each residual."""

    def __init__(self, config: ModelConfig, use_mhsa: bool) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        if use_mhsa:
            self.attn = mhsa.MultiheadSelfAttention(
                config.d_model, config.num_heads, batch_first=True
            )
        else:
            self.attn = nn.MultiheadAttention(config.d_model, config.num_heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_mlp),
            nn.GELU(),
            nn.Linear(config.d_mlp, config.d_model),
        )

    def forward(
        self, x: Tensor, causal_mask: Optional[Tensor], need_weights: bool
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Returns the new residual stream and, if asked, the per-head weights (N, H, L, L)."""
        h = self.ln_attn(x)
        attended, weights = self.attn(
            h,
            h,
            h,
            attn_mask=causal_mask,
            need_weights=need_weights,
            average_attn_weights=False,
            is_causal=True,
        )
        x = x + attended
        x = x + self.mlp(self.ln_mlp(x))
        return x, weights


class TinyTransformer(nn.Module):
    """Token + position embeddings, causal transformer layers, and a per-position classifier.

    With ``use_mhsa`` the attention is ``mhsa.MultiheadSelfAttention`` called with
    ``is_causal=True`` and no mask; otherwise ``nn.MultiheadAttention``, which needs an explicit
    causal mask. Both have the same parameter names, so state dicts load both ways.
    """

    def __init__(self, task: TaskConfig, config: ModelConfig, use_mhsa: bool) -> None:
        super().__init__()
        self.explicit_causal_mask = not use_mhsa
        self.token_embedding = nn.Embedding(task.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(task.seq_len, config.d_model)
        self.blocks = nn.ModuleList([Block(config, use_mhsa) for _ in range(config.num_layers)])
        self.ln_final = nn.LayerNorm(config.d_model)
        self.classifier = nn.Linear(config.d_model, task.vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(N, L, V)`` for a LongTensor of token ids ``(N, L)``, L <= seq_len."""
        logits, _ = self.run(tokens, False)
        return logits

    def run(self, tokens: Tensor, need_weights: bool) -> Tuple[Tensor, List[Tensor]]:
        """Logits and, if ``need_weights``, each layer's per-head weights ``(N, H, L, L)``."""
        length = tokens.size(1)
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        causal_mask: Optional[Tensor] = None
        if self.explicit_causal_mask:
            causal_mask = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        all_weights: List[Tensor] = []
        for block in self.blocks:
            x, weights = block(x, causal_mask, need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.classifier(self.ln_final(x)), all_weights
