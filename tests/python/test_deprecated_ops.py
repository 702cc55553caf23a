"""The internal ops were renamed in 0.2.0 (mhsa::mha_forward -> mhsa::_mha_forward, and the same
for mha_backward, mha_packed_forward, mha_packed_backward). The old names stay registered so that
TorchScript models (and torch.compile caches) made before the rename keep working: each warns
once and gives exactly the renamed op's results, forward and backward."""

from __future__ import annotations

import warnings

import pytest
import torch

import mhsa  # noqa: F401  (registers torch.ops.mhsa)

E, H, L, N = 16, 4, 7, 2
OLD_NAMES = ("mha_forward", "mha_backward", "mha_packed_forward", "mha_packed_backward")


def _forward_args(requires_grad: bool = False) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(L, N, E, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    w_in = torch.randn(3 * E, E, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    b_in = torch.randn(3 * E, generator=g, dtype=torch.float64)
    w_out = torch.randn(E, E, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    # num_heads, batch_first, attn_mask, key_padding_mask, is_causal, dropout_p, need_weights,
    # average_attn_weights, window_size
    return [x, w_in, b_in, w_out, None, H, False, None, None, True, 0.0, True, True, [-1, -1]]


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_name_has_the_renamed_schema(name: str) -> None:
    old = getattr(torch.ops.mhsa, name).default._schema
    new = getattr(torch.ops.mhsa, "_" + name).default._schema
    assert old.name == f"mhsa::{name}" and new.name == f"mhsa::_{name}"
    assert str(old).replace(f"mhsa::{name}", "") == str(new).replace(f"mhsa::_{name}", "")


def test_old_forward_and_backward_equal_renamed_ops_and_warn(capfd) -> None:
    args = _forward_args()
    # The warning is TORCH_WARN_ONCE from C++; torch.ops calls print C++ warnings on stderr
    # rather than raising Python warnings, and warn_always makes "once" not depend on which
    # test called first.
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        old = torch.ops.mhsa.mha_forward(*args)
    finally:
        torch.set_warn_always(previous)
    assert "mhsa::mha_forward is deprecated: it was renamed mhsa::_mha_forward" in (
        capfd.readouterr().err
    )
    new = torch.ops.mhsa._mha_forward(*args)
    for a, b in zip(old, new):
        assert torch.equal(a, b)
    out, weights, qkv, context, lse, rng = new
    grad = torch.randn_like(out)
    bwd = [grad, None, args[0], args[1], args[3], qkv, context, lse, rng]
    bwd += [H, False, None, None, True, 0.0, True, [True, True, True, True, False], [-1, -1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TORCH_WARN_ONCE: may have warned in another test
        old_grads = torch.ops.mhsa.mha_backward(*bwd)
    new_grads = torch.ops.mhsa._mha_backward(*bwd)
    for a, b in zip(old_grads, new_grads):
        assert (a is None and b is None) or torch.equal(a, b)


def test_old_name_is_differentiable() -> None:
    """Through the old name, autograd runs the renamed op's Autograd kernel."""
    args = _forward_args(requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_old = torch.ops.mhsa.mha_forward(*args)[0]
    grads_old = torch.autograd.grad(out_old.square().sum(), [args[0], args[1], args[3]])
    out_new = torch.ops.mhsa._mha_forward(*args)[0]
    grads_new = torch.autograd.grad(out_new.square().sum(), [args[0], args[1], args[3]])
    for a, b in zip(grads_old, grads_new):
        assert torch.equal(a, b)


class _OldCaller(torch.nn.Module):
    """A scripted module as an mhsa 0.1 user wrote it: the internal op by its old name."""

    def forward(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mhsa.mha_forward(
            x, w_in, None, w_out, None, 4, False, None, None, True, 0.0, False, True, [-1, -1]
        )
        return out[0]


def test_scripted_model_calling_the_old_name_saves_loads_and_runs(tmp_path) -> None:
    path = tmp_path / "old_names.pt"
    torch.jit.save(torch.jit.script(_OldCaller()), str(path))
    assert "ops.mhsa.mha_forward" in torch.jit.load(str(path)).code
    loaded = torch.jit.load(str(path))
    args = _forward_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loaded(args[0], args[1], args[3])
    expected = torch.ops.mhsa._mha_forward(
        args[0], args[1], None, args[3], None, 4, False, None, None, True, 0.0, False, True
    )[0]
    assert torch.equal(out, expected)
