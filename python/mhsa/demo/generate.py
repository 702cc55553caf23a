"""Greedy generation with the trained model: with mhsa's KV cache, and by recomputing the prefix.

The model predicts, at every position, the target of the task; generation feeds each prediction
back as the next input token (greedy, argmax). With the cache every step runs the new token
through the layers once (``MultiheadSelfAttention.decode``: O(L*E) attention per token); without
it every step runs the whole prefix again (a causal forward of O(L^2*E)). Both must choose the
same tokens; the demo times the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List

import torch
from torch import Tensor

import mhsa
from mhsa.demo.model import TinyTransformer


def _step_logits(
    model: TinyTransformer, tokens: Tensor, start: int, caches: List[mhsa.KVCache]
) -> Tensor:
    """Logits ``(N, T, V)`` of ``tokens`` ``(N, T)`` at positions ``start..start+T-1``, given the
    caches that hold positions ``0..start-1``; appends the new tokens to the caches."""
    positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
    x = model.token_embedding(tokens) + model.position_embedding(positions)
    for block, cache in zip(model.blocks, caches):
        attn = block.attn
        assert isinstance(attn, mhsa.MultiheadSelfAttention), "decoding needs the mhsa model"
        x = x + attn.decode(block.ln_attn(x), cache)
        x = x + block.mlp(block.ln_mlp(x))
    return model.classifier(model.ln_final(x))


@torch.no_grad()
def generate_with_cache(model: TinyTransformer, prompt: Tensor, new_tokens: int) -> Tensor:
    """``prompt`` ``(N, P)`` followed by ``new_tokens`` greedy tokens, decoded with KV caches."""
    caches = [
        block.attn.new_kv_cache(prompt.size(0), prompt.size(1) + new_tokens)
        for block in model.blocks
    ]
    logits = _step_logits(model, prompt, 0, caches)
    tokens = [prompt]
    for i in range(new_tokens):
        next_token = logits[:, -1:].argmax(dim=-1)
        tokens.append(next_token)
        if i + 1 < new_tokens:
            logits = _step_logits(model, next_token, prompt.size(1) + i, caches)
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def generate_by_recomputing(model: TinyTransformer, prompt: Tensor, new_tokens: int) -> Tensor:
    """The same generation without a cache: a causal forward over the whole prefix per token."""
    tokens = prompt
    for _ in range(new_tokens):
        next_token = model(tokens)[:, -1:].argmax(dim=-1)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens


@dataclass
class GenerationResult:
    """Generated sequences and the speed of the two ways of producing them."""

    prompt_length: int
    new_tokens: int
    sequences: List[List[int]]
    """Prompt followed by the generated tokens, one list per sequence (from the cached run)."""
    same_tokens: bool
    """Whether generation with the cache chose exactly the tokens of recomputing the prefix."""
    tokens_per_second_cache: float
    tokens_per_second_recompute: float


def _best_seconds(run: Callable[[], Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def compare_generation(
    model: TinyTransformer, prompts: Tensor, new_tokens: int, repeats: int = 5
) -> GenerationResult:
    """Generates ``new_tokens`` after each prompt both ways, checks they agree, times them.

    Args:
        model: the trained mhsa model (put in eval mode here).
        prompts: ``(N, P)`` token ids; ``P + new_tokens`` must not exceed the model's length.
        new_tokens: tokens to generate per sequence.
        repeats: timing runs of each method; the fastest counts (the least disturbed by other
            work on the machine).
    """
    model.eval()
    cached = generate_with_cache(model, prompts, new_tokens)
    recomputed = generate_by_recomputing(model, prompts, new_tokens)
    generated = prompts.size(0) * new_tokens
    seconds_cache = _best_seconds(lambda: generate_with_cache(model, prompts, new_tokens), repeats)
    seconds_recompute = _best_seconds(
        lambda: generate_by_recomputing(model, prompts, new_tokens), repeats
    )
    return GenerationResult(
        prompt_length=prompts.size(1),
        new_tokens=new_tokens,
        sequences=cached.tolist(),
        same_tokens=bool(torch.equal(cached, recomputed)),
        tokens_per_second_cache=generated / seconds_cache,
        tokens_per_second_recompute=generated / seconds_recompute,
    )
