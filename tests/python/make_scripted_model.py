"""Writes a TorchScript model that uses mhsa, plus a recorded input/output/gradient, for the C++
GoogleTest suite (tests/cpp/test_torchscript.cpp) to load with torch::jit::load.

    python tests/python/make_scripted_model.py DIR

writes

* ``DIR/scripted_mhsa.pt``: ``torch.jit.script`` of a small block built around
  ``mhsa.MultiheadSelfAttention`` (E=16, H=4, batch_first, float64, fixed seed, eval mode).
  ``forward(x)`` takes ``(N, L, E)`` and returns ``(output, attn_weights)``.
* ``DIR/scripted_mhsa_io.pt``: a scripted module whose tensor attributes are ``input`` (the
  fixed input), ``output`` (the model's first output for it) and ``grad_input`` (the gradient
  of ``output.sum()`` with respect to ``input``).

The C++ side loads libmhsa.so (linking it registers the ops) and must reproduce ``output`` and
``grad_input`` from ``scripted_mhsa.pt`` and ``input``.

For KV-cache decoding it also writes

* ``DIR/scripted_mhsa_decode.pt``: ``torch.jit.script`` of an ``mhsa.MultiheadSelfAttention``
  (E=16, H=4, batch_first, float64, random biases, eval mode) with its exported methods
  ``new_kv_cache(batch_size, max_len)`` and ``decode(x_new, cache)``;
* ``DIR/scripted_mhsa_decode_io.pt``: attributes ``input`` ``(N, L, E)``, ``output`` (the
  module's causal forward over all of ``input``) and ``prompt_length``; the C++ test decodes the
  prompt and then one token at a time and must reproduce ``output`` row by row.

For cross-attention and the SDPA-compatible op it writes

* ``DIR/scripted_cross.pt``: ``torch.jit.script`` of :class:`CrossBlock` (an
  ``mhsa.MultiheadAttention`` with kdim/vdim and add_bias_kv over a memory, then
  ``mhsa.scaled_dot_product_attention`` with grouped-query heads and a window); ``forward(x,
  memory)`` returns one tensor;
* ``DIR/scripted_cross_io.pt``: attributes ``input``, ``memory``, ``output``, ``grad_input``
  and ``grad_memory`` (gradients of ``output.sum()``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

import mhsa

EMBED_DIM = 16
NUM_HEADS = 4
SEED = 20240607


class AttentionBlock(nn.Module):
    """Pre-norm causal self-attention with a residual connection."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, dtype=dtype)
        self.attn = mhsa.MultiheadSelfAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True, dtype=dtype
        )

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.norm(x)
        out, weights = self.attn(h, need_weights=True, is_causal=True)
        assert weights is not None
        return x + out, weights


class Recorded(nn.Module):
    """Tensors saved as attributes of a scripted module, readable from C++ with
    ``module.attr("input").toTensor()``."""

    def __init__(self, input: Tensor, output: Tensor, grad_input: Tensor) -> None:
        super().__init__()
        self.input = input
        self.output = output
        self.grad_input = grad_input

    def forward(self) -> Tensor:
        return self.output


def build_model() -> nn.Module:
    torch.manual_seed(SEED)
    # dropout is configured but the model is saved in eval mode: a loader that ran it in
    # training mode would not reproduce the output
    model = AttentionBlock(EMBED_DIM, NUM_HEADS, dropout=0.1)
    with torch.no_grad():  # non-zero biases and norm parameters, so that they matter
        model.attn.in_proj_bias.normal_(0.0, 0.2)
        model.attn.out_proj.bias.normal_(0.0, 0.2)
        model.norm.weight.normal_(1.0, 0.1)
        model.norm.bias.normal_(0.0, 0.1)
    return model.eval()


def make_input() -> Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(2, 11, EMBED_DIM, generator=g, dtype=torch.float64)


class RecordedDecode(nn.Module):
    """The input and expected output of the decode case, readable from C++ as attributes."""

    def __init__(self, input: Tensor, output: Tensor, prompt_length: int) -> None:
        super().__init__()
        self.input = input
        self.output = output
        self.prompt_length = prompt_length

    def forward(self) -> Tensor:
        return self.output


def write_decode_case(out_dir: Path) -> Tuple[Path, Path]:
    """Writes scripted_mhsa_decode.pt and scripted_mhsa_decode_io.pt (see the module doc)."""
    torch.manual_seed(SEED + 2)
    attn = mhsa.MultiheadSelfAttention(EMBED_DIM, NUM_HEADS, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        attn.in_proj_bias.normal_(0.0, 0.2)
        attn.out_proj.bias.normal_(0.0, 0.2)
    attn.eval()
    g = torch.Generator().manual_seed(SEED + 3)
    x = torch.randn(3, 10, EMBED_DIM, generator=g, dtype=torch.float64)
    with torch.no_grad():
        output = attn(x, is_causal=True, need_weights=False)[0]
    model_path = out_dir / "scripted_mhsa_decode.pt"
    io_path = out_dir / "scripted_mhsa_decode_io.pt"
    torch.jit.save(torch.jit.script(attn), str(model_path))
    torch.jit.save(torch.jit.script(RecordedDecode(x, output, 6)), str(io_path))
    return model_path, io_path


class CrossBlock(nn.Module):
    """Cross-attention to a memory of another width, then grouped-query self-attention on the
    attention core (4 query heads over 2 key/value heads of the result)."""

    def __init__(self) -> None:
        super().__init__()
        self.cross = mhsa.MultiheadAttention(
            EMBED_DIM,
            NUM_HEADS,
            kdim=6,
            vdim=10,
            add_bias_kv=True,
            batch_first=True,
            dtype=torch.float64,
        )

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        # keys from the memory's first 6 columns (kdim), values from all 10 (vdim)
        y, _ = self.cross(x, memory[..., :6], memory, need_weights=False)
        q = y.unflatten(-1, (4, 4)).transpose(1, 2)
        kv = y[..., :8].unflatten(-1, (2, 4)).transpose(1, 2)
        z = mhsa.scaled_dot_product_attention(
            q, kv, kv, is_causal=True, enable_gqa=True, window_size=(3, 0)
        )
        return y + z.transpose(1, 2).flatten(2)


class RecordedCross(nn.Module):
    """Inputs, output and gradients of the cross-attention case, as attributes."""

    def __init__(self, tensors: Dict[str, Tensor]) -> None:
        super().__init__()
        self.input = tensors["input"]
        self.memory = tensors["memory"]
        self.output = tensors["output"]
        self.grad_input = tensors["grad_input"]
        self.grad_memory = tensors["grad_memory"]

    def forward(self) -> Tensor:
        return self.output


def write_cross_case(out_dir: Path) -> Tuple[Path, Path]:
    """Writes scripted_cross.pt and scripted_cross_io.pt (see the module doc)."""
    torch.manual_seed(SEED + 4)
    model = CrossBlock().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    scripted = torch.jit.script(model)
    g = torch.Generator().manual_seed(SEED + 5)
    x = torch.randn(2, 7, EMBED_DIM, generator=g, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 9, 10, generator=g, dtype=torch.float64, requires_grad=True)
    output = scripted(x, memory)
    output.sum().backward()
    tensors = {
        "input": x.detach().clone(),
        "memory": memory.detach().clone(),
        "output": output.detach().clone(),
        "grad_input": x.grad.clone(),
        "grad_memory": memory.grad.clone(),
    }
    model_path = out_dir / "scripted_cross.pt"
    io_path = out_dir / "scripted_cross_io.pt"
    torch.jit.save(scripted, str(model_path))
    torch.jit.save(torch.jit.script(RecordedCross(tensors)), str(io_path))
    return model_path, io_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the .pt files to")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    scripted = torch.jit.script(build_model())
    x = make_input().requires_grad_()
    output = scripted(x)[0]
    output.sum().backward()  # as the C++ test does: the parameters get .grad too
    grad_input = x.grad

    model_path = args.out_dir / "scripted_mhsa.pt"
    io_path = args.out_dir / "scripted_mhsa_io.pt"
    torch.jit.save(scripted, str(model_path))
    recorded = Recorded(x.detach().clone(), output.detach().clone(), grad_input.detach().clone())
    torch.jit.save(torch.jit.script(recorded), str(io_path))
    print(f"wrote {model_path} and {io_path}")
    decode_paths = write_decode_case(args.out_dir)
    print(f"wrote {decode_paths[0]} and {decode_paths[1]}")
    cross_paths = write_cross_case(args.out_dir)
    print(f"wrote {cross_paths[0]} and {cross_paths[1]}")


if __name__ == "__main__":
    main()
