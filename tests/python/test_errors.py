"""Bad input gives a clear error naming the offending argument."""

from __future__ import annotations

import re

import pytest
import torch

import mhsa
from mhsa import functional as F

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
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(w, expected[1])


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
