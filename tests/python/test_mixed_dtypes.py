"""Parameters of mixed dtypes, as nn.MultiheadAttention (self-attention) takes them.

nn accepts an in_proj_bias of any floating dtype (F.linear casts it to the input's dtype; the
result has the input's dtype and the bias gradient the bias's dtype) and refuses everything
else that mixes dtypes (input vs weights, out_proj.bias vs out_proj.weight). mhsa accepts and
refuses the same, with clear errors, and replace_attention converts only what mhsa then runs.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import mhsa
from mhsa_testutils import assert_close

FLOATING = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# The tolerance kinds (mhsa_testutils.TOLERANCES) per dtype, for outputs and gradients: tiny
# shapes (2 x 5 x 8), so in float64 only a few roundings differ from nn.
KINDS = {
    torch.float64: ("reordered", "reordered_grad"),
    torch.float32: ("out", "out"),
    torch.bfloat16: ("out", "scaled"),
}


def module_with_bias(
    dtype: torch.dtype, bias_dtype: torch.dtype, seed: int = 0
) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(8, 2, batch_first=True).to(dtype)
    with torch.no_grad():
        module.in_proj_bias.normal_(0, 0.5)
        module.out_proj.bias.normal_(0, 0.5)
    module.in_proj_bias = nn.Parameter(module.in_proj_bias.detach().to(bias_dtype))
    return module


def run(module: nn.Module, x: torch.Tensor, is_nn: bool):
    x = x.clone().requires_grad_(True)
    out = module(x, x, x)[0] if is_nn else module(x)[0]
    out.float().square().sum().backward()
    return out, [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize(
    "dtype,bias_dtype",
    [
        (d, b)
        for d, b in itertools.product([torch.float64, torch.float32, torch.bfloat16], FLOATING)
        if d != b
    ],
)
def test_in_proj_bias_of_another_dtype_matches_nn(dtype, bias_dtype):
    reference = module_with_bias(dtype, bias_dtype)
    ours = mhsa.MultiheadSelfAttention.from_torch(reference)
    assert ours.in_proj_bias.dtype == bias_dtype
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    out_ref, grads_ref = run(reference, x, True)
    out, grads = run(ours, x, False)
    assert out.dtype == out_ref.dtype == dtype
    out_kind, grad_kind = KINDS[dtype]
    assert_close(out, out_ref, dtype, out_kind, "output")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert g.dtype == g_ref.dtype
        assert_close(g, g_ref, dtype, grad_kind, f"gradient {i}")


def test_replace_attention_converts_mixed_bias_and_runs_it():
    model = nn.Sequential(module_with_bias(torch.float64, torch.float32))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = model[0](x, x, x)[0]
    skipped: list = []
    mhsa.replace_attention(model, skipped=skipped)
    assert skipped == [] and isinstance(model[0], mhsa.MultiheadSelfAttention)
    assert_close(model[0](x)[0], expected, torch.float64, "reordered", "converted module")


def test_out_proj_bias_of_another_dtype_is_refused_like_nn():
    reference = module_with_bias(torch.float64, torch.float64)
    reference.out_proj.bias = nn.Parameter(reference.out_proj.bias.detach().float())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        reference(x, x, x)  # nn refuses it too
    ours = mhsa.MultiheadSelfAttention.from_torch(reference)
    with pytest.raises(RuntimeError, match=r"expected out_proj_bias of dtype Double .* got Float"):
        ours(x)
    skipped: list = []
    model = nn.Sequential(reference)
    mhsa.replace_attention(model, skipped=skipped)
    assert [s.name for s in skipped] == ["0"] and "out_proj.bias dtype" in skipped[0].reason
    assert isinstance(model[0], nn.MultiheadAttention)


def test_input_of_another_dtype_than_the_weights_is_refused_like_nn():
    reference = module_with_bias(torch.float64, torch.float64)
    x = torch.randn(2, 5, 8, dtype=torch.float32)
    with pytest.raises(RuntimeError):
        reference(x, x, x)
    ours = mhsa.MultiheadSelfAttention.from_torch(reference)
    with pytest.raises(RuntimeError, match=r"expected in_proj_weight of dtype Float .* got Double"):
        ours(x)


def test_out_proj_weight_of_another_dtype_is_skipped_by_replace_attention():
    reference = module_with_bias(torch.float32, torch.float32)
    reference.out_proj.weight = nn.Parameter(reference.out_proj.weight.detach().double())
    skipped: list = []
    model = nn.Sequential(reference)
    mhsa.replace_attention(model, skipped=skipped)
    assert len(skipped) == 1 and "out_proj.weight dtype" in skipped[0].reason
