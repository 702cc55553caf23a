"""The public Python API reads well: version, exports, type hints and docstrings."""

from __future__ import annotations

import inspect
import pydoc
import re
from pathlib import Path

import pytest
import torch

import mhsa
import mhsa.functional

REPO = Path(__file__).resolve().parents[2]
PUBLIC_CALLABLES = [
    mhsa.MultiheadSelfAttention.__init__,
    mhsa.MultiheadSelfAttention.forward,
    mhsa.MultiheadSelfAttention.from_torch,
    mhsa.functional.multi_head_self_attention,
    mhsa.replace_attention,
]


def test_version_is_written_once():
    assert re.fullmatch(r"\d+\.\d+\.\d+", mhsa.__version__)
    # CMake and the wheel read it from python/mhsa/__init__.py instead of repeating it.
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "python/mhsa/__init__.py" in cmake and f"VERSION {mhsa.__version__}" not in cmake
    assert 'version = { attr = "mhsa.__version__" }' in (REPO / "pyproject.toml").read_text()


def test_all_exports_exist():
    for name in mhsa.__all__:
        assert hasattr(mhsa, name), name
    for name in ("MultiheadSelfAttention", "replace_attention", "SkippedAttention", "functional"):
        assert name in mhsa.__all__


@pytest.mark.parametrize("fn", PUBLIC_CALLABLES, ids=lambda f: f.__qualname__)
def test_public_callables_are_annotated_and_documented(fn):
    signature = inspect.signature(fn)
    for name, parameter in signature.parameters.items():
        if name in ("self", "cls") or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        assert parameter.annotation is not inspect.Parameter.empty, f"{fn.__qualname__}: {name}"
    assert signature.return_annotation is not inspect.Signature.empty, fn.__qualname__
    assert inspect.getdoc(fn) and len(inspect.getdoc(fn)) > 40, fn.__qualname__


def test_help_of_the_module_reads_well():
    text = pydoc.render_doc(mhsa.MultiheadSelfAttention, renderer=pydoc.plaintext)
    for expected in (
        "Multi-head self-attention",
        "Args:",
        "embed_dim",
        "forward(",
        "key_padding_mask",
        "is_causal",
        "from_torch(",
        "Returns",
    ):
        assert expected in text, expected
    assert "replace_attention" in (mhsa.__doc__ or "")


def test_library_path_is_inside_the_package_or_overridden():
    path = Path(mhsa.LIBRARY_PATH)
    import os

    if "MHSA_LIBRARY" in os.environ:
        assert path == Path(os.environ["MHSA_LIBRARY"])
    else:
        assert path.parent == Path(mhsa.__file__).resolve().parent
        assert (
            path.with_suffix(".torch_version").read_text().strip()
            == torch.__version__.split("+")[0]
        )
