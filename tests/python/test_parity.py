"""Parity of mhsa with torch.nn.MultiheadAttention: output, weights and every gradient."""

from __future__ import annotations

import pytest
import torch

from mhsa_testutils import (
    PARAM_NAMES,
    PARITY_CASES,
    Case,
    assert_close,
    assert_parity,
    causal_bool,
    make_attn_mask,
    make_input,
    make_pair,
    run_case,
)

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PARITY_CASES, ids=Case.id)
def test_parity_with_nn_multihead_attention(case: Case, dtype: torch.dtype):
    expected, actual = run_case(case, dtype)
    assert_parity(expected, actual, dtype)


REQUIRES_GRAD_SUBSETS = {
    # the usual training step: the input is data, only the parameters learn
    "params_only": ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"),
    # a frozen attention layer inside a model that trains what feeds it
    "input_only": ("input",),
    "input_and_out_proj": ("input", "out_proj.weight", "out_proj.bias"),
    "in_proj_weight_only": ("in_proj_weight",),
}


@pytest.mark.parametrize("need_weights", [True, False], ids=["w", "nw"])
@pytest.mark.parametrize("subset", list(REQUIRES_GRAD_SUBSETS))
def test_parity_when_only_some_inputs_require_grad(subset, need_weights):
    """loss.backward() when only some of x and the parameters require grad: the gradients that
    exist match nn.MultiheadAttention's and the others stay None."""
    names = REQUIRES_GRAD_SUBSETS[subset]
    dtype = torch.float64
    ref, mod = make_pair(16, 4, dtype=dtype, seed=11)
    x = make_input(7, 3, 16, batch_first=False, dtype=dtype, seed=12).detach()
    am = make_attn_mask("bool2d", N=3, H=4, L=7, dtype=dtype, seed=13)
    g = torch.Generator().manual_seed(14)
    r1 = torch.randn(x.shape, generator=g, dtype=dtype)
    r2 = torch.randn(3, 7, 7, generator=g, dtype=dtype)
    grads = {}
    for module in (ref, mod):
        xi = x.clone().requires_grad_("input" in names)
        for n, p in module.named_parameters():
            p.requires_grad_(n in names)
        out, w = module(xi, xi, xi, attn_mask=am, need_weights=need_weights)
        loss = (out * r1).sum() + ((w * r2).sum() if need_weights else 0)
        loss.backward()
        params = dict(module.named_parameters())
        grads[module is mod] = {"input": xi.grad, **{n: params[n].grad for n in PARAM_NAMES}}
    expected, actual = grads[False], grads[True]
    for n in ("input",) + PARAM_NAMES:
        if n in names:
            assert actual[n] is not None, f"no gradient for {n}"
            assert_close(actual[n], expected[n], dtype, "grad", f"grad of {n}")
        else:
            assert actual[n] is None, f"unexpected gradient for {n}"


def test_autograd_grad_with_respect_to_a_subset():
    """torch.autograd.grad for the input alone while the parameters also require grad."""
    ref, mod = make_pair(16, 4, dtype=torch.float64, seed=21)
    x = make_input(6, 2, 16, batch_first=True, dtype=torch.float64, seed=22)
    ref.batch_first = mod.batch_first = True
    (expected,) = torch.autograd.grad(ref(x, x, x)[0].sum(), [x])
    (actual,) = torch.autograd.grad(mod(x)[0].sum(), [x])
    assert_close(actual, expected, torch.float64, "grad", "grad of input")


@pytest.mark.parametrize("need_weights", [True, False], ids=["w", "nw"])
def test_is_causal_with_explicit_causal_mask(need_weights):
    """mhsa with is_causal=True and the explicit causal mask too (combined, so the same) and
    with only the explicit mask; all equal nn.MultiheadAttention given the causal mask."""
    dtype = torch.float64
    ref, mod = make_pair(16, 4, dtype=dtype, seed=31)
    x = make_input(70, 2, 16, batch_first=False, dtype=dtype, seed=32)
    causal = causal_bool(70)
    expected = ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=need_weights)[0]
    for kwargs in (
        {"is_causal": True},
        {"is_causal": True, "attn_mask": causal},
        {"attn_mask": causal},
        {
            "is_causal": True,
            "attn_mask": torch.zeros(70, 70, dtype=dtype).masked_fill(causal, float("-inf")),
        },
    ):
        actual = mod(x, need_weights=need_weights, **kwargs)[0]
        assert_close(actual, expected, dtype, "out", f"attn_output with {list(kwargs)}")


def test_key_and_value_given_as_the_query_itself():
    ref, mod = make_pair(16, 4, dtype=torch.float64, seed=41)
    x = make_input(5, 2, 16, batch_first=False, dtype=torch.float64, seed=42)
    expected = ref(x, x, x)
    for args in ((x,), (x, x), (x, x, x)):
        out, w = mod(*args)
        assert_close(out, expected[0], torch.float64, "out", "attn_output")
        assert_close(w, expected[1], torch.float64, "out", "attn_weights")
    out, w = mod(x, value=x)
    assert_close(out, expected[0], torch.float64, "out", "attn_output")
