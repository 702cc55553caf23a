"""The demo's analysis: what each trained head attends to, measured on held-out data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from mhsa.demo.model import TinyTransformer


def offset_name(offset: int) -> str:
    """Human name of relative offset ``-offset`` (key position minus query position)."""
    if offset == 0:
        return "itself (offset 0)"
    if offset == 1:
        return "the previous token (offset -1)"
    return f"the token {offset} back (offset -{offset})"


def offset_profile(weights: Tensor) -> Tensor:
    """Average attention mass by relative offset, per head.

    Args:
        weights: ``(N, H, L, L)`` causal attention weights.

    Returns:
        ``(H, L)``: entry ``[h, d]`` is head h's weight on the key ``d`` positions before the
        query, averaged over the N examples and the query positions 1..L-1 (those with a
        target); each row sums to 1.
    """
    length = weights.size(-1)
    profile = torch.zeros(weights.size(1), length, dtype=torch.float64)
    for d in range(length):
        diagonal = weights.diagonal(offset=-d, dim1=-2, dim2=-1)  # (N, H, L-d): queries i = d..L-1
        if d == 0:
            diagonal = diagonal[..., 1:]
        profile[:, d] = diagonal.double().sum(dim=(0, 2))
    return profile / (weights.size(0) * (length - 1))


def uniform_profile(length: int) -> Tensor:
    """The offset profile of a head that spreads its weight evenly over every visible key."""
    profile = torch.zeros(length, dtype=torch.float64)
    for query in range(1, length):
        profile[: query + 1] += 1.0 / (query + 1)
    return profile / (length - 1)


@dataclass
class HeadRole:
    """What one head attends to, measured on held-out data."""

    layer: int
    head: int
    description: str
    top_offsets: List[Tuple[int, float]]
    distance_from_uniform: float
    counted_token_mass: float
    counted_token_share: float


def describe_head(
    layer: int,
    head: int,
    profile: Tensor,
    uniform: Tensor,
    counted_token: int,
    counted_mass: float,
    counted_share: float,
) -> HeadRole:
    """Turns one head's offset profile and its weight on the counted token into a sentence.

    A head that puts at least half its weight on one offset is described by that offset (and by
    any other offset with at least 15%); a head whose profile is within 0.25 (total variation)
    of an even spread is described as spreading; anything else by its three largest offsets.
    Every description ends with the head's weight on the counted token (``counted_mass``)
    beside the share of the visible tokens that are that token (``counted_share``).
    """
    order = torch.argsort(profile, descending=True).tolist()
    top = [(d, float(profile[d])) for d in order[:3]]
    distance = 0.5 * float((profile - uniform).abs().sum())
    best, best_mass = top[0]
    if best_mass >= 0.5:
        parts = [f"{offset_name(best)}: {100 * best_mass:.0f}% of its weight"]
        parts += [f"{offset_name(d)}: {100 * mass:.0f}%" for d, mass in top[1:] if mass >= 0.15]
        description = "attends to " + "; ".join(parts)
    elif distance <= 0.25:
        description = (
            "spreads its weight over the whole prefix, close to evenly (total-variation distance "
            f"{distance:.2f} from an even spread; no offset gets more than {100 * best_mass:.0f}%)"
        )
    else:
        mixed = [f"{offset_name(d)}: {100 * mass:.0f}%" for d, mass in top]
        description = "mixes " + ", ".join(mixed)
    description += (
        f"; {100 * counted_mass:.0f}% of its weight is on {counted_token}s, which are "
        f"{100 * counted_share:.0f}% of the tokens it can see"
    )
    return HeadRole(layer, head, description, top, distance, counted_mass, counted_share)


def head_roles(
    model: TinyTransformer, tokens: Tensor, counted_token: int
) -> Tuple[List[HeadRole], List[Tensor]]:
    """Each head's role over held-out ``tokens``, and each layer's weights ``(N, H, L, L)``.

    Like :func:`offset_profile`, the statistics average over the query positions 1..L-1.
    """
    model.eval()
    with torch.no_grad():
        _, weights = model.run(tokens, True)
    model.train()
    length = tokens.size(1)
    uniform = uniform_profile(length)
    is_counted = (tokens == counted_token).double()  # (N, L)
    visible = torch.arange(1, length + 1, dtype=torch.float64)
    counted_share = (is_counted.cumsum(dim=1) / visible)[:, 1:].mean().item()
    roles = []
    for layer, layer_weights in enumerate(weights):
        profile = offset_profile(layer_weights)
        # (N, H, L): each query's weight on the counted token, then the mean over queries 1..L-1.
        counted_mass = (layer_weights.double() * is_counted[:, None, None, :]).sum(dim=-1)
        counted_mass = counted_mass[:, :, 1:].mean(dim=(0, 2))
        for head in range(profile.size(0)):
            roles.append(
                describe_head(
                    layer,
                    head,
                    profile[head],
                    uniform,
                    counted_token,
                    counted_mass[head].item(),
                    counted_share,
                )
            )
    return roles, weights
