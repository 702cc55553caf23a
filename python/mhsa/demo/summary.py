"""The demo's results as one typed record, written to summary.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

from mhsa.demo.analysis import HeadRole
from mhsa.demo.generate import GenerationResult
from mhsa.demo.model import ModelConfig
from mhsa.demo.task import TaskConfig


@dataclass
class PerModel:
    """One number for each of the two runs: mhsa, and the nn.MultiheadAttention twin."""

    mhsa: float
    torch: float


@dataclass
class PerModelCurve:
    """One series for each of the two runs (e.g. held-out accuracy at each evaluation)."""

    mhsa: List[float]
    torch: List[float]


@dataclass
class EarlyLossDiff:
    """The largest loss difference over the first ``steps`` steps."""

    steps: int
    diff: float


@dataclass
class OutputFiles:
    """Names of the files written to the output folder, relative to it."""

    attention: List[str]
    loss: str
    torchscript: str
    report: str
    html: str


@dataclass
class Summary:
    """Everything the demo measured; ``summary.json`` is ``dataclasses.asdict`` of it."""

    task: str
    model: str
    model_config: ModelConfig
    task_config: TaskConfig
    steps: int
    seed: int
    threads: int
    quick: bool
    held_out_accuracy: PerModel
    target_accuracy: float
    target_reached: bool
    ms_per_step_median: PerModel
    ms_per_step_mean: PerModel
    max_loss_diff: float
    max_loss_diff_first_steps: EarlyLossDiff
    final_loss: PerModel
    loss_mhsa: List[float]
    loss_torch: List[float]
    eval_steps: List[int]
    eval_accuracy: PerModelCurve
    heads: List[HeadRole]
    scripted_max_diff: float
    wall_seconds: float
    files: OutputFiles
    generation: GenerationResult
    """Greedy continuations of held-out prompts with the KV cache, and tokens/s against
    recomputing the prefix for every token."""


def write_summary(path: Path, summary: Summary) -> None:
    """Writes ``summary`` as indented JSON (nested dataclasses become objects)."""
    path.write_text(json.dumps(asdict(summary), indent=2))
