"""A trained, visual demonstration of multi-head self-attention with mhsa's own operator.

Run it with ``scripts/demo`` (which sets up and builds everything first) or, once built,
``python -m mhsa.demo [--steps N] [--seed S] [--threads T] [--out DIR] [--quick]``.

The task: a sequence of 16 digits; at every position i >= 1 the model must output

    (token[i-1] + number of 0s among token[0..i]) mod 10

so it needs two different kinds of attention: a sharp one that fetches the previous token, and
a broad one that looks over the whole prefix to count the zeros. A one-layer, two-head causal
transformer built on ``mhsa.MultiheadSelfAttention`` learns it, and usually gives one job to
each head.

The identical model built on ``torch.nn.MultiheadAttention`` (same initial weights, copied with
``load_state_dict``; same data in the same order) is trained in lockstep, to show that the two
loss curves coincide and to compare the time per training step.

Written to the output folder:

* ``attention-layer<l>.png`` - each head's attention weights on one held-out example;
* ``loss.png`` - the training loss of both runs and their difference;
* ``model.pt`` - the trained mhsa model as TorchScript: LongTensor (N, L) -> logits (N, L, V);
* ``report.md`` - the pictures, plus one line per head saying what it attends to, measured
  on held-out data;
* ``summary.json`` - accuracies, timings, the largest loss difference, the head roles.
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

import mhsa
from mhsa.viz import plot_heads

IGNORE = -100
"""Target value of positions that have no target (cross_entropy's ignore_index)."""


@dataclass(frozen=True)
class TaskConfig:
    """The synthetic task: digits, and per position (previous digit + zeros so far) mod 10."""

    vocab_size: int = 10
    seq_len: int = 16
    counted_token: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the small transformer."""

    d_model: int = 64
    num_heads: int = 2
    num_layers: int = 1
    d_mlp: int = 256


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``steps`` and ``seed`` come from the command line."""

    steps: int = 1500
    seed: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3
    eval_every: int = 100
    held_out_size: int = 2048
    target_accuracy: float = 0.95


TASK_DESCRIPTION = (
    "sequences of 16 random digits; at every position i >= 1 predict "
    "(token[i-1] + number of 0s in token[0..i]) mod 10"
)


def make_batch(size: int, task: TaskConfig, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Draws ``size`` random sequences and their targets.

    Returns:
        ``(tokens, targets)``, both LongTensors ``(size, seq_len)``; position 0 has no previous
        token, so its target is ``IGNORE``.
    """
    tokens = torch.randint(0, task.vocab_size, (size, task.seq_len), generator=generator)
    zeros_so_far = (tokens == task.counted_token).long().cumsum(dim=1)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, 1:] = (tokens[:, :-1] + zeros_so_far[:, 1:]) % task.vocab_size
    return tokens, targets


class Block(nn.Module):
    """One pre-LayerNorm transformer layer: causal self-attention, then an MLP, each residual."""

    def __init__(self, config: ModelConfig, use_mhsa: bool) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        if use_mhsa:
            self.attn = mhsa.MultiheadSelfAttention(config.d_model, config.num_heads, batch_first=True)
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


@dataclass
class RunLog:
    """What one training run recorded."""

    name: str
    losses: List[float]
    step_seconds: List[float]
    eval_steps: List[int]
    eval_accuracies: List[float]


def accuracy(model: TinyTransformer, tokens: Tensor, targets: Tensor) -> float:
    """Fraction of positions with a target whose argmax prediction is right."""
    model.eval()
    with torch.no_grad():
        predictions = model(tokens).argmax(dim=-1)
    model.train()
    scored = targets != IGNORE
    return (predictions[scored] == targets[scored]).float().mean().item()


def progress_line(step: int, total: int, loss: float, acc: Optional[float], width: int = 30) -> str:
    """A one-line text progress bar: ``[#####.....] step/total loss acc``."""
    filled = round(width * step / total)
    acc_text = f"{100 * acc:5.1f}%" if acc is not None else "   -  "
    return f"[{'#' * filled}{'.' * (width - filled)}] step {step:>5}/{total}  loss {loss:.4f}  held-out acc {acc_text}"


def train_both(
    models: Dict[str, TinyTransformer],
    task: TaskConfig,
    train: TrainConfig,
    held_out: Tuple[Tensor, Tensor],
) -> Dict[str, RunLog]:
    """Trains the models in lockstep on the same batches; returns each run's log.

    Each step draws one batch and runs one Adam step on every model in turn, so the models see
    identical data in identical order and their per-step times are measured under the same
    machine load. The learning rate decays linearly to zero.
    """
    generator = torch.Generator().manual_seed(train.seed)
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=train.learning_rate) for name, model in models.items()}
    schedulers = {
        name: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / train.steps)
        for name, optimizer in optimizers.items()
    }
    logs = {name: RunLog(name, [], [], [], []) for name in models}
    first = next(iter(models))
    interactive = sys.stdout.isatty()
    last_accuracy: Optional[float] = None
    for step in range(1, train.steps + 1):
        tokens, targets = make_batch(train.batch_size, task, generator)
        for name, model in models.items():
            start = time.perf_counter()
            logits = model(tokens)
            loss = nn.functional.cross_entropy(logits.reshape(-1, task.vocab_size), targets.reshape(-1), ignore_index=IGNORE)
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            schedulers[name].step()
            logs[name].step_seconds.append(time.perf_counter() - start)
            logs[name].losses.append(loss.item())
        evaluate = step % train.eval_every == 0 or step == train.steps
        if evaluate:
            for name, model in models.items():
                logs[name].eval_steps.append(step)
                logs[name].eval_accuracies.append(accuracy(model, *held_out))
            last_accuracy = logs[first].eval_accuracies[-1]
        line = progress_line(step, train.steps, logs[first].losses[-1], last_accuracy)
        if interactive and (step % 10 == 0 or evaluate):
            print("\r" + line, end="", flush=True)
        elif not interactive and evaluate:
            print(line, flush=True)
    if interactive:
        print()
    return logs


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
        description = "mixes " + ", ".join(f"{offset_name(d)}: {100 * mass:.0f}%" for d, mass in top)
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
        counted_mass = (layer_weights.double() * is_counted[:, None, None, :]).sum(dim=-1)  # (N, H, L)
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


def write_report(
    path: Path,
    summary: Dict[str, object],
    roles: Sequence[HeadRole],
    layer_images: Sequence[str],
    loss_image: str,
) -> None:
    """Writes report.md: results tables, each layer's heat map beside its heads' roles."""
    accuracies = summary["held_out_accuracy"]
    times = summary["ms_per_step_median"]
    early = summary["max_loss_diff_first_steps"]
    assert isinstance(accuracies, dict) and isinstance(times, dict) and isinstance(early, dict)
    lines = [
        "# mhsa demo report",
        "",
        f"Task: {TASK_DESCRIPTION}.",
        f"Model: {summary['model']}. Trained for {summary['steps']} steps (seed {summary['seed']}, "
        f"{summary['threads']} thread(s)).",
        "",
        "| | mhsa.MultiheadSelfAttention | nn.MultiheadAttention |",
        "|---|---|---|",
        f"| held-out accuracy | {100 * accuracies['mhsa']:.2f}% | {100 * accuracies['torch']:.2f}% |",
        f"| time per training step (median) | {times['mhsa']:.2f} ms | {times['torch']:.2f} ms |",
        "",
        f"Largest difference between the two loss curves: {summary['max_loss_diff']:.2e} over all "
        f"{summary['steps']} steps, {early['diff']:.2e} over the first {early['steps']} (float32 "
        "rounding differences, amplified as training goes on).",
        "",
        "## What each head attends to",
        "",
        "Measured on the held-out set: each head's attention weight by relative offset "
        "(key position minus query position), averaged over all examples and query positions.",
        "",
    ]
    for layer, image in enumerate(layer_images):
        layer_roles = [role for role in roles if role.layer == layer]
        role_lines = "<br>".join(f"**head {role.head}** {role.description}" for role in layer_roles)
        lines += [
            f"| layer {layer}: attention on one held-out example | what each head attends to |",
            "|---|---|",
            f"| ![layer {layer} attention]({image}) | {role_lines} |",
            "",
        ]
    lines += ["## Loss curves", "", f"![loss curves]({loss_image})", ""]
    path.write_text("\n".join(lines))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Train a small transformer built on mhsa's attention op, compare it with "
        "nn.MultiheadAttention, and draw what its heads learned.",
    )
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {TrainConfig.steps}; 20 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: this model is too small to gain from more, and "
        "one thread keeps timings steady on a busy machine)",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output/)")
    parser.add_argument("--quick", action="store_true", help="a few seconds in all, for tests: few steps, every file still written")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the demo; returns the process exit status."""
    args = parse_args(argv)
    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    task = TaskConfig()
    model_config = ModelConfig()
    if args.quick:
        train = TrainConfig(steps=args.steps or 20, seed=args.seed, eval_every=10, held_out_size=256)
    else:
        train = TrainConfig(steps=args.steps or TrainConfig.steps, seed=args.seed)
    if train.steps < 1:
        print("--steps must be at least 1", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    held_out = make_batch(train.held_out_size, task, torch.Generator().manual_seed(train.seed + 1_000_003))
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
        f"train:  {train.steps} steps of {train.batch_size} sequences, Adam lr {train.learning_rate} "
        f"decaying to 0, seed {train.seed}, {torch.get_num_threads()} thread(s); mhsa and "
        "nn.MultiheadAttention in lockstep from the same weights"
    )
    logs = train_both(models, task, train, held_out)

    losses = {name: np.array(log.losses) for name, log in logs.items()}
    loss_diff = np.abs(losses["mhsa"] - losses["torch"])
    max_loss_diff = float(loss_diff.max())
    early_steps = min(100, train.steps)
    max_early_loss_diff = float(loss_diff[:early_steps].max())
    final_accuracy = {name: log.eval_accuracies[-1] for name, log in logs.items()}
    median_ms = {name: 1e3 * statistics.median(log.step_seconds) for name, log in logs.items()}
    mean_ms = {name: 1e3 * statistics.fmean(log.step_seconds) for name, log in logs.items()}

    roles, weights = head_roles(mhsa_model, held_out[0], task.counted_token)
    example_tokens = held_out[0][0].tolist()
    layer_images = []
    for layer, layer_weights in enumerate(weights):
        image = f"attention-layer{layer}.png"
        figure = plot_heads(
            layer_weights[0],
            example_tokens,
            title=f"layer {layer}: attention of each head on a held-out sequence (mhsa model)",
        )
        figure.savefig(out / image, dpi=110)
        layer_images.append(image)
    loss_figure = plot_losses([("mhsa", logs["mhsa"].losses), ("nn.MultiheadAttention", logs["torch"].losses)])
    loss_figure.savefig(out / "loss.png", dpi=110)

    mhsa_model.eval()
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated (in favour of torch.export); it is still what the
        # C++ side of mhsa loads, so the demo writes it without the noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(mhsa_model)
        scripted.save(str(out / "model.pt"))
        reloaded = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        scripted_diff = float((reloaded(held_out[0]) - mhsa_model(held_out[0])).abs().max())

    wall_seconds = time.perf_counter() - wall_start
    summary: Dict[str, object] = {
        "task": TASK_DESCRIPTION,
        "model": (
            f"{model_config.num_layers} layer(s) x {model_config.num_heads} heads, d_model "
            f"{model_config.d_model}, causal"
        ),
        "model_config": asdict(model_config),
        "task_config": asdict(task),
        "steps": train.steps,
        "seed": train.seed,
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
        "held_out_accuracy": final_accuracy,
        "target_accuracy": train.target_accuracy,
        "target_reached": bool(min(final_accuracy.values()) >= train.target_accuracy),
        "ms_per_step_median": median_ms,
        "ms_per_step_mean": mean_ms,
        "max_loss_diff": max_loss_diff,
        "max_loss_diff_first_steps": {"steps": early_steps, "diff": max_early_loss_diff},
        "final_loss": {name: log.losses[-1] for name, log in logs.items()},
        "loss_mhsa": logs["mhsa"].losses,
        "loss_torch": logs["torch"].losses,
        "eval_steps": logs["mhsa"].eval_steps,
        "eval_accuracy": {name: log.eval_accuracies for name, log in logs.items()},
        "heads": [asdict(role) for role in roles],
        "scripted_max_diff": scripted_diff,
        "wall_seconds": wall_seconds,
        "files": {
            "attention": layer_images,
            "loss": "loss.png",
            "torchscript": "model.pt",
            "report": "report.md",
        },
    }
    write_report(out / "report.md", summary, roles, layer_images, "loss.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    print()
    print(f"{'':34}{'mhsa':>12}{'nn.MultiheadAttention':>24}")
    print(f"{'held-out accuracy':34}{100 * final_accuracy['mhsa']:>11.2f}%{100 * final_accuracy['torch']:>23.2f}%")
    print(f"{'time per training step (median)':34}{median_ms['mhsa']:>9.2f} ms{median_ms['torch']:>21.2f} ms")
    print(f"{'time per training step (mean)':34}{mean_ms['mhsa']:>9.2f} ms{mean_ms['torch']:>21.2f} ms")
    print(
        f"largest difference between the loss curves: {max_loss_diff:.2e} over {train.steps} steps "
        f"({max_early_loss_diff:.2e} over the first {early_steps})"
    )
    for role in roles:
        print(f"layer {role.layer} head {role.head}: {role.description}")
    reached = "reached" if summary["target_reached"] else "NOT reached"
    print(f"target held-out accuracy >= {100 * train.target_accuracy:.0f}%: {reached}" + (" (--quick: not expected)" if args.quick else ""))
    print(f"wrote {out}/: {', '.join(layer_images)}, loss.png, model.pt, report.md, summary.json ({wall_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
