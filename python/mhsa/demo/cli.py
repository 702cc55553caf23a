"""The demo's command line: parses the flags, runs every step, writes the files, prints results."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from mhsa.demo.analysis import head_roles
from mhsa.demo.generate import compare_generation
from mhsa.demo.html_report import write_html_report
from mhsa.demo.model import ModelConfig, TinyTransformer
from mhsa.demo.report import plot_losses, save_attention_pictures, write_report
from mhsa.demo.summary import (
    EarlyLossDiff,
    OutputFiles,
    PerModel,
    PerModelCurve,
    Summary,
    write_summary,
)
from mhsa.demo.task import TASK_DESCRIPTION, TaskConfig, make_batch
from mhsa.demo.train import TrainConfig, train_both

HTML_SEQUENCES = 4
"""How many held-out sequences report.html lets the reader choose from."""

PROMPT_LENGTH = 8
"""Tokens of each held-out sequence given as the prompt; the model generates the rest."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Train a small transformer built on mhsa's attention op, compare it with "
        "nn.MultiheadAttention, and draw what its heads learned.",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default {TrainConfig.steps}; 20 with --quick)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and the data (default 0)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: this model is too small to gain from more, and "
        "one thread keeps timings steady on a busy machine)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="output folder (default demo-output/)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds in all, for tests: few steps, every file still written",
    )
    return parser.parse_args(argv)


def save_torchscript(model: TinyTransformer, path: Path, tokens: torch.Tensor) -> float:
    """Saves ``model`` as TorchScript, loads it back; returns the largest logit difference."""
    model.eval()
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated (in favour of torch.export); it is still what the
        # C++ side of mhsa loads, so the demo writes it without the noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
        scripted.save(str(path))
        reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        return float((reloaded(tokens) - model(tokens)).abs().max())


def print_results(summary: Summary, out: Path) -> None:
    """The closing table and lines on stdout."""
    accuracy = summary.held_out_accuracy
    median = summary.ms_per_step_median
    mean = summary.ms_per_step_mean
    early = summary.max_loss_diff_first_steps
    print()
    print(f"{'':34}{'mhsa':>12}{'nn.MultiheadAttention':>24}")
    print(f"{'held-out accuracy':34}{100 * accuracy.mhsa:>11.2f}%{100 * accuracy.torch:>23.2f}%")
    print(f"{'time per training step (median)':34}{median.mhsa:>9.2f} ms{median.torch:>21.2f} ms")
    print(f"{'time per training step (mean)':34}{mean.mhsa:>9.2f} ms{mean.torch:>21.2f} ms")
    print(
        f"largest difference between the loss curves: {summary.max_loss_diff:.2e} over "
        f"{summary.steps} steps ({early.diff:.2e} over the first {early.steps})"
    )
    for role in summary.heads:
        print(f"layer {role.layer} head {role.head}: {role.description}")
    reached = "reached" if summary.target_reached else "NOT reached"
    note = " (--quick: not expected)" if summary.quick else ""
    print(f"target held-out accuracy >= {100 * summary.target_accuracy:.0f}%: {reached}{note}")
    files = summary.files
    written: List[str] = files.attention + [
        files.loss,
        files.torchscript,
        files.report,
        files.html,
        "summary.json",
    ]
    generation = summary.generation
    print(
        f"generation ({generation.new_tokens} greedy tokens after {generation.prompt_length}-token "
        f"prompts): {generation.tokens_per_second_cache:.0f} tokens/s with the KV cache, "
        f"{generation.tokens_per_second_recompute:.0f} tokens/s recomputing the prefix; "
        f"same tokens: {generation.same_tokens}"
    )
    print(f"wrote {out}/: {', '.join(written)} ({summary.wall_seconds:.1f} s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the demo; returns the process exit status."""
    args = parse_args(argv)
    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    task = TaskConfig()
    model_config = ModelConfig()
    if args.quick:
        train = TrainConfig(
            steps=args.steps or 20, seed=args.seed, eval_every=10, held_out_size=256
        )
    else:
        train = TrainConfig(steps=args.steps or TrainConfig.steps, seed=args.seed)
    if train.steps < 1:
        print("--steps must be at least 1", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    held_out = make_batch(
        train.held_out_size, task, torch.Generator().manual_seed(train.seed + 1_000_003)
    )
    torch.manual_seed(train.seed)
    mhsa_model = TinyTransformer(task, model_config, use_mhsa=True)
    torch_model = TinyTransformer(task, model_config, use_mhsa=False)
    torch_model.load_state_dict(mhsa_model.state_dict())
    models = {"mhsa": mhsa_model, "torch": torch_model}

    print(f"task:   {TASK_DESCRIPTION}")
    print(
        f"model:  {model_config.num_layers} layer(s), {model_config.num_heads} heads, d_model "
        f"{model_config.d_model}, MLP {model_config.d_mlp}, causal; "
        f"{sum(p.numel() for p in mhsa_model.parameters())} parameters"
    )
    print(
        f"train:  {train.steps} steps of {train.batch_size} sequences, Adam lr "
        f"{train.learning_rate} decaying to 0, seed {train.seed}, {torch.get_num_threads()} "
        "thread(s); mhsa and nn.MultiheadAttention in lockstep from the same weights",
        flush=True,
    )
    logs = train_both(models, task, train, held_out)

    loss_diff = np.abs(np.array(logs["mhsa"].losses) - np.array(logs["torch"].losses))
    early_steps = min(100, train.steps)
    accuracy = PerModel(
        mhsa=logs["mhsa"].eval_accuracies[-1], torch=logs["torch"].eval_accuracies[-1]
    )

    roles, weights = head_roles(mhsa_model, held_out[0], task.counted_token)
    layer_images = save_attention_pictures(out, weights, held_out[0][0].tolist())
    loss_figure = plot_losses(
        [("mhsa", logs["mhsa"].losses), ("nn.MultiheadAttention", logs["torch"].losses)]
    )
    loss_figure.savefig(out / "loss.png", dpi=110)
    scripted_diff = save_torchscript(mhsa_model, out / "model.pt", held_out[0])
    generation = compare_generation(
        mhsa_model, held_out[0][:HTML_SEQUENCES, :PROMPT_LENGTH], task.seq_len - PROMPT_LENGTH
    )

    summary = Summary(
        task=TASK_DESCRIPTION,
        model=(
            f"{model_config.num_layers} layer(s) x {model_config.num_heads} heads, d_model "
            f"{model_config.d_model}, causal"
        ),
        model_config=model_config,
        task_config=task,
        steps=train.steps,
        seed=train.seed,
        threads=torch.get_num_threads(),
        quick=bool(args.quick),
        held_out_accuracy=accuracy,
        target_accuracy=train.target_accuracy,
        target_reached=min(accuracy.mhsa, accuracy.torch) >= train.target_accuracy,
        ms_per_step_median=PerModel(
            mhsa=1e3 * statistics.median(logs["mhsa"].step_seconds),
            torch=1e3 * statistics.median(logs["torch"].step_seconds),
        ),
        ms_per_step_mean=PerModel(
            mhsa=1e3 * statistics.fmean(logs["mhsa"].step_seconds),
            torch=1e3 * statistics.fmean(logs["torch"].step_seconds),
        ),
        max_loss_diff=float(loss_diff.max()),
        max_loss_diff_first_steps=EarlyLossDiff(
            steps=early_steps, diff=float(loss_diff[:early_steps].max())
        ),
        final_loss=PerModel(mhsa=logs["mhsa"].losses[-1], torch=logs["torch"].losses[-1]),
        loss_mhsa=logs["mhsa"].losses,
        loss_torch=logs["torch"].losses,
        eval_steps=logs["mhsa"].eval_steps,
        eval_accuracy=PerModelCurve(
            mhsa=logs["mhsa"].eval_accuracies, torch=logs["torch"].eval_accuracies
        ),
        heads=roles,
        scripted_max_diff=scripted_diff,
        wall_seconds=0.0,  # set below, once every file is written
        files=OutputFiles(
            attention=layer_images,
            loss="loss.png",
            torchscript="model.pt",
            report="report.md",
            html="report.html",
        ),
        generation=generation,
    )
    write_report(out / summary.files.report, summary)
    write_html_report(out / summary.files.html, summary, held_out[0][:HTML_SEQUENCES], weights)
    summary.wall_seconds = time.perf_counter() - wall_start
    write_summary(out / "summary.json", summary)
    print_results(summary, out)
    return 0
