"""The demo's report.html: one self-contained page to explore each head's attention.

The page (template: ``report_template.html`` next to this file) needs no network: the data is
embedded as JSON, and a short script draws inline SVG from it. A reader picks a held-out
sequence, a layer, a head and a query token and sees that head's attention weights over the
input tokens as bars, the head's full heat map, and the two training-loss curves (mhsa against
nn.MultiheadAttention). The selection is also read from, and written to, the URL fragment
(``report.html#sequence=0&layer=0&head=1&query=7``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from torch import Tensor

from mhsa.demo.summary import Summary

TEMPLATE = Path(__file__).with_name("report_template.html")
PLACEHOLDER = "__DEMO_DATA__"
WEIGHT_DECIMALS = 4
"""Weights are rounded to this many decimals in the page (enough for bars and colours)."""


def report_data(summary: Summary, tokens: Tensor, weights: Sequence[Tensor]) -> Dict[str, object]:
    """The JSON object the page draws.

    Args:
        summary: the demo's results (loss curves, accuracies, timings, head roles).
        tokens: ``(S, L)`` held-out sequences the reader can choose from.
        weights: each layer's per-head weights on those sequences, ``(S, H, L, L)`` (or more
            sequences than ``S``: only the first ``S`` are used).

    Returns:
        A JSON-serialisable dict; ``weights[s][layer][head][query][key]``.
    """
    num_sequences, length = tokens.shape
    nested: List[List[List[List[List[float]]]]] = []
    for sequence in range(num_sequences):
        per_layer = []
        for layer_weights in weights:
            rounded = layer_weights[sequence].double().round(decimals=WEIGHT_DECIMALS)
            per_layer.append(rounded.tolist())
        nested.append(per_layer)
    return {
        "task": summary.task,
        "model": summary.model,
        "steps": summary.steps,
        "seed": summary.seed,
        "quick": summary.quick,
        "seq_len": length,
        "num_layers": len(weights),
        "num_heads": summary.model_config.num_heads,
        "sequences": tokens.tolist(),
        "weights": nested,
        "heads": [
            {"layer": role.layer, "head": role.head, "description": role.description}
            for role in summary.heads
        ],
        "loss": {"mhsa": summary.loss_mhsa, "torch": summary.loss_torch},
        "max_loss_diff": summary.max_loss_diff,
        "accuracy": {
            "mhsa": summary.held_out_accuracy.mhsa,
            "torch": summary.held_out_accuracy.torch,
        },
        "ms_per_step": {
            "mhsa": summary.ms_per_step_median.mhsa,
            "torch": summary.ms_per_step_median.torch,
        },
        "generation": {
            "prompt_length": summary.generation.prompt_length,
            "sequences": summary.generation.sequences,
            "same_tokens": summary.generation.same_tokens,
            "tokens_per_second_cache": summary.generation.tokens_per_second_cache,
            "tokens_per_second_recompute": summary.generation.tokens_per_second_recompute,
        },
    }


def write_html_report(
    path: Path, summary: Summary, tokens: Tensor, weights: Sequence[Tensor]
) -> None:
    """Writes report.html: the template with :func:`report_data` embedded as JSON."""
    payload = json.dumps(report_data(summary, tokens, weights), separators=(",", ":"))
    # Inside <script>, "</" could close the element early; "<\/" is the same JSON string.
    payload = payload.replace("</", "<\\/")
    template = TEMPLATE.read_text(encoding="utf-8")
    path.write_text(template.replace(PLACEHOLDER, payload), encoding="utf-8")
