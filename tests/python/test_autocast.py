"""torch.autocast("cpu", dtype=torch.bfloat16): mha_forward's AutocastCPU kernel (C++, in
csrc/autocast/) runs the op in bfloat16, and gradients flow back to float32 parameters."""

from __future__ import annotations

import pytest
import torch

import mhsa
from mhsa_testutils import assert_close

E, H = 32, 4
BF16 = torch.bfloat16


def _bf16_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # bfloat16 under autocast against float32: the table's bfloat16 bound, scaled to the tensor.
    assert_close(actual.float(), expected, BF16, "scaled", what)


def _run(module, x, autocast: bool, **kwargs):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, weights = module(x, **kwargs)
    # The loss is taken in float32, outside the region, as in a mixed-precision training step.
    loss = (out.float() * torch.linspace(-1, 1, E)).sum() + (weights.float() ** 2).sum()
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out, weights, x.grad, grads


@pytest.mark.parametrize("masks", ["none", "float_attn_mask+bool_kpm", "causal"])
def test_autocast_bf16_forward_and_backward(masks):
    torch.manual_seed(0)
    module = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
    x = torch.randn(2, 9, E)
    kwargs = {}
    if masks == "float_attn_mask+bool_kpm":
        attn_mask = torch.randn(9, 9)  # float32 mask: stays float32 under autocast
        kpm = torch.zeros(2, 9, dtype=torch.bool)
        kpm[1, 6:] = True
        kwargs = {"attn_mask": attn_mask, "key_padding_mask": kpm}
    elif masks == "causal":
        kwargs = {"is_causal": True}

    out32, w32, gx32, grads32 = _run(module, x, autocast=False, **kwargs)
    out, w, gx, grads = _run(module, x, autocast=True, **kwargs)

    assert out32.dtype == torch.float32
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    _bf16_close(out, out32, "output")
    _bf16_close(w, w32, "weights")
    assert gx.dtype == torch.float32
    _bf16_close(gx, gx32, "grad x")
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32
        assert grads[name].dtype == torch.float32, name
        _bf16_close(grads[name], grads32[name], f"grad {name}")


def test_autocast_goes_through_the_op_in_bf16():
    """The AutocastCPU kernel casts x and the weights, then redispatches to mha_forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.mhsa._mha_forward.default:
                calls.append([a.dtype for a in args[:5] if isinstance(a, torch.Tensor)])
            return func(*args, **(kwargs or {}))

    module = mhsa.MultiheadSelfAttention(E, H)
    x = torch.randn(5, 2, E)
    with torch.autocast("cpu", dtype=torch.bfloat16), Record():
        module(x)
    assert calls == [[torch.bfloat16] * 5]


def test_autocast_leaves_float64_alone_and_eval_no_grad_works():
    module = mhsa.MultiheadSelfAttention(E, H, dtype=torch.float64).eval()
    x = torch.randn(5, 2, E, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual, _ = module(x)
    # autocast's rule: float64 tensors are not cast.
    assert actual.dtype == torch.float64
    assert_close(actual, expected, torch.float64, "bitwise", "float64 under autocast")

    module32 = mhsa.MultiheadSelfAttention(E, H).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = module32(x.float(), need_weights=False)
    assert out.dtype == torch.bfloat16 and weights is None


def test_autocast_under_torch_compile():
    torch._dynamo.reset()
    module = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
    x = torch.randn(2, 6, E)

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = module(x, need_weights=False)
        return out

    expected = step(x)
    actual = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    assert actual.dtype == torch.bfloat16
    assert_close(actual, expected, BF16, "bitwise", "compiled under autocast")
    torch._dynamo.reset()
