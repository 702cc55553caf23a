"""Hostile values: NaN and Inf in the input, the parameters and the masks, float masks of all
-inf, huge magnitudes whose exp would overflow without the max-shift, denormals.

Where nn.MultiheadAttention's result is defined mhsa must match it: finite results closely,
non-finite ones row for row (NaN in, NaN out in the affected rows, and only there). Where mhsa
promises more (a query row that sees no key gets zero attention instead of NaN), it must keep
the promise: finite output, weights and gradients. Nothing may crash.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mhsa_testutils import PARAM_NAMES, TOLERANCES, assert_close, make_pair, tolerance

L, N, E, H = 9, 3, 16, 4
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def _both(ref, mod, x, **kwargs):
    """(nn.MultiheadAttention's (out, weights), mhsa's (out, weights))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref(x, x, x, **kwargs)
    return expected, mod(x, **kwargs)


def _assert_rows_match(actual, expected, dtype, what):
    """The same rows (last dim) are non-finite, the finite rows are close."""
    bad_a = (~torch.isfinite(actual)).any(-1)
    bad_e = (~torch.isfinite(expected)).any(-1)
    assert torch.equal(bad_a, bad_e), (
        f"{what}: non-finite rows differ from nn.MultiheadAttention: mhsa {bad_a.nonzero().tolist()}, "
        f"MHA {bad_e.nonzero().tolist()}"
    )
    assert_close(actual[~bad_e], expected[~bad_e], dtype, "out", f"{what} (finite rows)")


def _check_like_mha(ref, mod, x, dtype, *, expect_nonfinite=None, **kwargs):
    for average in (True, False):
        (ro, rw), (mo, mw) = _both(ref, mod, x, average_attn_weights=average, **kwargs)
        if expect_nonfinite is not None:  # the premise: the case is hostile for MHA too (or not)
            assert bool((~torch.isfinite(ro)).any()) == expect_nonfinite
        _assert_rows_match(mo, ro, dtype, f"attn_output (average={average})")
        _assert_rows_match(mw, rw, dtype, f"attn_weights (average={average})")
    # need_weights=False: the same kernels without the weights sweep (compared with MHA's
    # need_weights=True path, whose softmax does not zero-fill rows)
    _, (mo, _) = _both(ref, mod, x, need_weights=False, **kwargs)
    (ro, _), _ = _both(ref, mod, x, need_weights=True, **kwargs)
    _assert_rows_match(mo, ro, dtype, "attn_output (need_weights=False)")


def _grads(module, x, out, w):
    loss = out.sum() + (w.sum() if w is not None else 0)
    params = dict(module.named_parameters())
    return torch.autograd.grad(loss, [x] + [params[n] for n in PARAM_NAMES])


# ------------------------------------------------------------------------------------------
# NaN and Inf in the input


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_input_token(dtype, value):
    """One non-finite element in token 3 of batch 1: that batch's rows are non-finite (its
    key and value reach every query), the other batches are untouched; backward runs."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=1)
    x = torch.randn(L, N, E, dtype=dtype)
    x[3, 1, 5] = value
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=True)
    (_, _), (mo, _) = _both(ref, mod, x)
    assert (~torch.isfinite(mo[:, 1])).all(-1).any() and torch.isfinite(mo[:, [0, 2]]).all()
    xg = x.clone().requires_grad_()
    out, w = mod(xg)
    grads = _grads(mod, xg, out, w)  # must not crash; batch 0 and 2's input grads stay finite
    assert torch.isfinite(grads[0][:, [0, 2]]).all()


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_token_that_is_masked_out(dtype, mask_kind):
    """A NaN token hidden by key_padding_mask. The outputs are NaN on the same rows as
    nn.MultiheadAttention's (the masked value row still meets a zero probability in the
    P @ V product, 0 * NaN = NaN). With a float mask the scores are NaN + -inf = NaN, as in
    nn.MultiheadAttention, row for row. With a bool mask mhsa really drops the masked key from
    the scores (nn.MultiheadAttention adds -inf to the NaN score and gets NaN), so the weights of
    the other queries stay finite: they must then be right, and non-finite only where
    nn.MultiheadAttention's are."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=2)
    x = torch.randn(L, N, E, dtype=dtype)
    x[3, 1, 5] = math.nan
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[1, 3] = True
    if mask_kind == "float":
        kpm = torch.zeros(N, L, dtype=dtype).masked_fill(kpm, -math.inf)
        _check_like_mha(ref, mod, x, dtype, key_padding_mask=kpm)
        return
    for average in (True, False):
        (ro, rw), (mo, mw) = _both(ref, mod, x, key_padding_mask=kpm, average_attn_weights=average)
        _assert_rows_match(mo, ro, dtype, "attn_output")
        bad_m = (~torch.isfinite(mw)).any(-1)
        bad_r = (~torch.isfinite(rw)).any(-1)
        assert not (bad_m & ~bad_r).any(), "mhsa weights non-finite where MHA's are finite"
        assert bad_m.any(), "the NaN query's own row stays NaN"
        assert_close(mw[~bad_r], rw[~bad_r], dtype, "out", "attn_weights (rows finite in MHA)")
        # batch 1's finite weight rows give the masked key 3 nothing
        w1, ok1 = mw[1], ~bad_m[1]
        assert (w1[ok1][..., 3] == 0).all()


def test_nan_input_bfloat16_stays_nan():
    """bfloat16 conversions keep NaN (the kernels' own round-to-nearest-even keeps it quiet)."""
    _, mod32 = make_pair(E, H, dtype=torch.float32, seed=3)
    mod = mod32.to(torch.bfloat16)
    x = torch.randn(L, N, E).bfloat16()
    x[3, 1, 5] = math.nan
    out, w = mod(x, average_attn_weights=False)
    assert torch.isnan(out[:, 1]).any(-1).all() and torch.isfinite(out[:, [0, 2]]).all()
    assert torch.isnan(w[1]).all() and torch.isfinite(w[[0, 2]]).all()


# ------------------------------------------------------------------------------------------
# NaN in the parameters


@pytest.mark.parametrize("where", ["q_bias", "k_bias", "v_bias", "out_weight"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_parameters(dtype, where):
    """A NaN in the query, key or value part of in_proj_bias (head 0) or in out_proj.weight:
    nn.MultiheadAttention gives NaN on every row the NaN reaches, and so must mhsa, with
    need_weights True or False. In particular a head whose every score is NaN (NaN queries)
    is not a "fully masked" head: it must not come out as zero attention."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=4)
    index = {"q_bias": 0, "k_bias": E, "v_bias": 2 * E}.get(where)
    with torch.no_grad():
        for m in (ref, mod):
            if index is not None:
                m.in_proj_bias[index] = math.nan
            else:
                m.out_proj.weight[2, 3] = math.nan
    x = torch.randn(L, N, E, dtype=dtype)
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=True)
    # forward and backward agree on it: no finite output with NaN gradients
    xg = x.clone().requires_grad_()
    out, _ = mod(xg, need_weights=False)
    (gx,) = torch.autograd.grad(out.sum(), [xg])
    if torch.isfinite(out).all():
        assert torch.isfinite(gx).all(), "finite output but NaN gradients"


# ------------------------------------------------------------------------------------------
# Masks of all -inf, non-finite and huge mask values


@pytest.mark.parametrize("which", ["attn2d", "attn3d", "kpm", "both"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_float_masks_of_all_neg_inf(dtype, which):
    """Every key masked by float masks: nn.MultiheadAttention gives NaN, mhsa its promise,
    zero attention: the output is out_proj.bias, the weights 0, every gradient finite (only
    out_proj.bias gets a non-zero one)."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=5)
    x = torch.randn(L, N, E, dtype=dtype, requires_grad=True)
    kw = {}
    if which in ("attn2d", "both"):
        kw["attn_mask"] = torch.full((L, L), -math.inf, dtype=dtype)
    if which == "attn3d":
        kw["attn_mask"] = torch.full((N * H, L, L), -math.inf, dtype=dtype)
    if which in ("kpm", "both"):
        kw["key_padding_mask"] = torch.full((N, L), -math.inf, dtype=dtype)
    (ro, rw), _ = _both(ref, mod, x, **kw)
    assert torch.isnan(ro).all() and torch.isnan(rw).all()
    for average in (True, False):
        out, w = mod(x, average_attn_weights=average, **kw)
        bias = mod.out_proj.bias.detach().expand(L, N, E)
        assert_close(out.detach(), bias, dtype, "bitwise", "output of fully masked rows")
        assert (w == 0).all()
        grads = _grads(mod, x, out, w)
        for name, gr in zip(("input",) + PARAM_NAMES, grads):
            assert torch.isfinite(gr).all(), name
            if name != "out_proj.bias":
                assert (gr == 0).all(), name
        ones = torch.full_like(grads[-1], L * N)
        assert_close(grads[-1], ones, dtype, "bitwise", "out_proj.bias.grad")


@pytest.mark.parametrize("value", [math.inf, math.nan], ids=["+inf", "nan"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_mask_entries(dtype, value):
    """+inf or NaN in a float attn_mask or key_padding_mask: the rows that see it are
    non-finite, as in nn.MultiheadAttention; the rest match."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=6)
    x = torch.randn(L, N, E, dtype=dtype)
    am = torch.randn(L, L, dtype=dtype)
    am[2, 3] = value
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=True, attn_mask=am)
    kpm = torch.zeros(N, L, dtype=dtype)
    kpm[2, 6] = value
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=True, key_padding_mask=kpm)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_finite_mask_values(dtype):
    """Mask values of +-finfo.max and +-1e30 (float32) / 1e300 (float64), with sums of two masks
    that overflow to -inf: still the same as nn.MultiheadAttention, with gradients."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=7)
    big = torch.finfo(dtype).max
    x = torch.randn(L, N, E, dtype=dtype)
    am = torch.randn(L, L, dtype=dtype)
    am[:, ::2] = -big
    kpm = torch.zeros(N, L, dtype=dtype)
    kpm[:, 1::3] = -big
    kpm[:, 0] = -big  # key 0: -max + -max = -inf
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=False, attn_mask=am, key_padding_mask=kpm)
    am = torch.randn(L, L, dtype=dtype) * (1e30 if dtype == torch.float32 else 1e300)
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=False, attn_mask=am)
    xg = x.clone().requires_grad_()
    for module in (ref, mod):
        module.zero_grad()
    (ro, rw), (mo, mw) = _both(ref, mod, xg, attn_mask=am, key_padding_mask=kpm)
    for name, a, e in zip(
        ("input",) + PARAM_NAMES, _grads(mod, xg, mo, mw), _grads(ref, xg, ro, rw)
    ):
        assert_close(a, e, dtype, "grad", f"grad of {name}")


# ------------------------------------------------------------------------------------------
# Huge magnitudes and denormals


def _max_abs_score(module, x):
    """max |q.k / sqrt(D)| over all heads: the scale of the softmax's input."""
    with torch.no_grad():
        q, k, _ = torch.nn.functional.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(
            3, -1
        )
        D = E // H
        q = q.reshape(L, N * H, D).transpose(0, 1)
        k = k.reshape(L, N * H, D).transpose(0, 1)
        return (q @ k.transpose(1, 2)).abs().max().item() / math.sqrt(D)


def _assert_close_conditioned(actual, expected, dtype, kind, what, score_scale):
    """assert_close with the tolerance widened by the conditioning of the softmax: a score of
    magnitude s is only known to s * eps, which moves its probability by that much relative
    (the table's "conditioned" entry: its rtol times the largest score)."""
    tol = tolerance(dtype, kind)
    cond = TOLERANCES[dtype]["conditioned"].rtol * score_scale
    tol["rtol"] = max(tol["rtol"], cond)
    tol["atol"] = max(tol["atol"], cond * max(1.0, expected.detach().abs().max().item()))
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e10], ids=["1e3", "1e6", "1e10"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_scores_are_stable(dtype, scale):
    """Inputs scaled so that the scores reach ~scale^2: exp would overflow without the
    max-shift. The softmax is one-hot then; output and weights match nn.MultiheadAttention,
    and so do the gradients that do not pass through the softmax derivative (out_proj, the
    value part of in_proj).

    The gradients that do (input, query and key parts of in_proj) are only checked finite:
    with a saturated softmax their true value is ~0, nn.MultiheadAttention gets exact zeros
    from P * (dP - rowsum(P * dP)), while mhsa's FlashAttention-style P * (dP - rowsum(dO * O))
    leaves rounding noise of order eps * |dO| |V| |K| / sqrt(D) - within the usual backward
    error bound, but not comparable with a fixed tolerance at these magnitudes."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=8)
    x = (torch.randn(L, N, E, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    (ro, rw), (mo, mw) = _both(ref, mod, x, average_attn_weights=False)
    assert torch.isfinite(ro).all()
    assert_close(mo, ro, dtype, "out", "attn_output")
    assert_close(mw, rw, dtype, "out", "attn_weights")
    assert (mw.amax(-1) > 0.99).float().mean() > 0.9  # the premise: almost one-hot
    grads = _grads(mod, x, mo, mw)
    ref_grads = _grads(ref, x, ro, rw)
    for name, a in zip(("input",) + PARAM_NAMES, grads):
        assert torch.isfinite(a).all(), f"grad of {name}"
    # value part of in_proj, out_proj.weight, out_proj.bias
    assert_close(
        grads[1][2 * E :], ref_grads[1][2 * E :], dtype, "grad", "grad of in_proj_weight (values)"
    )
    assert_close(
        grads[2][2 * E :], ref_grads[2][2 * E :], dtype, "grad", "grad of in_proj_bias (values)"
    )
    assert_close(grads[3], ref_grads[3], dtype, "grad", "grad of out_proj.weight")
    assert_close(grads[4], ref_grads[4], dtype, "grad", "grad of out_proj.bias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflowing_scores(dtype):
    """Inputs so large that q.k overflows (inf - inf = NaN scores): nn.MultiheadAttention is
    NaN on every row; mhsa must not turn such a row into a finite "fully masked" one."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=9)
    scale = 1e200 if dtype == torch.float64 else 1e25
    x = (torch.randn(L, N, E, dtype=torch.float64) * scale).to(dtype)
    _check_like_mha(ref, mod, x, dtype, expect_nonfinite=True)


@pytest.mark.parametrize("spread", [10.0, 30.0], ids=["10", "30"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_far_apart(dtype, spread):
    """Scores in the hundreds to thousands: differences far beyond exp's underflow (~ -87 in
    float32, ~ -745 in float64), probabilities that are 0 or denormal next to ones near 1.
    Results match within the softmax's conditioning (eps times the score magnitude)."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=10)
    x = (torch.randn(L, N, E, dtype=dtype) * spread).requires_grad_()
    s = _max_abs_score(mod, x)
    assert s > 20 * spread  # the premise
    (ro, rw), (mo, mw) = _both(ref, mod, x, average_attn_weights=False)
    _assert_close_conditioned(mo, ro, dtype, "out", "attn_output", s)
    _assert_close_conditioned(mw, rw, dtype, "out", "attn_weights", s)
    for name, a, e in zip(("input",) + PARAM_NAMES, _grads(mod, x, mo, mw), _grads(ref, x, ro, rw)):
        _assert_close_conditioned(a, e, dtype, "grad", f"grad of {name}", s)


@pytest.mark.parametrize("what", ["input", "mask", "weights"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_denormals(dtype, what):
    """Denormal inputs, mask values or parameters: finite, and the same as
    nn.MultiheadAttention (scores of ~0: near-uniform weights)."""
    ref, mod = make_pair(E, H, dtype=dtype, seed=11)
    tiny = torch.finfo(dtype).tiny
    x = torch.randn(L, N, E, dtype=dtype)
    kw = {}
    if what == "input":
        x = (torch.randn(L, N, E, dtype=torch.float64) * tiny / 8).to(dtype)
        assert (x != 0).any() and (x.abs() < tiny).all()
    elif what == "mask":
        kw["attn_mask"] = (torch.randn(L, L, dtype=torch.float64) * tiny / 4).to(dtype)
    else:
        with torch.no_grad():
            for m in (ref, mod):
                m.in_proj_weight.mul_(tiny / 2)
    x.requires_grad_()
    (ro, rw), (mo, mw) = _both(ref, mod, x, average_attn_weights=False, **kw)
    assert torch.isfinite(mo).all() and torch.isfinite(mw).all()
    assert_close(mo, ro, dtype, "out", "attn_output")
    assert_close(mw, rw, dtype, "out", "attn_weights")
    for name, a, e in zip(("input",) + PARAM_NAMES, _grads(mod, x, mo, mw), _grads(ref, x, ro, rw)):
        assert torch.isfinite(a).all()
        assert_close(a, e, dtype, "grad", f"grad of {name}")
