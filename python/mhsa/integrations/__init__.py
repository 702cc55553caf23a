"""Integrations of mhsa with other libraries, one module each, imported only on request.

* :mod:`mhsa.integrations.transformers` - mhsa as an attention implementation of Hugging Face
  transformers (``attn_implementation="mhsa"``).

Nothing here is imported by ``import mhsa``, and importing this package imports none of the
libraries: each integration module imports its library itself.
"""
