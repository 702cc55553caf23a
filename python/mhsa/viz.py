"""Plotting attention weights: one heat-map panel per head.

Import it explicitly (``import mhsa.viz``); ``import mhsa`` does not load matplotlib. Figures are
built with matplotlib's object-oriented API on the Agg canvas, so no display is needed and the
global pyplot state is left alone. Save one with ``fig.savefig("heads.png")``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ArrayLike = Union[torch.Tensor, np.ndarray]


def plot_heads(
    weights: ArrayLike,
    tokens: Optional[Sequence[object]] = None,
    *,
    title: Optional[str] = None,
    panel_size: float = 3.2,
) -> Figure:
    """Draws each head's attention weights as a heat map, one panel per head, side by side.

    Args:
        weights: per-head attention weights, ``(H, L, L)`` or ``(N, H, L, L)`` (then the first
            batch element is drawn), e.g. what ``need_weights=True,
            average_attn_weights=False`` returns. Row ``i`` of a panel is query position ``i``,
            column ``j`` is key position ``j``; the colour is the weight, from 0 to 1.
        tokens: optional labels of the ``L`` positions (e.g. the input tokens), written on both
            axes; position indices are used when omitted.
        title: optional title above the panels.
        panel_size: width and height of one panel in inches.

    Returns:
        A matplotlib Figure (Agg canvas) with exactly ``H`` axes, one per head.

    Raises:
        ValueError: ``weights`` is not 3-D or 4-D, is not square in its last two dimensions,
            or ``tokens`` does not have ``L`` entries.
    """
    if isinstance(weights, torch.Tensor):
        array = weights.detach().to(device="cpu", dtype=torch.float32).numpy()
    else:
        array = np.asarray(weights, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(
            f"plot_heads: expected (H, L, L) or (N, H, L, L) weights, got shape {array.shape}"
        )
    num_heads, length, key_length = array.shape
    if length != key_length:
        raise ValueError(f"plot_heads: expected square (L, L) maps, got {length} x {key_length}")
    labels = (
        [str(token) for token in tokens] if tokens is not None else [str(i) for i in range(length)]
    )
    if len(labels) != length:
        raise ValueError(f"plot_heads: {len(labels)} tokens given for {length} positions")

    figure = Figure(figsize=(panel_size * num_heads, panel_size + 0.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, num_heads, squeeze=False)[0]
    tick_size = 8 if length <= 20 else 6
    for head, ax in enumerate(axes):
        ax.imshow(array[head], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(f"head {head}")
        ax.set_xticks(range(length), labels, fontsize=tick_size)
        ax.set_yticks(range(length), labels, fontsize=tick_size)
        ax.set_xlabel("key (attended to)")
        if head == 0:
            ax.set_ylabel("query")
    caption = "colour = attention weight, 0 (dark) to 1 (yellow)"
    figure.suptitle(f"{title}\n{caption}" if title else caption, fontsize=10)
    return figure
