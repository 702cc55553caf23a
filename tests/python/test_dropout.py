"""Dropout on the attention weights: reproducible from torch.manual_seed, unbiased, consistent
between the returned weights, the output and the gradients.

mhsa draws its own dropout masks (a seed taken from torch's default CPU generator), so in
training with p > 0 it cannot match nn.MultiheadAttention bit for bit; these tests check the
properties instead, and eval mode against nn.MultiheadAttention.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import mhsa
from mhsa_testutils import (
    PARAM_NAMES,
    TOLERANCES,
    assert_close,
    make_attn_mask,
    make_input,
    make_kpm,
    make_pair,
)

DT = torch.float64


def _run(mod, x, seed, **kwargs):
    torch.manual_seed(seed)
    out, w = mod(x, **kwargs)
    loss = out.sum() + (w.square().sum() if w is not None else 0)
    grads = torch.autograd.grad(loss, [x] + list(mod.parameters()))
    return out.detach(), (w.detach() if w is not None else None), grads


@pytest.mark.parametrize("average", [True, False], ids=["avg", "heads"])
def test_same_seed_is_bitwise_reproducible(average, sample_inputs):
    _, mod, x = sample_inputs(L=70, N=2, E=16, H=4, dtype=torch.float32, dropout=0.3, seed=1)
    mod.train()
    am = make_attn_mask("bool2d", N=2, H=4, L=70, dtype=torch.float32, seed=3)
    a = _run(mod, x, 7, attn_mask=am, average_attn_weights=average)
    b = _run(mod, x, 7, attn_mask=am, average_attn_weights=average)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for ga, gb in zip(a[2], b[2]):
        assert torch.equal(ga, gb)


def test_different_seeds_differ(sample_inputs):
    _, mod, x = sample_inputs(L=9, N=2, E=16, H=4, dtype=DT, dropout=0.3, seed=1)
    a = _run(mod, x, 7, average_attn_weights=False)
    b = _run(mod, x, 8, average_attn_weights=False)
    assert not torch.equal(a[0], b[0])
    assert not torch.equal(a[1] == 0, b[1] == 0)  # different entries dropped
    assert not torch.equal(a[2][0], b[2][0])
    # consecutive calls without reseeding draw fresh masks too
    torch.manual_seed(0)
    w1 = mod(x, average_attn_weights=False)[1]
    w2 = mod(x, average_attn_weights=False)[1]
    assert not torch.equal(w1 == 0, w2 == 0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_eval_mode_matches_nn_multihead_attention(batch_first):
    ref, mod = make_pair(16, 4, dtype=DT, dropout=0.5, seed=4, batch_first=batch_first)
    ref.eval()
    mod.eval()
    x = make_input(12, 3, 16, batch_first=batch_first, dtype=DT, seed=5)
    am = make_attn_mask("float2d", N=3, H=4, L=12, dtype=DT, seed=6)
    kpm = make_kpm("float", N=3, L=12, dtype=DT, seed=7)
    for average in (True, False):
        results = []
        for module, args in ((ref, (x, x, x)), (mod, (x,))):
            out, w = module(*args, attn_mask=am, key_padding_mask=kpm, average_attn_weights=average)
            grads = torch.autograd.grad(
                (out * out).sum() + w.sum(),
                [x] + [dict(module.named_parameters())[n] for n in PARAM_NAMES],
            )
            results.append((out, w, grads))
        (eo, ew, eg), (ao, aw, ag) = results
        assert_close(ao, eo, DT, "out", "attn_output")
        assert_close(aw, ew, DT, "out", "attn_weights")
        for name, a, e in zip(("input",) + PARAM_NAMES, ag, eg):
            assert_close(a, e, DT, "grad", f"grad of {name}")
    # and eval mode is deterministic: no dropout at all
    torch.manual_seed(1)
    a = mod(x)[0]
    torch.manual_seed(2)
    assert torch.equal(a, mod(x)[0])


def test_training_false_means_no_dropout():
    _, mod = make_pair(8, 2, dtype=DT, seed=8)
    x = make_input(6, 2, 8, batch_first=False, dtype=DT, seed=9)
    args = (x, mod.in_proj_weight, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias, 2)
    expected = mhsa.functional.multi_head_self_attention(*args, dropout_p=0.0)
    actual = mhsa.functional.multi_head_self_attention(*args, dropout_p=0.9, training=False)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_weights_are_post_dropout(p):
    """Per-head weights with dropout are 0 or P / (1 - p), P being the eval weights; the head
    average of them is what average_attn_weights returns; the output is computed from exactly
    these weights; need_weights does not change the output."""
    L, N, E, H = 10, 2, 16, 4
    _, mod = make_pair(E, H, dtype=DT, dropout=p, seed=10)
    x = make_input(L, N, E, batch_first=False, dtype=DT, seed=11)
    am = make_attn_mask("bool2d", N=N, H=H, L=L, dtype=DT, seed=12)
    mod.eval()
    P = mod(x, attn_mask=am, average_attn_weights=False)[1].detach()
    mod.train()
    torch.manual_seed(3)
    out, w = mod(x, attn_mask=am, average_attn_weights=False)
    out, w = out.detach(), w.detach()
    kept = w != 0
    visible = P != 0
    assert not (kept & ~visible).any()
    assert_close(w[kept], P[kept] / (1 - p), DT, "reordered_weights", "kept weights")
    frac_dropped = 1 - kept[visible].double().mean().item()
    n = int(visible.sum())
    assert abs(frac_dropped - p) < 6 * math.sqrt(p * (1 - p) / n), frac_dropped

    # the same seed with average_attn_weights=True: the head average of the same weights
    torch.manual_seed(3)
    out_avg, w_avg = mod(x, attn_mask=am, average_attn_weights=True)
    assert_close(w_avg, w.mean(dim=1), DT, "reordered_weights", "averaged weights")
    assert_close(out_avg, out, DT, "reordered", "output with averaged weights")
    # and with need_weights=False
    torch.manual_seed(3)
    out_nw, w_nw = mod(x, attn_mask=am, need_weights=False)
    assert w_nw is None
    assert_close(out_nw, out, DT, "reordered", "output without weights")

    # the output from the returned (dropped) weights: out_proj(W_drop @ V)
    v = torch.nn.functional.linear(
        x.detach(), mod.in_proj_weight[2 * E :], mod.in_proj_bias[2 * E :]
    )
    v = v.reshape(L, N, H, E // H).permute(1, 2, 0, 3)  # (N, H, L, D)
    context = (w @ v).permute(2, 0, 1, 3).reshape(L, N, E)
    expected = torch.nn.functional.linear(context, mod.out_proj.weight, mod.out_proj.bias)
    assert_close(out, expected.detach(), DT, "from_weights", "output from the weights")


def test_dropout_is_unbiased():
    """The mean over many dropout samples approaches the eval value. Samples: R copies of the
    same sequences in one batch (each batch entry draws its own masks), over C calls. Per-head
    weights are P * B / (1 - p) with B ~ Bernoulli(1 - p): standard deviation
    P * sqrt(p / (1 - p)); the output is linear in them, its spread is estimated from the
    samples. Bound: 6 standard errors (CLT; with ~2000 compared entries a false failure has
    probability ~1e-6)."""
    L, N, E, H, p, R, C = 6, 2, 8, 2, 0.4, 100, 15
    K = R * C
    _, mod = make_pair(E, H, dtype=DT, dropout=p, seed=13)
    x = make_input(L, N, E, batch_first=True, dtype=DT, seed=14).detach()
    mod.batch_first = True
    kpm = make_kpm("bool", N=N, L=L, dtype=DT, seed=15)
    mod.eval()
    with torch.no_grad():
        out_eval, w_eval = mod(x, key_padding_mask=kpm, average_attn_weights=False)
        mod.train()
        torch.manual_seed(0)
        xr, kpmr = x.repeat(R, 1, 1), kpm.repeat(R, 1)
        runs = [mod(xr, key_padding_mask=kpmr, average_attn_weights=False) for _ in range(C)]
    outs = torch.cat([o.view(R, N, L, E) for o, _ in runs])  # (K, N, L, E)
    ws = torch.cat([w.view(R, N, H, L, L) for _, w in runs])  # (K, N, H, L, L)
    # copies of a sequence in one batch get different masks
    assert not torch.equal(ws[0] == 0, ws[1] == 0)
    se_w = w_eval * math.sqrt(p / (1 - p) / K)
    rounding = TOLERANCES[DT]["reordered"].atol  # where se_w is 0: the mean's float64 rounding
    assert ((ws.mean(0) - w_eval).abs() <= 6 * se_w + rounding).all()
    se_out = outs.std(0) / math.sqrt(K)
    assert (se_out > 0).all()
    assert ((outs.mean(0) - out_eval).abs() <= 6 * se_out).all()
    # the samples do vary wherever the eval weight is not zero
    assert (ws.std(0)[w_eval > 0] > 0).all()


@pytest.mark.parametrize("need_weights", [True, False], ids=["w", "nw"])
def test_gradcheck_with_dropout_at_a_fixed_seed(need_weights):
    """Every evaluation reseeds, so all of them see the same dropout mask."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_gradcheck.py
    try:
        E, H = 8, 2
        g = torch.Generator().manual_seed(16)
        x = torch.randn(5, 2, E, generator=g, dtype=DT, requires_grad=True)
        params = [
            torch.randn(s, generator=g, dtype=DT).mul(0.4).requires_grad_()
            for s in ((3 * E, E), (3 * E,), (E, E), (E,))
        ]
        kpm = make_kpm("bool", N=2, L=5, dtype=DT, seed=17)

        def fn(x, w, b, ow, ob):
            torch.manual_seed(123)
            out, weights = mhsa.functional.multi_head_self_attention(
                x,
                w,
                b,
                ow,
                ob,
                H,
                dropout_p=0.3,
                training=True,
                key_padding_mask=kpm,
                need_weights=need_weights,
                average_attn_weights=False,
            )
            return (out, weights) if need_weights else out

        assert gradcheck(fn, (x, *params))
    finally:
        torch.set_num_threads(threads)
