"""End-to-end test of the demo (python -m mhsa.demo --quick) and of scripts/demo's shell.

report.html is opened in headless Chromium (Debian's ``chromium``, installed by
scripts/setup.sh): the page must draw without any console output or uncaught error, show the
selected head's weights, and its screenshot is kept in ``$MHSA_TEST_ARTIFACTS`` when set.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib.image
import pytest
import torch
from PIL import Image

from mhsa_testutils import TOLERANCES, assert_below, assert_close

F32 = TOLERANCES[torch.float32]

# Not in `scripts/test --quick`: trains the demo and renders report.html in Chromium.
pytestmark = pytest.mark.slow

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
    assert_below(summary["max_loss_diff"], torch.float32, "abs_long", "loss curves")
    differences = [abs(a - b) for a, b in zip(summary["loss_mhsa"], summary["loss_torch"])]
    assert max(differences) == pytest.approx(summary["max_loss_diff"])
    accuracy = summary["held_out_accuracy"]
    assert 0.0 <= accuracy["mhsa"] <= 1.0
    assert accuracy["mhsa"] == pytest.approx(accuracy["torch"], abs=F32["accuracy"].atol)
    for name in ("mhsa", "torch"):
        assert summary["ms_per_step_median"][name] > 0
        assert summary["ms_per_step_mean"][name] > 0
    assert "largest difference between the loss curves" in stdout
    assert "held-out accuracy" in stdout


def test_every_image_is_a_readable_png(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    out, summary, _ = demo_run
    layers = summary["model_config"]["num_layers"]
    images = summary["files"]["attention"] + [summary["files"]["loss"]]
    assert summary["files"]["attention"] == [
        f"attention-layer{layer}.png" for layer in range(layers)
    ]
    for name in images:
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            image.verify()
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, name


def test_report_places_each_head_beside_its_picture(
    demo_run: Tuple[Path, Dict[str, Any], str],
) -> None:
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
    assert_close(shorter, logits[:, :5], torch.float32, "bitwise", "logits of a prefix")
    assert_below(summary["scripted_max_diff"], torch.float32, "abs", "scripted against eager")


def test_generation_with_kv_cache(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    """The continuations the demo decoded with the KV cache are the greedy continuations of the
    saved model recomputed here over the whole prefix, and both speeds are reported."""
    out, summary, stdout = demo_run
    generation = summary["generation"]
    prompt_length, new_tokens = generation["prompt_length"], generation["new_tokens"]
    assert prompt_length >= 1 and new_tokens >= 1
    assert prompt_length + new_tokens == summary["task_config"]["seq_len"]
    assert generation["same_tokens"] is True
    assert generation["tokens_per_second_cache"] > 0
    assert generation["tokens_per_second_recompute"] > 0
    sequences = torch.tensor(generation["sequences"])
    assert sequences.shape[0] >= 2 and sequences.shape[1] == prompt_length + new_tokens
    model = torch.jit.load(str(out / summary["files"]["torchscript"]))
    tokens = sequences[:, :prompt_length]
    with torch.no_grad():
        for _ in range(new_tokens):
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(dim=-1)], dim=1)
    assert torch.equal(tokens, sequences)
    report = (out / summary["files"]["report"]).read_text()
    assert "## Generation with the KV cache" in report
    assert f"| with the KV cache | {generation['tokens_per_second_cache']:.0f} |" in report
    assert "tokens/s with the KV cache" in stdout


def test_demo_script_is_executable_bash() -> None:
    script = REPO / "scripts" / "demo"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


@dataclass
class RenderedPage:
    """What headless Chromium made of a page."""

    dom: str
    """The DOM after the page's scripts ran (``--dump-dom``)."""
    log: str
    """Chromium's stderr, where console messages and uncaught errors are logged."""
    screenshot: Path


class ElementCollector(HTMLParser):
    """Collects every element's tag and attributes, and the text of elements that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.text_by_id: Dict[str, str] = {}
        self._open_ids: List[Optional[str]] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag not in ("br", "meta", "input", "line", "rect", "polyline", "img"):
            element_id = attributes.get("id")
            self._open_ids.append(element_id)
            if element_id:
                self.text_by_id[element_id] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open_ids and tag not in ("br", "meta", "input", "line", "rect", "polyline", "img"):
            self._open_ids.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open_ids:
            if element_id:
                self.text_by_id[element_id] += data

    def with_class(self, name: str) -> List[Dict[str, Optional[str]]]:
        """Attributes of the elements whose class list contains ``name``."""
        return [
            attributes
            for _, attributes in self.elements
            if name in (attributes.get("class") or "").split()
        ]


def render_in_chromium(page: Path, fragment: str, screenshot: Path) -> RenderedPage:
    """Opens ``page`` (with URL ``fragment``) in headless Chromium: DOM, log and a screenshot."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found (scripts/setup.sh installs Debian's chromium package)"
    profile = screenshot.parent / f"{screenshot.stem}-chromium-profile"
    completed = subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            "--window-size=1200,1500",
            f"--screenshot={screenshot}",
            "--dump-dom",
            page.resolve().as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert completed.returncode == 0, f"chromium failed:\n{completed.stderr[-4000:]}"
    return RenderedPage(completed.stdout, completed.stderr, screenshot)


def page_problems(rendered: RenderedPage) -> List[str]:
    """Everything wrong with a rendered report.html: console output, errors, an unfinished draw.

    The page logs nothing when it works, so any console line (Chromium logs them all as
    ``INFO:CONSOLE``, whatever the level) is a problem, as is an uncaught exception, or a page
    whose script did not reach its end (``data-rendered="ok"`` on ``<html>``).
    """
    problems = [
        line for line in rendered.log.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    collector = ElementCollector()
    collector.feed(rendered.dom)
    html_attributes = [attributes for tag, attributes in collector.elements if tag == "html"]
    if not html_attributes or html_attributes[0].get("data-rendered") != "ok":
        problems.append("the page's script did not finish drawing (<html> lacks data-rendered=ok)")
    return problems


def embedded_data(page: Path) -> Dict[str, Any]:
    """The JSON that report.html embeds (what its script draws)."""
    match = re.search(
        r'<script type="application/json" id="demo-data">(.*?)</script>', page.read_text(), re.S
    )
    assert match, "report.html has no embedded demo-data JSON"
    return json.loads(match.group(1))


def artifacts_dir(tmp_path: Path) -> Path:
    """$MHSA_TEST_ARTIFACTS (set by scripts/test) if set, else the test's temporary folder."""
    folder = Path(os.environ.get("MHSA_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_html_report_embeds_the_run(demo_run: Tuple[Path, Dict[str, Any], str]) -> None:
    out, summary, _ = demo_run
    assert summary["files"]["html"] == "report.html"
    assert "](report.html)" in (out / summary["files"]["report"]).read_text()
    page = (out / "report.html").read_text()
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    data = embedded_data(out / "report.html")
    assert data["loss"] == {"mhsa": summary["loss_mhsa"], "torch": summary["loss_torch"]}
    config, task = summary["model_config"], summary["task_config"]
    length = task["seq_len"]
    assert (data["num_layers"], data["num_heads"], data["seq_len"]) == (
        config["num_layers"],
        config["num_heads"],
        length,
    )
    assert len(data["sequences"]) >= 2
    for sequence, per_layer in zip(data["sequences"], data["weights"]):
        assert len(sequence) == length and all(0 <= t < task["vocab_size"] for t in sequence)
        assert len(per_layer) == config["num_layers"]
        for per_head in per_layer:
            assert len(per_head) == config["num_heads"]
            for rows in per_head:
                for query, row in enumerate(rows):
                    # Causal attention weights: a distribution over keys 0..query, 0 after it.
                    assert sum(row[: query + 1]) == pytest.approx(1.0, abs=F32["report_sum"].atol)
                    assert all(weight == 0.0 for weight in row[query + 1 :])
    roles = [(h["layer"], h["head"], h["description"]) for h in data["heads"]]
    assert roles == [(h["layer"], h["head"], h["description"]) for h in summary["heads"]]


def test_html_report_renders_in_chromium(
    demo_run: Tuple[Path, Dict[str, Any], str], tmp_path: Path
) -> None:
    out, summary, _ = demo_run
    page = out / "report.html"
    data = embedded_data(page)
    sequence, layer, head, query = 1, 0, 1, 9
    screenshot = artifacts_dir(tmp_path) / "demo-report-html.png"
    screenshot.unlink(missing_ok=True)
    rendered = render_in_chromium(
        page, f"#sequence={sequence}&layer={layer}&head={head}&query={query}", screenshot
    )
    assert page_problems(rendered) == []

    dom = ElementCollector()
    dom.feed(rendered.dom)
    length = data["seq_len"]
    # The query tokens: one button per position, the chosen one selected.
    tokens = dom.with_class("token")
    assert [t["data-position"] for t in tokens] == [str(i) for i in range(length)]
    assert [t["data-position"] for t in dom.with_class("selected")] == [str(query)]
    # The bars: the chosen head's weights from the chosen query, keys after it masked.
    bars = dom.with_class("weight-bar")
    assert [b["data-key"] for b in bars] == [str(k) for k in range(length)]
    masked = [int(b["data-key"] or -1) for b in dom.with_class("masked")]
    assert masked == list(range(query + 1, length))
    expected = data["weights"][sequence][layer][head][query]
    shown = [float(b["data-weight"] or "nan") for b in bars]
    expected_bars = expected[: query + 1] + [0.0] * (length - query - 1)
    assert shown == pytest.approx(expected_bars, abs=F32["report"].atol)
    assert sum(shown) == pytest.approx(1.0, abs=F32["report_sum"].atol)
    title = dom.text_by_id["bars-title"]
    assert f"layer {layer}, head {head}: attention from query position {query}" in title
    role = next(h for h in summary["heads"] if (h["layer"], h["head"]) == (layer, head))
    assert role["description"] in " ".join(dom.text_by_id["role"].split())
    # The heat map of that head, and both loss curves with one point per step.
    assert len(dom.with_class("heat-cell")) == length * length
    assert len(dom.with_class("selected-row")) == 1
    curves = {c["data-model"]: c for c in dom.with_class("loss-curve")}
    assert sorted(curves) == ["mhsa", "torch"]
    for curve in curves.values():
        assert len((curve["points"] or "").split()) == summary["steps"]
    assert "held-out accuracy" in dom.text_by_id["results"]
    assert "with the KV cache" in dom.text_by_id["generation-speed"]
    assert "the same tokens" in dom.text_by_id["generation-note"]

    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == (1200, 1500)
        # Drawn, not blank: the heat map alone has many distinct colours.
        colours = image.convert("RGB").getcolors(maxcolors=1200 * 1500)
        assert colours is not None and len(colours) > 100


def test_page_check_catches_a_broken_report(
    demo_run: Tuple[Path, Dict[str, Any], str], tmp_path: Path
) -> None:
    out, _, _ = demo_run
    page = (out / "report.html").read_text()
    broken = tmp_path / "report-broken.html"
    # Data without the fields the script reads: it must throw, and the check must say so.
    broken.write_text(
        re.sub(
            r'(<script type="application/json" id="demo-data">).*?(</script>)',
            r'\1{"weights": []}\2',
            page,
            flags=re.S,
        )
    )
    problems = page_problems(render_in_chromium(broken, "", tmp_path / "broken.png"))
    assert any("Uncaught" in problem for problem in problems), problems
    assert any("did not finish drawing" in problem for problem in problems), problems
