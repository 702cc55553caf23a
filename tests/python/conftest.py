"""Shared fixtures of the mhsa pytest suite; the helpers themselves are in mhsa_testutils.py."""

from __future__ import annotations

import os
import sys
import tempfile

# torch.compile caches compiled graphs across processes (TORCHINDUCTOR_CACHE_DIR, /tmp by
# default), keyed by the traced Python graph: after a rebuild of libmhsa.so that renames an op, a
# cached graph would still call the old name. Each test session compiles into its own directory.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="mhsa-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mhsa  # noqa: E402,F401  (registers torch.ops.mhsa)
import mhsa_testutils  # noqa: E402
from mhsa._cpu_info import cpu_description  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: whole-file tests that spawn processes, compile or run at scale; "
        "`scripts/test --quick` (pytest -m 'not slow') leaves them out, `scripts/test` runs them",
    )


def pytest_report_header(config):
    """Says which CPU this is and which mhsa kernels run on it, at the top of the test output."""
    return [
        f"cpu: {cpu_description()}",
        f"mhsa: {torch.ops.mhsa._backend_info()}, torch threads {torch.get_num_threads()}",
    ]


@pytest.fixture(autouse=True)
def _seed_and_defaults():
    """Every test starts from the same global RNG state and default dtype."""
    torch.manual_seed(1234)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def sample_inputs():
    """Builds (ref, mod, x) for a given shape: an nn.MultiheadAttention with random weights,
    the mhsa module with the same weights and an input that requires grad."""

    def build(
        L=7,
        N=2,
        E=16,
        H=4,
        *,
        batch_first=False,
        bias=True,
        dtype=torch.float64,
        dropout=0.0,
        seed=0,
    ):
        ref, mod = mhsa_testutils.make_pair(
            E, H, bias=bias, batch_first=batch_first, dtype=dtype, dropout=dropout, seed=seed
        )
        x = mhsa_testutils.make_input(L, N, E, batch_first=batch_first, dtype=dtype, seed=seed + 1)
        return ref, mod, x

    return build
