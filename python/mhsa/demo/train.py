"""The demo's training loop: the mhsa model and its nn.MultiheadAttention twin in lockstep."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mhsa.demo.model import TinyTransformer
from mhsa.demo.task import IGNORE, TaskConfig, make_batch


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


@dataclass
class RunLog:
    """What one training run recorded."""

    name: str
    losses: List[float] = field(default_factory=list)
    step_seconds: List[float] = field(default_factory=list)
    eval_steps: List[int] = field(default_factory=list)
    eval_accuracies: List[float] = field(default_factory=list)


def accuracy(model: TinyTransformer, tokens: Tensor, targets: Tensor) -> float:
    """Fraction of positions with a target whose argmax prediction is right."""
    model.eval()
    with torch.no_grad():
        predictions = model(tokens).argmax(dim=-1)
    model.train()
    scored = targets != IGNORE
    return (predictions[scored] == targets[scored]).float().mean().item()


def evaluation_line(step: int, total: int, loss: float, held_out_accuracy: float) -> str:
    """The line printed at each evaluation: ``step 100/1500  loss 1.2345  held-out acc 42.0%``."""
    return f"step {step:>5}/{total}  loss {loss:.4f}  held-out acc {100 * held_out_accuracy:5.1f}%"


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

    Progress: a tqdm bar on stderr when it is a terminal (the first model's loss beside it), and
    at every evaluation one line on stdout (:func:`evaluation_line`, first model), so that logs
    of non-interactive runs show the progress too.
    """
    generator = torch.Generator().manual_seed(train.seed)
    optimizers = {
        name: torch.optim.Adam(model.parameters(), lr=train.learning_rate)
        for name, model in models.items()
    }
    schedulers = {
        name: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / train.steps)
        for name, optimizer in optimizers.items()
    }
    logs = {name: RunLog(name) for name in models}
    first = next(iter(models))
    last_accuracy: Optional[float] = None
    # disable=None: no bar when stderr is not a terminal (CI logs, tests).
    with tqdm(total=train.steps, desc="training", unit="step", disable=None) as progress:
        for step in range(1, train.steps + 1):
            tokens, targets = make_batch(train.batch_size, task, generator)
            for name, model in models.items():
                start = time.perf_counter()
                logits = model(tokens)
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, task.vocab_size), targets.reshape(-1), ignore_index=IGNORE
                )
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                schedulers[name].step()
                logs[name].step_seconds.append(time.perf_counter() - start)
                logs[name].losses.append(loss.item())
            if step % train.eval_every == 0 or step == train.steps:
                for name, model in models.items():
                    logs[name].eval_steps.append(step)
                    logs[name].eval_accuracies.append(accuracy(model, *held_out))
                last_accuracy = logs[first].eval_accuracies[-1]
                line = evaluation_line(step, train.steps, logs[first].losses[-1], last_accuracy)
                # tqdm.write prints above the bar without breaking it (plain print when none).
                tqdm.write(line, file=sys.stdout)
            postfix = {"loss": f"{logs[first].losses[-1]:.4f}"}
            if last_accuracy is not None:
                postfix["held-out acc"] = f"{100 * last_accuracy:.1f}%"
            progress.set_postfix(postfix, refresh=False)
            progress.update(1)
    return logs
