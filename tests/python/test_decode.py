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
from mhsa_testutils import assert_close, decode_op_args, make_pair

E, H = 16, 4

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
        assert_close(out, expected, dtype, "reordered", f"step at {start}")
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
    # against the float64 projection.
    assert_close(cache.key.double(), heads(keys), dtype, "rounding", "cached keys")
    assert_close(cache.value.double(), heads(values), dtype, "rounding", "cached values")


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
    assert_close(torch.cat(outs, dim=1), expected, dtype, "reordered", "tokens")


def test_long_prefix_float64():
    """A prefix longer than any kernel tile, then single tokens; errors at float64 rounding."""
    mod = _module(torch.float64, True, True, seed=5)
    x = _tokens(2, 300, torch.float64, True, seed=6)
    cache = mod.new_kv_cache(2, 300)
    mod.decode(x[:, :290], cache)
    outs = [mod.decode(x[:, i : i + 1], cache) for i in range(290, 300)]
    expected = _full_causal(mod, x)[:, 290:]
    assert_close(torch.cat(outs, dim=1), expected, torch.float64, "reordered", "tokens")


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
    assert_close(out, _full_causal(mod, x)[4:], torch.float64, "reordered", "step")


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
    assert_close(out, _full_causal(mod.eval(), x), torch.float64, "reordered", "decoded")
    with torch.inference_mode():
        cache = mod.new_kv_cache(1, 4)
        assert_close(mod.decode(x, cache), out, torch.float64, "bitwise", "inference mode")


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
        assert_close(a, e, torch.float32, "bitwise", "under autocast")


def test_functional_form_and_schema():
    mod = _module(torch.float32, False, True)
    x = _tokens(2, 3, torch.float32, False, seed=11)
    cache = mod.new_kv_cache(2, 8)
    with torch.no_grad():
        out = mhsa.functional.decode_step(*decode_op_args(mod, x, cache))
    assert_close(out, _full_causal(mod, x), torch.float32, "reordered", "functional")
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
        decode_op_args(mod, new, cache),
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
    assert_close(
        torch.cat([first] + rest, dim=1), _full_causal(mod, x), torch.float64, "reordered", "loaded"
    )

    # a whole generation loop in TorchScript, against the same loop in eager mode
    gen = Generator(mod)
    scripted_gen = torch.jit.script(gen)
    path = tmp_path / "generator.pt"
    torch.jit.save(scripted_gen, str(path))
    got, length = torch.jit.load(str(path))(x[:, :3], 4)
    expected, expected_length = gen(x[:, :3], 4)
    assert int(length) == int(expected_length) == 7
    assert_close(got, expected, torch.float64, "reordered", "scripted generator")
