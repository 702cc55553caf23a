"""mhsa.replace_attention: nn.MultiheadAttention inside existing models (TransformerEncoder,
TransformerEncoderLayer, nn.Transformer, user modules) replaced in place by mhsa modules that
share the same parameters; outputs and gradients unchanged; the fused inference path of
TransformerEncoder(Layer) is turned off so that eval/no_grad really runs mhsa."""

from __future__ import annotations

import copy
from collections import Counter
from typing import List

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mhsa
from mhsa import SkippedAttention
from mhsa_testutils import assert_close

E, H, FF = 16, 4, 32


class CountOps(TorchDispatchMode):
    """Counts the ops that reach the dispatcher below autograd (the kernels actually run)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _encoder(
    batch_first: bool = True, dtype=torch.float32, num_layers: int = 2
) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=batch_first, dtype=dtype)
    # Nested tensors (the fused path's input format) need batch_first; asking for them otherwise
    # only warns.
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=batch_first)


def _randomize(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
                / p.shape[-1] ** 0.5
            )


def _masks(N: int, L: int):
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)  # True = may not attend
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[0, L - 2 :] = True  # first sequence padded; key 0 always visible (no empty rows)
    return causal, padding


def _pair(**kwargs):
    original = _encoder(**kwargs)
    _randomize(original)
    converted = mhsa.replace_attention(copy.deepcopy(original))
    return original, converted


def _assert_close(actual, expected, dtype) -> None:
    # Outputs and gradients alike: the converted models are small (gradients sum few rows).
    assert_close(actual, expected, dtype, "out", "converted against the original")


def test_encoder_is_converted_in_place_and_shares_parameters():
    model = _encoder()
    params_before = {name: p for name, p in model.named_parameters()}
    keys_before = list(model.state_dict())
    returned = mhsa.replace_attention(model)
    assert returned is model
    for layer in model.layers:
        assert type(layer.self_attn) is mhsa.MultiheadSelfAttention
    # Same Parameter objects under the same names; same state_dict keys.
    assert {name: p for name, p in model.named_parameters()} == params_before
    assert all(params_before[n] is p for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys_before


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masks", ["none", "mask", "padding", "mask+padding"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_train_mode_outputs_and_gradients_match(dtype, masks, batch_first):
    original, converted = _pair(batch_first=batch_first, dtype=dtype)
    original.train(), converted.train()
    N, L = 3, 6
    causal, padding = _masks(N, L)
    kwargs = {}
    if "mask" in masks.split("+"):
        kwargs["mask"] = causal
    if "padding" in masks:
        kwargs["src_key_padding_mask"] = padding
    g = torch.Generator().manual_seed(1)
    x = torch.randn((N, L, E) if batch_first else (L, N, E), generator=g, dtype=torch.float64).to(
        dtype
    )
    weights = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)

    results = []
    for model in (original, converted):
        xi = x.clone().requires_grad_(True)
        out = model(xi, **kwargs)
        (out * weights).sum().backward()
        results.append((out, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out_ref, gx_ref, grads_ref), (out, gx, grads) = results
    _assert_close(out, out_ref, dtype)
    _assert_close(gx, gx_ref, dtype)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        _assert_close(grads[name], grads_ref[name], dtype)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("masks", ["padding", "mask+padding", "none"])
def test_eval_no_grad_runs_mhsa_not_the_fused_path(masks):
    """In eval mode under no_grad, the original TransformerEncoder takes PyTorch's fused path
    (torch._transformer_encoder_layer_fwd, nested tensors); the converted one calls mhsa in
    every layer, never the fused kernels, and returns the same values."""
    original, converted = _pair()
    original.eval(), converted.eval()
    N, L = 3, 6
    causal, padding = _masks(N, L)
    kwargs = {"src_key_padding_mask": padding} if "padding" in masks else {}
    if "mask" in masks.split("+"):
        kwargs["mask"] = causal
    x = torch.randn(N, L, E)
    fused = {"aten._transformer_encoder_layer_fwd", "aten._native_multi_head_attention"}

    with torch.no_grad():
        with CountOps() as seen_original:
            expected_fused = original(x, **kwargs)
        with CountOps() as seen_converted:
            actual = converted(x, **kwargs)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            expected_unfused = original(x, **kwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    # The control: the original really takes the fused path (so this test can see a bypass).
    assert fused & set(seen_original.counts), seen_original.counts
    assert seen_original.counts["mhsa._mha_forward"] == 0
    # The converted model: mhsa once per layer, no fused kernel, no nested tensor.
    assert seen_converted.counts["mhsa._mha_forward"] == len(converted.layers), (
        seen_converted.counts
    )
    assert not fused & set(seen_converted.counts), seen_converted.counts
    assert not any("nested" in op for op in seen_converted.counts), seen_converted.counts

    _assert_close(actual, expected_unfused, torch.float32)
    # The fused path returns 0 at padded positions (nested tensor padding); elsewhere it agrees.
    valid = ~padding if "padding" in masks else torch.ones(N, L, dtype=torch.bool)
    _assert_close(actual[valid], expected_fused[valid], torch.float32)


def test_single_layer_eval_no_grad_runs_mhsa():
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True).eval()
    _randomize(layer)
    original = copy.deepcopy(layer)
    mhsa.replace_attention(layer)
    x = torch.randn(2, 5, E)
    with torch.no_grad(), CountOps() as seen:
        actual = layer(x)
    assert seen.counts["mhsa._mha_forward"] == 1
    assert "aten._transformer_encoder_layer_fwd" not in seen.counts
    with torch.no_grad():
        _assert_close(actual, original(x), torch.float32)


def test_optimizer_created_before_conversion_keeps_training_the_model():
    original = _encoder(dtype=torch.float64)
    _randomize(original)
    model = copy.deepcopy(original)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(original.parameters(), lr=0.1)
    mhsa.replace_attention(model)  # after the optimizer was built
    x = torch.randn(2, 5, E, dtype=torch.float64)
    for _ in range(2):
        for m, o in ((original, opt_ref), (model, opt)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for p, p_ref in zip(model.parameters(), original.parameters()):
        _assert_close(p, p_ref, torch.float64)
    with torch.no_grad():
        _assert_close(model(x), original(x), torch.float64)


def test_every_module_shape_is_converted_and_skips_are_reported():
    """Self-attention shapes become MultiheadSelfAttention, kdim/vdim, add_bias_kv and
    add_zero_attn become MultiheadAttention (sharing every parameter, and computing what nn
    computes), and only what mhsa cannot run is left and reported."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.good = nn.MultiheadAttention(E, H)
            self.kv = nn.MultiheadAttention(E, H, kdim=8, vdim=8)
            self.bias_kv = nn.MultiheadAttention(E, H, add_bias_kv=True)
            self.zero_attn = nn.MultiheadAttention(E, H, add_zero_attn=True)
            self.fp16 = nn.MultiheadAttention(
                E, H, dtype=torch.float16
            )  # converted: mhsa has float16
            self.mixed = nn.MultiheadAttention(E, H)
            self.mixed.out_proj.weight = nn.Parameter(self.mixed.out_proj.weight.detach().double())
            self.blocks = nn.Sequential(
                nn.Linear(E, E), nn.ModuleList([nn.MultiheadAttention(E, 2)])
            )

    model = Mixed()
    original = copy.deepcopy(model)
    skipped: List[SkippedAttention] = []
    general = {name: getattr(model, name) for name in ("kv", "bias_kv", "zero_attn")}
    mixed = model.mixed
    mhsa.replace_attention(model, skipped=skipped)
    assert isinstance(model.good, mhsa.MultiheadSelfAttention)
    assert isinstance(model.fp16, mhsa.MultiheadSelfAttention)
    assert isinstance(model.blocks[1][0], mhsa.MultiheadSelfAttention)
    for name, module in general.items():
        converted = getattr(model, name)
        assert isinstance(converted, mhsa.MultiheadAttention)
        for (pname, p), (_, p_old) in zip(converted.named_parameters(), module.named_parameters()):
            assert p is p_old, pname  # shared, not copied
        q = torch.randn(5, 2, E)
        kv = torch.randn(7, 2, module.kdim)
        ref_out, ref_w = getattr(original, name)(q, kv, kv)
        out, w = converted(q, kv, kv)
        _assert_close(out, ref_out, torch.float32)
        _assert_close(w, ref_w, torch.float32)
    assert model.mixed is mixed
    reasons = dict(skipped)
    assert set(reasons) == {"mixed"}
    assert "out_proj.weight dtype torch.float64" in reasons["mixed"]
    assert all(isinstance(s, SkippedAttention) for s in skipped)


def test_transformer_decoder_cross_attention_is_converted_and_model_matches():
    original = nn.Transformer(
        E,
        H,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=FF,
        dropout=0.0,
        batch_first=True,
        dtype=torch.float64,
    )
    _randomize(original)
    model = copy.deepcopy(original)
    skipped: List[SkippedAttention] = []
    mhsa.replace_attention(model, skipped=skipped)
    assert isinstance(model.encoder.layers[0].self_attn, mhsa.MultiheadSelfAttention)
    assert isinstance(model.decoder.layers[0].self_attn, mhsa.MultiheadSelfAttention)
    assert isinstance(model.decoder.layers[0].multihead_attn, mhsa.MultiheadAttention)
    assert skipped == []

    src = torch.randn(2, 7, E, dtype=torch.float64)
    tgt = torch.randn(2, 5, E, dtype=torch.float64, requires_grad=True)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    out_ref = original(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
    out = model(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True)
    _assert_close(out, out_ref, torch.float64)
    out.sum().backward()
    out_ref.sum().backward()
    for p, p_ref in zip(model.parameters(), original.parameters()):
        _assert_close(p.grad, p_ref.grad, torch.float64)


def test_shared_module_becomes_one_shared_replacement_and_include_filters():
    shared = nn.MultiheadAttention(E, H, batch_first=True)
    other = nn.MultiheadAttention(E, H, batch_first=True)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "c": other})
    skipped: List[SkippedAttention] = []
    mhsa.replace_attention(model, include=lambda name, m: name != "c", skipped=skipped)
    assert isinstance(model["a"], mhsa.MultiheadSelfAttention)
    assert model["a"] is model["b"][0]
    assert model["c"] is other
    assert skipped == [SkippedAttention("c", "excluded by include(name, module)")]


def test_top_level_module_and_hooks():
    module = nn.MultiheadAttention(E, H, dropout=0.25, bias=False)
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    module.eval()
    converted = mhsa.replace_attention(module)
    assert isinstance(converted, mhsa.MultiheadSelfAttention)
    assert converted.in_proj_weight is module.in_proj_weight and converted.in_proj_bias is None
    assert converted.out_proj is module.out_proj
    assert converted.dropout == 0.25 and not converted.training and not converted.batch_first
    x = torch.randn(5, 2, E)
    with torch.no_grad():
        _assert_close(converted(x)[0], module(x, x, x)[0], torch.float32)
    assert calls == ["MultiheadSelfAttention", "MultiheadAttention"]


def test_converted_encoder_compiles_and_exports():
    original, converted = _pair()
    converted.eval()
    N, L = 2, 6
    causal, padding = _masks(N, L)
    x = torch.randn(N, L, E)
    with torch.no_grad():
        expected = original.eval()(x, mask=causal)
        torch._dynamo.reset()
        compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
        _assert_close(compiled(x, mask=causal), expected, torch.float32)
        torch._dynamo.reset()
    exported = torch.export.export(converted, (x,), kwargs={"src_key_padding_mask": padding})
    assert "mhsa" in exported.graph_module.code
    with torch.no_grad():
        _assert_close(
            exported.module()(x, src_key_padding_mask=padding),
            converted(x, src_key_padding_mask=padding),
            torch.float32,
        )


def test_replace_attention_rejects_non_modules():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        mhsa.replace_attention("not a module")  # type: ignore[arg-type]


def test_converted_encoder_scripts_and_runs_mhsa():
    """TorchScript compiles TransformerEncoderLayer's fused branch too (it calls
    self_attn.merge_masks); the scripted converted model still runs mhsa and matches."""
    original, converted = _pair()
    original.eval(), converted.eval()
    scripted = torch.jit.script(converted)
    N, L = 2, 6
    causal, padding = _masks(N, L)
    x = torch.randn(N, L, E)
    with torch.no_grad(), CountOps() as seen:
        actual = scripted(x, mask=causal)
    assert seen.counts["mhsa._mha_forward"] == len(converted.layers), seen.counts
    assert "aten._transformer_encoder_layer_fwd" not in seen.counts
    with torch.no_grad():
        _assert_close(actual, original(x, mask=causal), torch.float32)


@pytest.mark.parametrize("which", ["none", "attn", "padding", "both", "attn3d"])
def test_merge_masks_matches_nn_multihead_attention(which):
    ref = nn.MultiheadAttention(E, H, batch_first=True)
    mod = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
    N, L = 2, 5
    query = torch.randn(N, L, E)
    attn = torch.randn(N * H, L, L) if which == "attn3d" else torch.randn(L, L)
    attn = attn if which in ("attn", "both", "attn3d") else None
    padding = torch.randn(N, L) if which in ("padding", "both") else None
    expected, expected_type = ref.merge_masks(attn, padding, query)
    actual, actual_type = mod.merge_masks(attn, padding, query)
    assert actual_type == expected_type
    if expected is None:
        assert actual is None
    else:
        assert_close(actual, expected, expected.dtype, "bitwise", "merged mask")
