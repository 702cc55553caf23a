"""The demo's pictures and report.md: heat maps of each layer's heads, the two loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from mhsa.demo.summary import Summary
from mhsa.viz import plot_heads


def save_attention_pictures(out: Path, weights: Sequence[Tensor], tokens: List[int]) -> List[str]:
    """Saves ``attention-layer<l>.png`` for each layer; returns the file names.

    Args:
        out: output folder.
        weights: each layer's per-head weights ``(N, H, L, L)``; the first sequence is drawn.
        tokens: the ``L`` tokens of that sequence, written on the axes.
    """
    names = []
    for layer, layer_weights in enumerate(weights):
        name = f"attention-layer{layer}.png"
        figure = plot_heads(
            layer_weights[0],
            tokens,
            title=f"layer {layer}: attention of each head on a held-out sequence (mhsa model)",
        )
        figure.savefig(out / name, dpi=110)
        names.append(name)
    return names


def plot_losses(curves: Sequence[Tuple[str, Sequence[float]]]) -> Figure:
    """Two named training-loss curves on one axis, and their absolute difference beside it."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axis, diff_axis = figure.subplots(1, 2)
    styles = ["-", "--"]
    for (name, losses), style in zip(curves, styles):
        loss_axis.plot(np.arange(1, len(losses) + 1), losses, style, label=name, linewidth=1.2)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("training step")
    loss_axis.set_ylabel("cross-entropy loss")
    loss_axis.set_title("training loss")
    loss_axis.legend()
    (first_name, first), (second_name, second) = curves
    difference = np.abs(np.array(first) - np.array(second))
    diff_axis.plot(np.arange(1, len(difference) + 1), np.maximum(difference, 1e-12), linewidth=0.8)
    diff_axis.set_yscale("log")
    diff_axis.set_xlabel("training step")
    diff_axis.set_ylabel("|loss difference| (0 drawn at 1e-12)")
    diff_axis.set_title(f"difference between the curves (max {difference.max():.1e})")
    return figure


def write_report(path: Path, summary: Summary) -> None:
    """Writes report.md: results tables, each layer's heat map beside its heads' roles."""
    accuracies = summary.held_out_accuracy
    times = summary.ms_per_step_median
    early = summary.max_loss_diff_first_steps
    lines = [
        "# mhsa demo report",
        "",
        f"Task: {summary.task}.",
        f"Model: {summary.model}. Trained for {summary.steps} steps (seed {summary.seed}, "
        f"{summary.threads} thread(s)).",
        "",
        "| | mhsa.MultiheadSelfAttention | nn.MultiheadAttention |",
        "|---|---|---|",
        f"| held-out accuracy | {100 * accuracies.mhsa:.2f}% | {100 * accuracies.torch:.2f}% |",
        f"| time per training step (median) | {times.mhsa:.2f} ms | {times.torch:.2f} ms |",
        "",
        f"Largest difference between the two loss curves: {summary.max_loss_diff:.2e} over all "
        f"{summary.steps} steps, {early.diff:.2e} over the first {early.steps} (float32 "
        "rounding differences, amplified as training goes on).",
        "",
        f"Interactive version (pick a layer, a head and a query token): [{summary.files.html}]"
        f"({summary.files.html}).",
        "",
        "## What each head attends to",
        "",
        "Measured on the held-out set: each head's attention weight by relative offset "
        "(key position minus query position), averaged over all examples and query positions.",
        "",
    ]
    for layer, image in enumerate(summary.files.attention):
        layer_roles = [role for role in summary.heads if role.layer == layer]
        role_lines = "<br>".join(f"**head {role.head}** {role.description}" for role in layer_roles)
        lines += [
            f"| layer {layer}: attention on one held-out example | what each head attends to |",
            "|---|---|",
            f"| ![layer {layer} attention]({image}) | {role_lines} |",
            "",
        ]
    lines += ["## Loss curves", "", f"![loss curves]({summary.files.loss})", ""]
    generation = summary.generation
    lines += [
        "## Generation with the KV cache",
        "",
        f"Greedy continuations of held-out sequences: the first {generation.prompt_length} "
        f"tokens are the prompt, the model generates {generation.new_tokens} more, each of its "
        "predictions fed back as the next input, with `MultiheadSelfAttention.decode` and a KV "
        "cache (one new token through the layers per step).",
        "",
        "| prompt | generated |",
        "|---|---|",
    ]
    for sequence in generation.sequences:
        prompt = " ".join(str(t) for t in sequence[: generation.prompt_length])
        continuation = " ".join(str(t) for t in sequence[generation.prompt_length :])
        lines.append(f"| `{prompt}` | `{continuation}` |")
    agree = "the same" if generation.same_tokens else "NOT the same"
    lines += [
        "",
        "| | tokens per second |",
        "|---|---|",
        f"| with the KV cache | {generation.tokens_per_second_cache:.0f} |",
        f"| recomputing the whole prefix for every token | "
        f"{generation.tokens_per_second_recompute:.0f} |",
        "",
        f"Recomputing the prefix generates {agree} tokens. (The sequences here are only "
        f"{generation.prompt_length + generation.new_tokens} tokens long, so per-call overhead, "
        "not attention, dominates both timings; `scripts/bench_decode.py` measures long "
        "prefixes.)",
        "",
    ]
    path.write_text("\n".join(lines))
