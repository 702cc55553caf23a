"""The README's Python snippets run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Not in `scripts/test --quick`: runs every README block in a fresh interpreter.
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 2


def test_readme_python_snippets_check_their_claims() -> None:
    """Every block asserts (assert, torch.testing.assert_close) what its comments promise, so
    running it tests it."""
    silent = [i for i, block in enumerate(BLOCKS) if "assert" not in block]  # or assert_close
    assert not silent, f"README python blocks without an assert: {silent}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_snippet_runs(index: int) -> None:
    """Each block runs as a user would run it: on its own, in a fresh interpreter (a block that
    creates a process group, for one, must not share the test process's state), within a
    bounded time."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")),
    )
    assert result.returncode == 0, (
        f"README.md python block {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    )
