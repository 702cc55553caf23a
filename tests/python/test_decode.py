"""KV-cache decoding: MultiheadSelfAttention.new_kv_cache / decode and the op mhsa::decode_step.

The reference is one causal forward of the same module over the whole prefix: decoding a
prompt and then token by token must give, at every step, the rows that forward gives for the
new tokens.
"""

# No `from __future__ import annotations`: TorchScript compiles the module defined below.

from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.library import opcheck

import mhsa
from mhsa_testutils import make_pair

E, H = 16, 4

# (rtol, atol) of decode against the full causal forward, both in the tested dtype. float64
# agrees to rounding; bfloat16 differs by a few of its ulps (2^-8 relative) because the two paths
# round the projected keys, values and contexts in different orders.
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def _module(
    dtype: torch.dtype, batch_first: bool, bias: bool, seed: int = 0
) -> mhsa.MultiheadSelfAttention:
    """An eval-mode module with random weights and biases (so that the biases matter)."""
    _, mod = make_pair(E, H, bias=bias, batch_first=batch_first, dtype=torch.float64, seed=seed)
    return mod.to(dtype).eval()


def _tokens(N: int, L: int, dtype: torch.dtype, batch_first: bool, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g, dtype=torch.float64).to(dtype)
    return x if batch_first else x.transpose(0, 1).contiguous()


def _span(x: Tensor, start: int, stop: int, batch_first: bool) -> Tensor:
    """Tokens [start, stop) of every sequence, in the module's layout."""
    return x[:, start:stop] if batch_first else x[start:stop]


def _full_causal(mod: mhsa.MultiheadSelfAttention, x: Tensor) -> Tensor:
    with torch.no_grad():
        return mod(x, is_causal=True, need_weights=False)[0]


# How the sequence is fed: prompt length, then the sizes of the following steps.
SCHEDULE = [5, 3, 1, 1, 1, 1]


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["sf", "bf"])
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str
)
def test_decode_matches_causal_forward(dtype, batch_first, bias, N):
    mod = _module(dtype, batch_first, bias)
    total = sum(SCHEDULE)
    x = _tokens(N, total, dtype, batch_first, seed=1)
    cache = mod.new_kv_cache(N, max_len=total)
    assert isinstance(cache, mhsa.KVCache)
    assert cache.key.shape == cache.value.shape == (N, H, total, E // H)
    assert cache.key.dtype == dtype and int(cache.length) == 0
    rtol, atol = TOL[dtype]
    start = 0
    for step in SCHEDULE:
        out = mod.decode(_span(x, start, start + step, batch_first), cache)
        assert int(cache.length) == start + step
        expected = _span(
            _full_causal(mod, _span(x, 0, start + step, batch_first)),
            start,
            start + step,
            batch_first,
        )
        assert out.shape == expected.shape and out.dtype == dtype
        torch.testing.assert_close(
            out, expected, rtol=rtol, atol=atol, msg=lambda m, at=start: f"step at {at}: {m}"
        )
        start += step
    # The cache holds the projected keys and values of every token, head by head.
    w_k, w_v = mod.in_proj_weight.double()[E : 2 * E], mod.in_proj_weight.double()[2 * E :]
    xs = x.double() if batch_first else x.double().transpose(0, 1)  # (N, L, E)
    keys, values = xs @ w_k.T, xs @ w_v.T
    if bias:
        keys = keys + mod.in_proj_bias.double()[E : 2 * E]
        values = values + mod.in_proj_bias.double()[2 * E :]
    heads = lambda t: t.view(N, total, H, E // H).transpose(1, 2)  # noqa: E731
    # The cache holds the keys and values rounded to the dtype: one rounding of that dtype
    # (bfloat16 2^-8, float16 2^-11 relative) against the float64 projection.
    cache_tol = {
        torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
        torch.float16: dict(rtol=1e-3, atol=1e-3),
    }.get(dtype, dict(rtol=1e-5, atol=1e-5))
    torch.testing.assert_close(cache.key.double(), heads(keys), **cache_tol)
    torch.testing.assert_close(cache.value.double(), heads(values), **cache_tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_token_by_token_from_an_empty_cache(dtype):
    """The first token alone (an empty cache), then one at a time; 8 heads of 4 dims."""
    _, mod = make_pair(32, 8, batch_first=True, dtype=torch.float64, seed=3)
    mod = mod.to(dtype).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 32, generator=g, dtype=torch.float64).to(dtype)
    cache = mod.new_kv_cache(2, 16)
    outs = [mod.decode(x[:, i : i + 1], cache) for i in range(9)]
    expected = _full_causal(mod, x)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, rtol=rtol, atol=atol)


def test_long_prefix_float64():
    """A prefix longer than any kernel tile, then single tokens; errors at float64 rounding."""
    mod = _module(torch.float64, True, True, seed=5)
    x = _tokens(2, 300, torch.float64, True, seed=6)
    cache = mod.new_kv_cache(2, 300)
    mod.decode(x[:, :290], cache)
    outs = [mod.decode(x[:, i : i + 1], cache) for i in range(290, 300)]
    expected = _full_causal(mod, x)[:, 290:]
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, rtol=1e-12, atol=1e-12)


def test_unused_cache_slots_are_never_read():
    """Slots past the cache length hold NaN: a step that read them would return NaN."""
    mod = _module(torch.float64, False, True)
    x = _tokens(2, 6, torch.float64, False, seed=7)
    cache = mod.new_kv_cache(2, 10)
    cache.key.fill_(float("nan"))
    cache.value.fill_(float("nan"))
    mod.decode(x[:4], cache)
    out = mod.decode(x[4:6], cache)
    assert torch.isfinite(out).all()
    assert torch.isnan(cache.key[:, :, 6:]).all() and torch.isfinite(cache.key[:, :, :6]).all()
    torch.testing.assert_close(out, _full_causal(mod, x)[4:], rtol=1e-12, atol=1e-12)


def test_decode_runs_without_grad_and_ignores_dropout():
    """decode under grad mode (the parameters require grad): an output without history; a
    module in training mode with dropout still decodes deterministically (inference)."""
    _, mod = make_pair(E, H, dropout=0.5, batch_first=True, dtype=torch.float64, seed=8)
    mod.train()
    assert mod.in_proj_weight.requires_grad and torch.is_grad_enabled()
    x = _tokens(1, 4, torch.float64, True, seed=9)
    cache = mod.new_kv_cache(1, 4)
    out = mod.decode(x, cache)
    assert not out.requires_grad and out.grad_fn is None
    assert not cache.key.requires_grad
    torch.testing.assert_close(out, _full_causal(mod.eval(), x), rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        cache = mod.new_kv_cache(1, 4)
        torch.testing.assert_close(mod.decode(x, cache), out, rtol=0, atol=0)


def test_decode_ignores_autocast():
    """Under torch.autocast the cache's dtype decides: a float32 cache decodes in float32, from
    the first step (a causal forward inside the op) to the following ones."""
    mod = _module(torch.float32, True, True)
    x = _tokens(2, 6, torch.float32, True, seed=15)
    plain = mod.new_kv_cache(2, 6)
    expected = [mod.decode(x[:, :4], plain), mod.decode(x[:, 4:6], plain)]
    cache = mod.new_kv_cache(2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [mod.decode(x[:, :4], cache), mod.decode(x[:, 4:6], cache)]
    for a, e in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def _op_args(mod: mhsa.MultiheadSelfAttention, x: Tensor, cache: mhsa.KVCache) -> tuple:
    return (
        x,
        mod.in_proj_weight,
        mod.in_proj_bias,
        mod.out_proj.weight,
        mod.out_proj.bias,
        H,
        mod.batch_first,
        cache.key,
        cache.value,
        cache.length,
    )


def test_errors():
    mod = _module(torch.float64, True, True)
    x = _tokens(2, 6, torch.float64, True, seed=10)
    cache = mod.new_kv_cache(2, 6)
    mod.decode(x[:, :5], cache)
    key_before, value_before = cache.key.clone(), cache.value.clone()
    with pytest.raises(
        RuntimeError, match=r"KV cache is full: max_len 6, current length 5, cannot append T = 2"
    ):
        mod.decode(x[:, :2], cache)
    # a refused step leaves the cache as it was
    assert int(cache.length) == 5
    assert torch.equal(cache.key, key_before) and torch.equal(cache.value, value_before)
    mod.decode(x[:, 5:6], cache)
    with pytest.raises(
        RuntimeError, match=r"KV cache is full: max_len 6, current length 6, cannot append T = 1"
    ):
        mod.decode(x[:, 5:6], cache)

    cache = mod.new_kv_cache(3, 6)
    with pytest.raises(
        RuntimeError, match=r"batch size mismatch: the cache holds 3 sequences .* x_new has 2"
    ):
        mod.decode(x[:, :1], cache)
    cache = mod.new_kv_cache(2, 6, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"expected key_cache of dtype Double .*got Float"):
        mod.decode(x[:, :1], cache)
    cache = mod.new_kv_cache(2, 6)
    with pytest.raises(
        RuntimeError, match=r"expected x_new with embed_dim 16 .* got x_new of shape \[2, 1, 8\]"
    ):
        mod.decode(x[:, :1, :8], cache)
    with pytest.raises(RuntimeError, match=r"expected at least one new token"):
        mod.decode(x[:, :0], cache)
    with pytest.raises(RuntimeError, match=r"expected x to be 3-D"):
        mod.decode(x[0, :1], cache)
    with pytest.raises(
        RuntimeError, match=r"expected x of dtype float32, float64, bfloat16 or float16, got Long"
    ):
        mod.decode(x[:, :1].long(), cache)
    with pytest.raises(ValueError, match=r"max_len > 0, got 0"):
        mod.new_kv_cache(2, 0)
    with pytest.raises(ValueError, match=r"batch_size > 0, got 0"):
        mod.new_kv_cache(0, 4)
    assert int(cache.length) == 0

    # the op itself, called with parameters that require grad while grad mode is on
    with pytest.raises(
        RuntimeError, match=r"in_proj_weight requires grad, but KV-cache decoding is inference only"
    ):
        torch.ops.mhsa.decode_step(*_op_args(mod, x[:, :1], cache))
    with torch.no_grad():
        bad = _op_args(mod, x[:, :1], cache)
        with pytest.raises(RuntimeError, match=r"cache_length to be an int64 tensor of shape \(\)"):
            torch.ops.mhsa.decode_step(*bad[:9], cache.length.view(1))
        with pytest.raises(RuntimeError, match=r"expected a contiguous key_cache"):
            torch.ops.mhsa.decode_step(
                *bad[:7], cache.key.transpose(0, 1).contiguous().transpose(0, 1), *bad[8:]
            )
        with pytest.raises(RuntimeError, match=r"share memory"):
            torch.ops.mhsa.decode_step(*bad[:8], cache.key, cache.length)
        with pytest.raises(
            RuntimeError, match=r"expected value_cache of shape \(2, 4, max_len, 4\)"
        ):
            torch.ops.mhsa.decode_step(
                *bad[:8], cache.value[:, :, :, :2].contiguous(), cache.length
            )


def test_functional_form_and_schema():
    mod = _module(torch.float32, False, True)
    x = _tokens(2, 3, torch.float32, False, seed=11)
    cache = mod.new_kv_cache(2, 8)
    with torch.no_grad():
        out = mhsa.functional.decode_step(*_op_args(mod, x, cache))
    torch.testing.assert_close(out, _full_causal(mod, x), rtol=1e-5, atol=1e-5)
    schema = str(torch.ops.mhsa.decode_step.default._schema)
    for mutated in ("Tensor(a!) key_cache", "Tensor(b!) value_cache", "Tensor(c!) cache_length"):
        assert mutated in schema


OPCHECK_SAMPLES = {
    "f64_prompt_sf": dict(dtype=torch.float64, batch_first=False, cached=0, T=3),
    "f32_step_bf": dict(dtype=torch.float32, batch_first=True, cached=4, T=1),
    "bf16_chunk_bf": dict(dtype=torch.bfloat16, batch_first=True, cached=2, T=2),
}


@pytest.mark.parametrize("sample", list(OPCHECK_SAMPLES))
def test_opcheck_decode_step(sample):
    opts = OPCHECK_SAMPLES[sample]
    mod = _module(opts["dtype"], opts["batch_first"], True)
    for p in mod.parameters():
        p.requires_grad_(False)
    x = _tokens(2, opts["cached"] + opts["T"], opts["dtype"], opts["batch_first"], seed=12)
    # room for every call opcheck makes on these same tensors
    cache = mod.new_kv_cache(2, 64)
    if opts["cached"]:
        mod.decode(_span(x, 0, opts["cached"], opts["batch_first"]), cache)
    new = _span(x, opts["cached"], opts["cached"] + opts["T"], opts["batch_first"])
    opcheck(
        torch.ops.mhsa.decode_step.default,
        _op_args(mod, new, cache),
        test_utils=(
            "test_schema",
            "test_autograd_registration",
            "test_faketensor",
            "test_aot_dispatch_dynamic",
        ),
    )


class Generator(nn.Module):
    """A scripted caller: prompt, then tokens fed back from its own outputs."""

    def __init__(self, attn: mhsa.MultiheadSelfAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, prompt: Tensor, steps: int) -> Tuple[Tensor, Tensor]:
        cache = self.attn.new_kv_cache(prompt.size(0), prompt.size(1) + steps)
        out = self.attn.decode(prompt, cache)
        outs: List[Tensor] = [out]
        token = out[:, -1:]
        for _ in range(steps):
            token = self.attn.decode(token, cache)
            outs.append(token)
        return torch.cat(outs, dim=1), cache.length


def test_torchscript_decode(tmp_path: Path):
    mod = _module(torch.float64, True, True, seed=13)
    scripted = torch.jit.script(mod)
    path = tmp_path / "decode.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    assert "mhsa::decode_step" in str(loaded.decode.inlined_graph)
    x = _tokens(2, 7, torch.float64, True, seed=14)
    cache = loaded.new_kv_cache(2, 7)
    assert cache.key.shape == (2, H, 7, E // H)
    first = loaded.decode(x[:, :4], cache)
    rest = [loaded.decode(x[:, i : i + 1], cache) for i in range(4, 7)]
    assert int(cache[2]) == 7
    torch.testing.assert_close(
        torch.cat([first] + rest, dim=1), _full_causal(mod, x), rtol=1e-12, atol=1e-12
    )

    # a whole generation loop in TorchScript, against the same loop in eager mode
    gen = Generator(mod)
    scripted_gen = torch.jit.script(gen)
    path = tmp_path / "generator.pt"
    torch.jit.save(scripted_gen, str(path))
    got, length = torch.jit.load(str(path))(x[:, :3], 4)
    expected, expected_length = gen(x[:, :3], 4)
    assert int(length) == int(expected_length) == 7
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
