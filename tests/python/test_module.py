"""mhsa.MultiheadSelfAttention as a drop-in for self-attention nn.MultiheadAttention:
parameters, state_dict, initialization, from_torch, factory kwargs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mhsa
from mhsa_testutils import PARAM_NAMES, assert_close, make_input, randomize_


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_and_shapes_match(bias):
    ref = nn.MultiheadAttention(24, 3, bias=bias)
    mod = mhsa.MultiheadSelfAttention(24, 3, bias=bias)
    ref_sd, mod_sd = ref.state_dict(), mod.state_dict()
    assert list(mod_sd) == list(ref_sd)
    for k in ref_sd:
        assert mod_sd[k].shape == ref_sd[k].shape and mod_sd[k].dtype == ref_sd[k].dtype, k
    assert [n for n, _ in mod.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(mod_sd) == (list(PARAM_NAMES) if bias else ["in_proj_weight", "out_proj.weight"])


@pytest.mark.parametrize("direction", ["torch_to_mhsa", "mhsa_to_torch"])
def test_state_dict_loads_both_ways(direction):
    ref = nn.MultiheadAttention(16, 4, dtype=torch.float64)
    mod = mhsa.MultiheadSelfAttention(16, 4, dtype=torch.float64)
    src, dst = (ref, mod) if direction == "torch_to_mhsa" else (mod, ref)
    randomize_(src, seed=1)
    result = dst.load_state_dict(src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    x = make_input(6, 2, 16, batch_first=False, dtype=torch.float64, seed=2)
    out_ref, w_ref = ref(x, x, x)
    out, w = mod(x)
    assert_close(out, out_ref, torch.float64, "out", "attn_output")
    assert_close(w, w_ref, torch.float64, "out", "attn_weights")


def test_state_dict_survives_torch_save(tmp_path):
    mod = mhsa.MultiheadSelfAttention(16, 4)
    randomize_(mod, seed=3)
    torch.save(mod.state_dict(), tmp_path / "sd.pt")
    ref = nn.MultiheadAttention(16, 4)
    ref.load_state_dict(torch.load(tmp_path / "sd.pt"))
    for k, v in mod.state_dict().items():
        assert torch.equal(ref.state_dict()[k], v)


def test_initialization_scheme():
    """xavier_uniform_ on the packed (3E, E) in_proj_weight: U(-a, a), a = sqrt(6 / (E + 3E));
    zero biases; out_proj.weight keeps nn.Linear's init, U(-1/sqrt(E), 1/sqrt(E))."""
    E = 256
    torch.manual_seed(0)
    mod = mhsa.MultiheadSelfAttention(E, 8)
    a = math.sqrt(6.0 / (E + 3 * E))
    w = mod.in_proj_weight.detach()
    assert w.abs().max() <= a
    # uniform on [-a, a]: mean 0, variance a^2 / 3, and it fills the interval
    n = w.numel()
    assert abs(w.mean().item()) < 6 * a / math.sqrt(3 * n)
    assert abs(w.var().item() / (a * a / 3) - 1) < 0.02  # n = 196608; std of the ratio ~0.003
    assert w.abs().max() > 0.99 * a
    # the same scheme as nn.MultiheadAttention, including the RNG consumption
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, 8)
    assert torch.equal(ref.in_proj_weight, mod.in_proj_weight)
    assert torch.equal(ref.out_proj.weight, mod.out_proj.weight)
    assert (mod.in_proj_bias == 0).all() and (mod.out_proj.bias == 0).all()
    b = 1 / math.sqrt(E)
    ow = mod.out_proj.weight.detach()
    assert ow.abs().max() <= b and ow.abs().max() > 0.99 * b


def test_reset_parameters_reinitializes():
    mod = mhsa.MultiheadSelfAttention(16, 4)
    randomize_(mod, seed=4)
    mod._reset_parameters()
    assert (mod.in_proj_bias == 0).all() and (mod.out_proj.bias == 0).all()
    assert mod.in_proj_weight.abs().max() <= math.sqrt(6 / 64)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_from_torch_copies_everything(batch_first, training):
    ref = nn.MultiheadAttention(32, 8, dropout=0.25, batch_first=batch_first, dtype=torch.float64)
    randomize_(ref, seed=5)
    ref.train(training)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    assert isinstance(mod, mhsa.MultiheadSelfAttention)
    assert (mod.embed_dim, mod.num_heads, mod.head_dim) == (32, 8, 4)
    assert mod.dropout == 0.25 and mod.batch_first == batch_first and mod.training == training
    assert mod.in_proj_weight.dtype == torch.float64
    for k, v in ref.state_dict().items():
        assert torch.equal(mod.state_dict()[k], v)
    # copies, not shared storage
    with torch.no_grad():
        ref.in_proj_weight.zero_()
    assert mod.in_proj_weight.abs().sum() > 0


def test_from_torch_without_bias():
    ref = nn.MultiheadAttention(16, 2, bias=False)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    assert mod.in_proj_bias is None and mod.out_proj.bias is None
    assert list(mod.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_factory_kwargs(dtype):
    mod = mhsa.MultiheadSelfAttention(16, 4, device="cpu", dtype=dtype)
    for name, p in mod.named_parameters():
        assert p.dtype == dtype and p.device.type == "cpu", name
    meta = mhsa.MultiheadSelfAttention(16, 4, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_module_conversions():
    mod = mhsa.MultiheadSelfAttention(16, 4)
    x = make_input(5, 2, 16, batch_first=False, dtype=torch.float64, seed=6)
    mod.double()
    ref = nn.MultiheadAttention(16, 4, dtype=torch.float64)
    ref.load_state_dict(mod.state_dict())
    assert_close(mod(x)[0], ref(x, x, x)[0], torch.float64, "out", "attn_output")


def test_attributes_like_nn_multihead_attention():
    mod = mhsa.MultiheadSelfAttention(16, 4, dropout=0.1, batch_first=True)
    ref = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
    for attr in (
        "embed_dim",
        "kdim",
        "vdim",
        "_qkv_same_embed_dim",
        "num_heads",
        "dropout",
        "batch_first",
        "head_dim",
        "bias_k",
        "bias_v",
        "add_zero_attn",
    ):
        assert getattr(mod, attr) == getattr(ref, attr), attr
    assert type(mod.out_proj) is type(ref.out_proj)
    assert "embed_dim=16" in repr(mod) and "num_heads=4" in repr(mod)


def test_training_step_updates_like_nn_multihead_attention():
    """A few SGD steps on the same data: the parameters stay equal to nn.MultiheadAttention's."""
    torch.manual_seed(7)
    ref = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    randomize_(ref, seed=7)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        x = torch.randn(3, 6, 16, generator=g, dtype=torch.float64)
        target = torch.randn(3, 6, 16, generator=g, dtype=torch.float64)
        for module, optimizer in ((ref, opt_ref), (mod, opt)):
            optimizer.zero_grad()
            loss = (module(x, x, x, need_weights=False)[0] - target).pow(2).mean()
            loss.backward()
            optimizer.step()
    for k, v in ref.state_dict().items():
        assert_close(mod.state_dict()[k], v, torch.float64, "grad", k)
