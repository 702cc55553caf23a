"""mhsa: multi-head self-attention as a first-class PyTorch operator written in C++.

Importing the package loads libmhsa.so, which registers ``torch.ops.mhsa.*`` (forward, backward
and the public ``multi_head_self_attention`` op) with CPU, Meta, Autograd and AutocastCPU
kernels, so the op works in eager mode, under ``torch.compile``, ``torch.export`` / AOTInductor,
TorchScript and ``torch.autocast``.

* :class:`mhsa.MultiheadAttention` - drop-in for all of ``nn.MultiheadAttention`` (cross-attention,
  kdim/vdim, add_bias_kv, add_zero_attn).
* :class:`mhsa.MultiheadSelfAttention` - the packed self-attention fast path (KV-cache decoding,
  packed sequences).
* :func:`mhsa.functional.multi_head_self_attention` - the functional form.
* :func:`mhsa.scaled_dot_product_attention` - ``F.scaled_dot_product_attention`` on the fused
  kernels, with grouped-query heads and a sliding window.
* :func:`mhsa.replace_attention` - swaps mhsa into an existing model (e.g. an
  ``nn.TransformerEncoder``) in place, sharing its parameters.
"""

from __future__ import annotations

# The one place the version is written: setup.py (via pyproject.toml) and CMakeLists.txt read it.
__version__ = "0.2.0"

from . import _library  # noqa: E402

LIBRARY_PATH = _library.load()

from . import functional  # noqa: E402  (needs the ops registered above)
from .convert import SkippedAttention, replace_attention  # noqa: E402
from .functional import scaled_dot_product_attention  # noqa: E402
from .kv_cache import KVCache  # noqa: E402
from .modules import MultiheadSelfAttention  # noqa: E402
from .multihead_attention import MultiheadAttention  # noqa: E402

__all__ = [
    "MultiheadAttention",
    "MultiheadSelfAttention",
    "functional",
    "replace_attention",
    "scaled_dot_product_attention",
    "SkippedAttention",
    "LIBRARY_PATH",
    "__version__",
    "KVCache",
]


def __getattr__(name: str):
    """Imports :mod:`mhsa.distributed` on first use of ``mhsa.distributed``."""
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
