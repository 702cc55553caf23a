"""mhsa: multi-head self-attention as a first-class PyTorch operator written in C++.

Importing the package loads libmhsa.so, which registers ``torch.ops.mhsa.*`` (forward, backward
and the public ``multi_head_self_attention`` op) with CPU, Meta and Autograd kernels.

* :class:`mhsa.MultiheadSelfAttention` - drop-in for self-attention ``nn.MultiheadAttention``.
* :func:`mhsa.functional.multi_head_self_attention` - the functional form.
"""

from __future__ import annotations

from . import _library

LIBRARY_PATH = _library.load()

from . import functional  # noqa: E402  (needs the ops registered above)
from .modules import MultiheadSelfAttention  # noqa: E402

__version__ = "0.1.0"

__all__ = ["MultiheadSelfAttention", "functional", "LIBRARY_PATH", "__version__"]
