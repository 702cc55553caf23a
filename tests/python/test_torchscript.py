"""TorchScript: mhsa scripted, saved, loaded; same outputs and gradients as eager mode."""

# No `from __future__ import annotations` here: TorchScript reads the annotations of the
# classes below and cannot resolve them when they are strings.

import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import mhsa
from mhsa_testutils import (
    PARAM_NAMES,
    assert_close,
    make_attn_mask,
    make_input,
    make_kpm,
    make_pair,
)

DT = torch.float64
HERE = Path(__file__).resolve().parent

# torch 2.13 marks torch.jit.script/save/load deprecated; they are what these tests test
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def _outputs_and_grads(module, x, **kwargs):
    out, w = module(x, **kwargs)
    loss = (out * out).sum() + (w.sum() * 0.5 if w is not None else 0)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [x] + [params[n] for n in PARAM_NAMES if n in params])
    return out, w, grads


def _compare(eager, loaded, x, **kwargs):
    eo, ew, eg = _outputs_and_grads(eager, x, **kwargs)
    lo, lw, lg = _outputs_and_grads(loaded, x, **kwargs)
    assert_close(lo, eo, DT, "out", "attn_output")
    if ew is None:
        assert lw is None
    else:
        assert_close(lw, ew, DT, "out", "attn_weights")
    assert len(lg) == len(eg)
    for a, e in zip(lg, eg):
        assert_close(a, e, DT, "grad", "gradient")


def _save_load(scripted, tmp_path, name="m.pt"):
    path = tmp_path / name
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path))


KWARG_CASES = {
    "defaults": lambda N, L: {},
    "masks_heads": lambda N, L: dict(
        attn_mask=make_attn_mask("bool2d", N=N, H=4, L=L, dtype=DT, seed=3),
        key_padding_mask=make_kpm("float", N=N, L=L, dtype=DT, seed=4),
        average_attn_weights=False,
    ),
    "causal_no_weights": lambda N, L: dict(is_causal=True, need_weights=False),
}


@pytest.mark.parametrize("batch_first", [False, True], ids=["sf", "bf"])
@pytest.mark.parametrize("kwargs", list(KWARG_CASES))
def test_scripted_module_save_load(kwargs, batch_first, tmp_path):
    _, eager = make_pair(16, 4, dtype=DT, batch_first=batch_first, seed=1)
    loaded = _save_load(torch.jit.script(eager), tmp_path)
    x = make_input(9, 2, 16, batch_first=batch_first, dtype=DT, seed=2)
    _compare(eager, loaded, x, **KWARG_CASES[kwargs](2, 9))
    # unbatched input through the same scripted module
    xu = make_input(9, None, 16, batch_first=batch_first, dtype=DT, seed=5)
    _compare(eager, loaded, xu)


def test_scripted_module_keeps_parameters_and_mode(tmp_path):
    _, eager = make_pair(16, 4, dtype=DT, seed=6, dropout=0.2)
    eager.eval()
    loaded = _save_load(torch.jit.script(eager), tmp_path)
    assert not loaded.training
    assert set(loaded.state_dict()) == set(eager.state_dict())
    for k, v in eager.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


class FunctionalBlock(nn.Module):
    """Calls the functional form with its own parameters."""

    def __init__(self, E: int, H: int):
        super().__init__()
        self.num_heads = H
        self.in_proj_weight = nn.Parameter(torch.randn(3 * E, E, dtype=DT) / E**0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * E, dtype=DT) * 0.3)
        self.out_proj_weight = nn.Parameter(torch.randn(E, E, dtype=DT) / E**0.5)
        self.out_proj_bias = nn.Parameter(torch.randn(E, dtype=DT) * 0.3)

    def forward(
        self, x: Tensor, key_padding_mask: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        return mhsa.functional.multi_head_self_attention(
            x,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj_weight,
            self.out_proj_bias,
            self.num_heads,
            key_padding_mask=key_padding_mask,
            average_attn_weights=False,
            batch_first=True,
        )


def test_scripted_functional_module_save_load(tmp_path):
    eager = FunctionalBlock(16, 4)
    loaded = _save_load(torch.jit.script(eager), tmp_path)
    x = make_input(7, 3, 16, batch_first=True, dtype=DT, seed=7)
    kpm = make_kpm("bool", N=3, L=7, dtype=DT, seed=8)
    e = eager(x, kpm)
    a = loaded(x, kpm)
    assert torch.equal(a[0], e[0]) and torch.equal(a[1], e[1])
    ge = torch.autograd.grad(e[0].sum() + e[1].pow(2).sum(), [x] + list(eager.parameters()))
    ga = torch.autograd.grad(a[0].sum() + a[1].pow(2).sum(), [x] + list(loaded.parameters()))
    for g1, g2 in zip(ga, ge):
        assert torch.equal(g1, g2)


def test_scripted_functional_and_op():
    ref, mod = make_pair(16, 2, dtype=DT, seed=9)
    x = make_input(6, 2, 16, batch_first=False, dtype=DT, seed=10)
    args = (x, mod.in_proj_weight, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias, 2)
    scripted_fn = torch.jit.script(mhsa.functional.multi_head_self_attention)
    out, w = scripted_fn(*args, is_causal=True)
    ref_out, ref_w = ref(
        x, x, x, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1), is_causal=True
    )
    assert_close(out, ref_out, DT, "out", "attn_output")
    assert_close(w, ref_w, DT, "out", "attn_weights")
    assert scripted_fn(*args, need_weights=False)[1] is None

    @torch.jit.script
    def op_call(x: Tensor, w: Tensor, b: Tensor, ow: Tensor, ob: Tensor) -> Tuple[Tensor, Tensor]:
        return torch.ops.mhsa.multi_head_self_attention(
            x, w, b, ow, ob, 2, 0.0, False, False, None, True, None, True, False
        )

    out2, w2 = op_call(*args[:5])
    assert_close(out2, ref(x, x, x)[0], DT, "out", "attn_output")
    assert "mhsa::multi_head_self_attention" in str(op_call.graph)
    ge = torch.autograd.grad(out2.sum() + w2.sum(), list(args[:5]))
    rout, rw = ref(x, x, x)
    gr = torch.autograd.grad(
        rout.sum() + rw.sum(), [x] + [dict(ref.named_parameters())[n] for n in PARAM_NAMES]
    )
    for a, e in zip(ge, gr):
        assert_close(a, e, DT, "grad", "gradient")


def test_make_scripted_model_script(tmp_path):
    """The script that writes the files the C++ TorchScript test loads."""
    result = subprocess.run(
        [sys.executable, str(HERE / "make_scripted_model.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = torch.jit.load(str(tmp_path / "scripted_mhsa.pt"))
    io = torch.jit.load(str(tmp_path / "scripted_mhsa_io.pt"))
    for name in ("input", "output", "grad_input"):
        assert isinstance(getattr(io, name), torch.Tensor), name
    assert "mhsa::" in str(model.inlined_graph)
    x = io.input.clone().requires_grad_()
    out = model(x)[0]
    assert_close(out, io.output, io.output.dtype, "reordered", "output of the loaded model")
    out.sum().backward()
    assert_close(x.grad, io.grad_input, io.output.dtype, "reordered_grad", "input gradient")
    assert torch.isfinite(io.grad_input).all() and io.grad_input.abs().max() > 0


class SdpaModule(nn.Module):
    """Calls the op torch.ops.mhsa.scaled_dot_product_attention (GQA, mask, causal, scale and a
    window) and the functional form (dropout 0) on the same inputs."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        out = torch.ops.mhsa.scaled_dot_product_attention(
            q, k, v, mask, 0.0, True, self.scale, True, [3, 1]
        )
        return out + mhsa.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=True, window_size=(-1, 2)
        )


def _sdpa_inputs():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 6, 8, generator=g, dtype=DT, requires_grad=True)
    k = torch.randn(2, 2, 9, 8, generator=g, dtype=DT, requires_grad=True)
    v = torch.randn(2, 2, 9, 5, generator=g, dtype=DT, requires_grad=True)
    mask = torch.rand(2, 1, 6, 9, generator=g) < 0.7
    return q, k, v, mask


def test_scripted_sdpa_module_and_function_save_load(tmp_path):
    """Scripted, saved and loaded: the same bits as eager, outputs and gradients; the graph
    calls mhsa::scaled_dot_product_attention."""
    eager = SdpaModule(0.4)
    loaded = _save_load(torch.jit.script(eager), tmp_path)
    assert "mhsa::scaled_dot_product_attention" in str(loaded.inlined_graph)
    scripted_fn = torch.jit.script(mhsa.functional.scaled_dot_product_attention)
    q, k, v, mask = _sdpa_inputs()
    without_mask = loaded(q, k, v, None)
    assert without_mask.shape == (2, 4, 6, 5) and torch.equal(without_mask, eager(q, k, v, None))
    for a_fn, e_fn in (
        (lambda *t: loaded(*t, mask), lambda *t: eager(*t, mask)),
        (
            lambda *t: scripted_fn(t[0], t[1], t[2], mask, 0.0, True, 0.4, True, (3, 1)),
            lambda *t: mhsa.scaled_dot_product_attention(
                *t, attn_mask=mask, is_causal=True, scale=0.4, enable_gqa=True, window_size=(3, 1)
            ),
        ),
    ):
        a, e = a_fn(q, k, v), e_fn(q, k, v)
        assert torch.equal(a, e)
        ga = torch.autograd.grad(a.square().sum(), (q, k, v))
        ge = torch.autograd.grad(e.square().sum(), (q, k, v))
        for x, y in zip(ga, ge):
            assert torch.equal(x, y)
