"""End-to-end test of the demo (python -m mhsa.demo --quick) and of scripts/demo's shell."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import matplotlib.image
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, Any], str]:
    """Runs the quick demo once into a temporary folder: (folder, summary.json, stdout)."""
    out = tmp_path_factory.mktemp("demo-output")
    env = dict(os.environ)
    # mhsa is normally importable through the venv's mhsa.pth; this also covers a bare venv.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO / "python")]))
    completed = subprocess.run(
        [sys.executable, "-m", "mhsa.demo", "--quick", "--out", str(out)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, f"demo failed:\n{completed.stdout}\n{completed.stderr}"
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, completed.stdout


def test_summary_reports_matching_runs(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    _, summary, stdout = demo_run
    assert summary["quick"] is True
    steps = summary["steps"]
    assert steps >= 1
    assert len(summary["loss_mhsa"]) == len(summary["loss_torch"]) == steps
    # Same initial weights, same data: the curves agree to float32 rounding.
    assert summary["max_loss_diff"] < 1e-4
    differences = [abs(a - b) for a, b in zip(summary["loss_mhsa"], summary["loss_torch"])]
    assert max(differences) == pytest.approx(summary["max_loss_diff"])
    accuracy = summary["held_out_accuracy"]
    assert 0.0 <= accuracy["mhsa"] <= 1.0
    assert accuracy["mhsa"] == pytest.approx(accuracy["torch"], abs=0.01)
    for name in ("mhsa", "torch"):
        assert summary["ms_per_step_median"][name] > 0
        assert summary["ms_per_step_mean"][name] > 0
    assert "largest difference between the loss curves" in stdout
    assert "held-out accuracy" in stdout


def test_every_image_is_a_readable_png(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    out, summary, _ = demo_run
    layers = summary["model_config"]["num_layers"]
    images = summary["files"]["attention"] + [summary["files"]["loss"]]
    assert summary["files"]["attention"] == [f"attention-layer{layer}.png" for layer in range(layers)]
    for name in images:
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            image.verify()
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, name


def test_report_places_each_head_beside_its_picture(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    out, summary, _ = demo_run
    report = (out / summary["files"]["report"]).read_text()
    config = summary["model_config"]
    assert len(summary["heads"]) == config["num_layers"] * config["num_heads"]
    for name in summary["files"]["attention"] + [summary["files"]["loss"]]:
        assert f"]({name})" in report
    for role in summary["heads"]:
        assert f"**head {role['head']}** {role['description']}" in report
        # The description is measured, not fixed text: it quotes the measured top offset mass.
        top_offset, top_mass = role["top_offsets"][0]
        assert 0.0 <= top_mass <= 1.0 and 0 <= top_offset < summary["task_config"]["seq_len"]
        assert f"{100 * role['counted_token_mass']:.0f}% of its weight" in role["description"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_model_loads_and_runs(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    out, summary, _ = demo_run
    model = torch.jit.load(str(out / summary["files"]["torchscript"]))
    task = summary["task_config"]
    vocab, length = task["vocab_size"], task["seq_len"]
    tokens = torch.randint(0, vocab, (3, length))
    with torch.no_grad():
        logits = model(tokens)
        shorter = model(tokens[:, :5])
    assert logits.shape == (3, length, vocab)
    assert torch.isfinite(logits).all()
    # Causal: the logits of a prefix do not depend on what follows it.
    torch.testing.assert_close(shorter, logits[:, :5])
    assert summary["scripted_max_diff"] < 1e-5


def test_demo_script_is_executable_bash() -> None:
    script = REPO / "scripts" / "demo"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
