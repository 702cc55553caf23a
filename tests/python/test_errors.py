"""Bad input gives a clear error naming the offending argument: the bad-input suite of the Python
API, every entry point (the module and functional forms, the ops, decoding, packed sequences,
windows, grouped-query, scaled_dot_product_attention, MultiheadAttention); its C++ counterpart
is tests/cpp/test_bad_inputs.cpp."""

from __future__ import annotations

import re
from typing import Optional

import pytest
import torch
from torch import Tensor

import mhsa
from mhsa import functional as F
from mhsa_testutils import assert_close, decode_op_args, make_pair, randomize_

E, H, L, N = 16, 4, 5, 2


@pytest.fixture
def setup():
    mod = mhsa.MultiheadSelfAttention(E, H)
    x = torch.randn(L, N, E)
    params = (mod.in_proj_weight, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias)
    return mod, x, params


# (id, callable(mod, x, params), exception type, regex the message must match)
CASES = [
    (
        "query_4d",
        lambda m, x, p: m(torch.randn(1, L, N, E)),
        RuntimeError,
        r"query.*2-D.*3-D.*got 4-D",
    ),
    ("query_1d", lambda m, x, p: m(torch.randn(E)), RuntimeError, r"query.*got 1-D"),
    (
        "query_0d",
        lambda m, x, p: F.multi_head_self_attention(torch.tensor(1.0), *p, H),
        RuntimeError,
        r"query.*got 0-D",
    ),
    (
        "embed_dim_mismatch",
        lambda m, x, p: m(torch.randn(L, N, 8)),
        RuntimeError,
        r"in_proj_weight.*shape",
    ),
    (
        "in_proj_weight_shape",
        lambda m, x, p: F.multi_head_self_attention(x, p[0][:32], p[1], p[2], p[3], H),
        RuntimeError,
        r"in_proj_weight.*shape",
    ),
    (
        "in_proj_bias_shape",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1][:10], p[2], p[3], H),
        RuntimeError,
        r"in_proj_bias.*shape",
    ),
    (
        "out_proj_weight_shape",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1], p[2][:, :8], p[3], H),
        RuntimeError,
        r"out_proj_weight.*shape",
    ),
    (
        "out_proj_bias_shape",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1], p[2], p[3][:3], H),
        RuntimeError,
        r"out_proj_bias.*shape",
    ),
    (
        "num_heads_not_dividing",
        lambda m, x, p: F.multi_head_self_attention(x, *p, 3),
        RuntimeError,
        r"divisible by num_heads 3",
    ),
    (
        "num_heads_zero",
        lambda m, x, p: F.multi_head_self_attention(x, *p, 0),
        RuntimeError,
        r"num_heads",
    ),
    (
        "attn_mask_2d_shape",
        lambda m, x, p: m(x, attn_mask=torch.zeros(L, L - 1, dtype=torch.bool)),
        RuntimeError,
        r"attn_mask.*shape",
    ),
    (
        "attn_mask_3d_shape",
        lambda m, x, p: m(x, attn_mask=torch.zeros(H, L, L, dtype=torch.bool)),
        RuntimeError,
        r"attn_mask.*shape \[8, 5, 5\]",
    ),
    (
        "attn_mask_4d",
        lambda m, x, p: m(x, attn_mask=torch.zeros(N, H, L, L, dtype=torch.bool)),
        RuntimeError,
        r"attn_mask.*2-D.*3-D",
    ),
    (
        "attn_mask_1d",
        lambda m, x, p: m(x, attn_mask=torch.zeros(L, dtype=torch.bool)),
        RuntimeError,
        r"attn_mask",
    ),
    (
        "kpm_shape",
        lambda m, x, p: m(x, key_padding_mask=torch.zeros(L, N, dtype=torch.bool)),
        RuntimeError,
        r"key_padding_mask.*shape",
    ),
    (
        "kpm_unbatched_shape",
        lambda m, x, p: m(x[:, 0], key_padding_mask=torch.zeros(1, L, dtype=torch.bool)),
        RuntimeError,
        r"key_padding_mask",
    ),
    (
        "attn_mask_int",
        lambda m, x, p: m(x, attn_mask=torch.zeros(L, L, dtype=torch.int64)),
        RuntimeError,
        r"attn_mask.*(bool|float)",
    ),
    (
        "attn_mask_uint8",
        lambda m, x, p: m(x, attn_mask=torch.zeros(L, L, dtype=torch.uint8)),
        RuntimeError,
        r"attn_mask.*(bool|float)",
    ),
    (
        "kpm_int",
        lambda m, x, p: m(x, key_padding_mask=torch.zeros(N, L, dtype=torch.int32)),
        RuntimeError,
        r"key_padding_mask.*(bool|float)",
    ),
    (
        "input_double_weights_float",
        lambda m, x, p: m(x.double()),
        RuntimeError,
        r"in_proj_weight.*dtype",
    ),
    # An in_proj_bias of another floating dtype is cast like nn does (test_mixed_dtypes.py);
    # an integer one, and an out_proj_bias of another dtype, are refused as nn refuses them.
    (
        "in_proj_bias_integer",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1].long(), p[2], p[3], H),
        RuntimeError,
        r"in_proj_bias.*dtype",
    ),
    (
        "out_proj_bias_dtype",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1], p[2], p[3].double(), H),
        RuntimeError,
        r"out_proj_bias.*dtype",
    ),
    (
        "out_proj_dtype",
        lambda m, x, p: F.multi_head_self_attention(x, p[0], p[1], p[2].double(), p[3], H),
        RuntimeError,
        r"out_proj_weight.*dtype",
    ),
    (
        "input_integer",
        lambda m, x, p: F.multi_head_self_attention(x.long(), *(t.long() for t in p), H),
        RuntimeError,
        r"dtype",
    ),
    (
        "input_int8",
        lambda m, x, p: F.multi_head_self_attention(
            x.to(torch.int8), *(t.to(torch.int8) for t in p), H
        ),
        RuntimeError,
        r"x of dtype",
    ),
    (
        "dropout_p_range",
        lambda m, x, p: F.multi_head_self_attention(x, *p, H, dropout_p=1.5),
        RuntimeError,
        r"dropout_p",
    ),
    (
        "cross_attention_key",
        lambda m, x, p: m(x, torch.randn(L, N, E), x),
        ValueError,
        r"key.*cross-attention",
    ),
    (
        "cross_attention_value",
        lambda m, x, p: m(x, x, x.clone()),
        ValueError,
        r"value.*cross-attention",
    ),
    (
        "cross_attention_equal_values_not_same_tensor",
        lambda m, x, p: m(x, x.clone(), x.clone()),
        ValueError,
        r"cross-attention",
    ),
    (
        "attn_mask_requires_grad",
        lambda m, x, p: m(x, attn_mask=torch.zeros(L, L, requires_grad=True)),
        RuntimeError,
        r"attn_mask requires grad",
    ),
    (
        "kpm_requires_grad",
        lambda m, x, p: m(x, key_padding_mask=torch.zeros(N, L, requires_grad=True)),
        RuntimeError,
        r"key_padding_mask requires grad",
    ),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(setup, call, exc, pattern):
    mod, x, params = setup
    with pytest.raises(exc) as info:
        call(mod, x, params)
    # the first line carries the message (C++ errors append a backtrace in debug builds)
    assert re.search(pattern, str(info.value)), str(info.value)[:500]


def test_bad_input_raises_the_same_error_through_the_c10_op(setup):
    """The checks are in the op, not only in the Python wrapper."""
    _, x, p = setup
    with pytest.raises(RuntimeError, match=r"attn_mask.*shape"):
        torch.ops.mhsa._mha_forward(
            x, *p, H, False, torch.zeros(3, 3, dtype=torch.bool), None, False, 0.0, True, True
        )
    with pytest.raises(RuntimeError, match=r"x to be 3-D"):
        torch.ops.mhsa._mha_forward(x[:, 0], *p, H, False, None, None, False, 0.0, True, True)


def test_float_mask_requires_grad_is_refused_without_grad_mode(setup):
    mod, x, _ = setup
    with torch.no_grad(), pytest.raises(RuntimeError, match="attn_mask requires grad"):
        mod(x, attn_mask=torch.zeros(L, L, requires_grad=True))


@pytest.mark.parametrize("create_graph_on", ["input", "parameters"])
def test_double_backward_is_refused(setup, create_graph_on):
    mod, x, _ = setup
    x = x.clone().requires_grad_()
    out, w = mod(x)
    loss = out.pow(2).sum() + w.pow(2).sum()
    grads = torch.autograd.grad(loss, [x] + list(mod.parameters()), create_graph=True)
    second = grads[0].sum() if create_graph_on == "input" else grads[1].pow(2).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(second, [x] + list(mod.parameters()))


def test_backward_op_checks_its_saved_tensors(setup):
    _, x, p = setup
    out, w, qkv, ctx, lse, rng = torch.ops.mhsa._mha_forward(
        x, *p, H, False, None, None, False, 0.0, True, True
    )
    args = [
        out.detach(),
        None,
        x,
        p[0].detach(),
        p[2].detach(),
        qkv,
        ctx,
        lse,
        rng,
        H,
        False,
        None,
        None,
        False,
        0.0,
        True,
        [True] * 5,
    ]
    bad = list(args)
    bad[7] = lse[:, :, :-1]
    with pytest.raises(RuntimeError, match="logsumexp"):
        torch.ops.mhsa._mha_backward(*bad)
    bad = list(args)
    bad[5] = qkv[..., :-1]
    with pytest.raises(RuntimeError, match="qkv"):
        torch.ops.mhsa._mha_backward(*bad)
    bad = list(args)
    bad[1] = torch.zeros(N, L, L + 1)
    with pytest.raises(RuntimeError, match="grad_attn_weights"):
        torch.ops.mhsa._mha_backward(*bad)


def test_float_mask_of_another_float_dtype(setup):
    """nn.MultiheadAttention refuses a float64 mask on a float32 query; mhsa may refuse it too
    (naming the mask) or use it as the same mask in the query's dtype, nothing else."""
    mod, x, _ = setup
    am = torch.randn(L, L, dtype=torch.float64)
    try:
        out, w = mod(x, attn_mask=am)
    except RuntimeError as e:
        assert "attn_mask" in str(e)
        return
    expected = mod(x, attn_mask=am.float())
    assert_close(out, expected[0], x.dtype, "bitwise", "output with the converted mask")
    assert_close(w, expected[1], x.dtype, "bitwise", "weights with the converted mask")


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(embed_dim=16, num_heads=3), ValueError, r"divisible"),
        (dict(embed_dim=0, num_heads=1), ValueError, r"embed_dim"),
        (dict(embed_dim=16, num_heads=0), ValueError, r"num_heads"),
        (dict(embed_dim=16, num_heads=4, dropout=1.5), ValueError, r"dropout"),
        (dict(embed_dim=16, num_heads=4, dropout=-0.1), ValueError, r"dropout"),
    ],
    ids=["heads_not_dividing", "embed_zero", "heads_zero", "dropout_above_1", "dropout_negative"],
)
def test_module_constructor_errors(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mhsa.MultiheadSelfAttention(**kwargs)


@pytest.mark.parametrize(
    "make,exc,pattern",
    [
        (lambda: torch.nn.MultiheadAttention(16, 4, kdim=8, vdim=8), ValueError, r"kdim"),
        (lambda: torch.nn.MultiheadAttention(16, 4, add_bias_kv=True), ValueError, r"add_bias_kv"),
        (
            lambda: torch.nn.MultiheadAttention(16, 4, add_zero_attn=True),
            ValueError,
            r"add_zero_attn",
        ),
        (lambda: torch.nn.Linear(16, 16), TypeError, r"nn.MultiheadAttention"),
    ],
    ids=["kdim", "add_bias_kv", "add_zero_attn", "not_mha"],
)
def test_from_torch_refuses_what_it_cannot_represent(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mhsa.MultiheadSelfAttention.from_torch(make())


# ---------------------------------------------------------------------------------------------
# KV-cache decoding: MultiheadSelfAttention.decode and the op mhsa::decode_step


def _decode_module() -> mhsa.MultiheadSelfAttention:
    """A float64, batch-first, eval-mode module with random weights and biases."""
    _, mod = make_pair(E, H, bias=True, batch_first=True, dtype=torch.float64, seed=0)
    return mod.eval()


def _decode_tokens(N: int, L: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, L, E, generator=g, dtype=torch.float64)


def test_decode_errors():
    mod = _decode_module()
    x = _decode_tokens(2, 6, seed=10)
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
        torch.ops.mhsa.decode_step(*decode_op_args(mod, x[:, :1], cache))
    with torch.no_grad():
        bad = decode_op_args(mod, x[:, :1], cache)
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


# ---------------------------------------------------------------------------------------------
# Packed sequences: multi_head_self_attention_packed and forward_packed


def _packed_input(lengths, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), E, generator=g, dtype=torch.float64).requires_grad_()


def _packed_offsets(lengths) -> Tensor:
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0)


def _packed_call(x: Tensor, cu: Tensor, **kwargs) -> Tensor:
    _, mod = make_pair(E, H, seed=15)
    return mod.forward_packed(x, cu, **kwargs)


@pytest.mark.parametrize(
    "cu, message",
    [
        (
            torch.tensor([0, 5, 3, 8]),
            r"cu_seqlens to be non-decreasing .*cu_seqlens\[1\] = 5 > cu_seqlens\[2\] = 3",
        ),
        (torch.tensor([1, 5, 8]), r"cu_seqlens to start at 0, got cu_seqlens\[0\] = 1"),
        (torch.tensor([0, 5, 7]), r"cu_seqlens to end at T = 8 .*got cu_seqlens\[2\] = 7"),
        (torch.tensor([0.0, 5.0, 8.0]), r"cu_seqlens of dtype int32 or int64, got Float"),
        (torch.tensor([[0, 5, 8]]), r"cu_seqlens to be 1-D \(B\+1\) offsets"),
        (torch.tensor([], dtype=torch.int64), r"cu_seqlens to be 1-D \(B\+1\) offsets"),
        (
            torch.tensor([0, 5, 8], device="meta"),
            r"cu_seqlens on device cpu \(the device of x\), got meta",
        ),
    ],
    ids=["not_increasing", "first_not_zero", "last_not_T", "float", "2d", "empty", "meta_device"],
)
def test_packed_bad_cu_seqlens(cu, message):
    x = _packed_input([5, 3], seed=16)
    with pytest.raises(RuntimeError, match=message):
        _packed_call(x, cu)


def test_packed_bad_arguments():
    x = _packed_input([5, 3], seed=17)
    cu = _packed_offsets([5, 3])
    with pytest.raises(
        RuntimeError, match="max_seqlen = 4 but cu_seqlens holds a sequence of length 5"
    ):
        _packed_call(x, cu, max_seqlen=4)
    with pytest.raises(
        RuntimeError,
        match=r"window_size entries >= -1 \(-1: unbounded on that side\), got \[-2, 3\]",
    ):
        _packed_call(x, cu, window_size=(-2, 3))
    with pytest.raises(RuntimeError, match=r"expected x to be 2-D \(T, E\)"):
        _packed_call(x.detach().unsqueeze(0), cu)


# ---------------------------------------------------------------------------------------------
# Sliding window


@pytest.mark.parametrize("bad", [(-2, 0), (0, -5)])
def test_bad_window_size_is_a_clear_error(bad):
    _, mod = make_pair(8, 2, batch_first=True, dtype=torch.float64, seed=6)
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"expected window_size entries >= -1"):
        mod(x, window_size=bad)


# ---------------------------------------------------------------------------------------------
# Grouped-query self-attention (num_kv_heads)


def test_grouped_query_bad_num_kv_heads_and_packed_input_are_refused():
    E, H, L, N, DT = 32, 8, 11, 2, torch.float64
    with pytest.raises(ValueError, match="num_kv_heads"):
        mhsa.MultiheadSelfAttention(E, H, num_kv_heads=3)
    module = mhsa.MultiheadSelfAttention(E, H, batch_first=True, dtype=DT, num_kv_heads=2)
    randomize_(module, 0)
    with pytest.raises(NotImplementedError, match="grouped-query"):
        module.forward_packed(torch.randn(5, E, dtype=DT), torch.tensor([0, 5]))
    weight: Optional[Tensor] = torch.randn(3 * E, E, dtype=DT)
    with pytest.raises(RuntimeError, match="in_proj_weight"):
        mhsa.functional.multi_head_self_attention(
            torch.randn(L, N, E, dtype=DT),
            weight,
            None,
            module.out_proj.weight,
            None,
            H,
            num_kv_heads=2,
        )


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention: every refused input, with SDPA's meaning


def _t(*shape, dtype=torch.float32, requires_grad=False) -> Tensor:
    return torch.randn(shape, dtype=dtype, requires_grad=requires_grad)


SQ, SK, SV = (2, 4, 5, 8), (2, 4, 7, 8), (2, 4, 7, 8)
SDPA_CASES = [
    (
        "key_dtype",
        lambda: (_t(*SQ), _t(*SK, dtype=torch.float64), _t(*SV)),
        {},
        r"query, key, and value to have the same dtype.*query.dtype: Float and key.dtype: Double",
    ),
    (
        "value_dtype",
        lambda: (_t(*SQ), _t(*SK), _t(*SV, dtype=torch.bfloat16)),
        {},
        r"query, key, and value to have the same dtype.*value.dtype: BFloat16",
    ),
    (
        "integer_inputs",
        lambda: tuple(torch.ones(s, dtype=torch.int64) for s in (SQ, SK, SV)),
        {},
        r"dtype float32, float64, bfloat16 or float16, got Long",
    ),
    (
        "one_dim",
        lambda: (_t(8), _t(8), _t(8)),
        {},
        r"query, key, and value to all be at least 2 dimensional.*query.dim: 1",
    ),
    (
        "key_one_dim",
        lambda: (_t(5, 8), _t(8), _t(7, 8)),
        {},
        r"at least 2 dimensional.*key.dim: 1",
    ),
    # torch broadcasts a 3-D key against a 4-D query; mhsa asks for the same number of dims
    (
        "dims_differ",
        lambda: (_t(*SQ), _t(*SK[1:]), _t(*SV[1:])),
        {},
        r"query, key, and value with the same number of dims.*query.dim: 4 key.dim: 3",
    ),
    (
        "batch_differs",
        lambda: (_t(*SQ), _t(3, 4, 7, 8), _t(3, 4, 7, 8)),
        {},
        r"query, key, and value with the same batch dims",
    ),
    (
        "heads_without_enable_gqa",
        lambda: (_t(2, 8, 5, 8), _t(2, 2, 7, 8), _t(2, 2, 7, 8)),
        {},
        r"same number of heads, got query 8, key 2 and value 2 \(pass enable_gqa=True",
    ),
    (
        "heads_not_a_multiple",
        lambda: (_t(2, 6, 5, 8), _t(2, 4, 7, 8), _t(2, 4, 7, 8)),
        dict(enable_gqa=True),
        r"number of heads in key and value must divide the number of heads in query, "
        r"got query 6 and key/value 4",
    ),
    (
        "key_value_heads_differ",
        lambda: (_t(2, 4, 5, 8), _t(2, 2, 7, 8), _t(2, 1, 7, 8)),
        dict(enable_gqa=True),
        r"key and value with the same heads and length",
    ),
    (
        "key_value_lengths_differ",
        lambda: (_t(*SQ), _t(*SK), _t(2, 4, 6, 8)),
        {},
        r"key and value with the same heads and length, got key \[2, 4, 7, 8\] and value "
        r"\[2, 4, 6, 8\]",
    ),
    (
        "query_key_dims_differ",
        lambda: (_t(*SQ), _t(2, 4, 7, 6), _t(*SV)),
        {},
        r"key's last dim \(6\) to equal query's \(8\)",
    ),
    (
        "mask_key_length",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(5, 6, dtype=torch.bool)),
        r"attn_mask broadcastable to \(N, H, L, S\) = \(2, 4, 5, 7\), got shape \[5, 6\] "
        r"\(its key length dim is 6\)",
    ),
    (
        "mask_query_length",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(2, 1, 4, 7, dtype=torch.bool)),
        r"attn_mask broadcastable.*\(its query length dim is 4\)",
    ),
    (
        "mask_batch",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(3, 1, 5, 7, dtype=torch.bool)),
        r"attn_mask broadcastable.*\(its batch dim is 3\)",
    ),
    (
        "mask_heads",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(2, 3, 5, 7)),
        r"attn_mask broadcastable.*\(its heads dim is 3\)",
    ),
    (
        "mask_more_dims_than_query",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(1, 2, 4, 5, 7, dtype=torch.bool)),
        r"attn_mask broadcastable to \(\.\.\., L, S\), got shape \[1, 2, 4, 5, 7\]",
    ),
    (
        "mask_integer",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(5, 7, dtype=torch.int64)),
        r"attn_mask dtype to be bool or float.*got Long",
    ),
    (
        "mask_uint8",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.ones(5, 7, dtype=torch.uint8)),
        r"attn_mask dtype to be bool or float.*got Byte",
    ),
    (
        "mask_requires_grad",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(attn_mask=torch.zeros(5, 7, requires_grad=True)),
        r"mask requires grad",
    ),
    (
        "dropout_above_one",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(dropout_p=1.5),
        r"dropout probability has to be between 0 and 1, but got 1.5",
    ),
    (
        "dropout_negative",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(dropout_p=-0.1),
        r"dropout probability has to be between 0 and 1, but got -0.1",
    ),
    (
        "window_below_minus_one",
        lambda: (_t(*SQ), _t(*SK), _t(*SV)),
        dict(window_size=(-2, 0)),
        r"window_size entries >= -1",
    ),
]


@pytest.mark.parametrize(
    "inputs,kwargs,pattern", [c[1:] for c in SDPA_CASES], ids=[c[0] for c in SDPA_CASES]
)
def test_sdpa_refused_input_raises_with_sdpa_meaning(inputs, kwargs, pattern):
    q, k, v = inputs()
    with pytest.raises(RuntimeError) as info:
        mhsa.scaled_dot_product_attention(q, k, v, **kwargs)
    first_line = str(info.value).splitlines()[0]
    assert re.search(pattern, first_line), first_line


def test_sdpa_refused_input_raises_through_the_op_and_under_no_grad():
    """The checks are in the op, not in the Python wrapper, and in every grad mode."""
    q, k, v = _t(*SQ), _t(*SK), _t(2, 4, 6, 8)
    with pytest.raises(RuntimeError, match="key and value with the same heads and length"):
        torch.ops.mhsa.scaled_dot_product_attention(q, k, v)
    with torch.no_grad(), pytest.raises(RuntimeError, match="dropout probability"):
        torch.ops.mhsa.scaled_dot_product_attention(q, k, k, None, 2.0)
    with pytest.raises(RuntimeError, match="attn_mask broadcastable"):
        torch.ops.mhsa._attention_block_forward(
            q, k, k, attn_mask=torch.ones(5, 6, dtype=torch.bool)
        )


# ---------------------------------------------------------------------------------------------
# MultiheadAttention (cross-attention)


def test_multihead_attention_bad_inputs_are_refused_with_the_argument_named():
    ours = mhsa.MultiheadAttention(E, H, kdim=6, vdim=10)
    q = torch.randn(5, N, E)
    k = torch.randn(9, N, 6)
    v = torch.randn(9, N, 10)
    with pytest.raises(RuntimeError, match="k_proj_weight"):
        ours(q, v, v)  # keys of vdim columns
    with pytest.raises(RuntimeError, match="same length"):
        ours(q, k, v[:-1])
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(q, k, v, attn_mask=torch.zeros(5, 8, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="key_padding_mask"):
        ours(q, k, v, key_padding_mask=torch.zeros(N, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        mhsa.MultiheadAttention(E, 3)
