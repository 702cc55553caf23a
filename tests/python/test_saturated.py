"""Saturated softmax: logits in the hundreds or thousands, attention rows that are one-hot in
float32. The forward is easy; the backward is where a fused kernel can lose precision: it
recomputes the probabilities and uses Dsum = rowsum(dO * O) instead of sum(P * dP), so any
difference between the scores or dot products of forward and backward turns into a softmax
gradient that should be zero and is not, and the large queries and keys of such rows amplify it
(see dot_tile in csrc/engine/dot_tile.h and DropoutParams in csrc/engine/attention_geometry.h).

The bar (issue #9): mhsa's float32 gradients are within 4x of nn.MultiheadAttention's own
float32 error, both measured against a float64 reference, norm-wise. With dropout, nn cannot be
given mhsa's dropout mask, so the reference and the float32 baseline are the suite's formula
(mhsa_testutils.reference_attention with mhsa's keep mask: nn's math path written out, linear,
scaled QK^T, masks, softmax, dropout, PV, linear), in float64 and in float32; without dropout that
baseline is checked against nn itself. The bounds are the table's "saturated" entries.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import mhsa
from mhsa_testutils import (
    as_exact_as_baseline,
    assert_close,
    reference_attention,
    run_pytest_in_subprocess,
    run_python_in_subprocess,
)


def cosine_module(E: int, H: int, dtype: torch.dtype) -> nn.MultiheadAttention:
    """The issue's model: every parameter is cos(arange(numel))."""
    module = nn.MultiheadAttention(E, H, batch_first=True).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.cos(torch.arange(p.numel(), dtype=torch.float64)).reshape(p.shape))
    return module


def saturating_module(
    E: int, H: int, dtype: torch.dtype, seed: int, gain: float
) -> nn.MultiheadAttention:
    """Random weights whose queries and keys are large: logits of order `gain`."""
    g = torch.Generator().manual_seed(seed)
    module = nn.MultiheadAttention(E, H, batch_first=True).to(dtype)
    with torch.no_grad():
        w = torch.randn(3 * E, E, generator=g, dtype=torch.float64) / math.sqrt(E)
        w[: 2 * E] *= math.sqrt(gain)  # q and k grow with sqrt(gain): logits with gain
        module.in_proj_weight.copy_(w)
        module.in_proj_bias.copy_(torch.randn(3 * E, generator=g, dtype=torch.float64) * 0.1)
        module.out_proj.weight.copy_(
            torch.randn(E, E, generator=g, dtype=torch.float64) / math.sqrt(E)
        )
        module.out_proj.bias.copy_(torch.randn(E, generator=g, dtype=torch.float64) * 0.1)
    return module


def gradients(module: nn.Module, x: Tensor, r: Tensor, forward) -> List[Tensor]:
    """Output, then the gradients of x and of the four parameters, of (forward(x) * r).sum()."""
    x = x.clone().requires_grad_(True)
    out = forward(module, x)
    (out * r).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in module.parameters()]


def nn_forward(kwargs):
    return lambda m, x: m(x, x, x, need_weights=False, **kwargs)[0]


def mhsa_forward(kwargs):
    return lambda m, x: m(x, need_weights=False, **kwargs)[0]


NAMES = [
    "output",
    "grad x",
    "grad in_proj_weight",
    "grad in_proj_bias",
    "grad out_proj.weight",
    "grad out_proj.bias",
]


def compare(
    reference: List[Tensor],
    baseline: List[Tensor],
    actual: List[Tensor],
    what: str,
    dtype: torch.dtype = torch.float32,
) -> Dict[str, Tuple[float, float]]:
    """mhsa's norm-wise error within the table's "saturated" factor of the baseline's."""
    errors = {}
    failures = []
    for name, ref, base, act in zip(NAMES, reference, baseline, actual):
        ok, a, b = as_exact_as_baseline(act, base, ref, dtype, "saturated")
        errors[name] = (b, a)
        if not ok:
            failures.append(f"{name}: mhsa {a:.2e} vs nn {b:.2e}")
    assert not failures, f"{what}: {dtype} error above the bound: " + "; ".join(failures)
    return errors


def masks_for(kind: Optional[str], N: int, L: int, seed: int) -> Dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return {}
    kpm = torch.rand(N, L, generator=g) < 0.3
    kpm[:, 0] = False  # no fully masked rows here (those are tested elsewhere)
    if kind == "bool":
        return {"key_padding_mask": kpm}
    attn = torch.randn(L, L, generator=g, dtype=torch.float64) * 30.0  # additive, large too
    return {"key_padding_mask": kpm, "attn_mask": attn}


def test_issue_example_matches_nn_precision():
    """The issue's example (nn 2.0e-7, mhsa 6.4e-5 on an AMX machine before the fix)."""
    x = torch.arange(16.0, dtype=torch.float64).reshape(2, 2, 4)
    r = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = gradients(cosine_module(4, 2, torch.float64), x, r, nn_forward({}))
    nn32 = gradients(cosine_module(4, 2, torch.float32), x.float(), r.float(), nn_forward({}))
    ours = gradients(
        mhsa.MultiheadSelfAttention.from_torch(cosine_module(4, 2, torch.float32)),
        x.float(),
        r.float(),
        mhsa_forward({}),
    )
    compare(reference, nn32, ours, "issue example")


@pytest.mark.parametrize("L", [2, 17, 130, 1000])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("masks", [None, "bool", "float"])
def test_saturated_gradients_match_nn_precision(L, is_causal, masks):
    N, E, H = (2, 32, 2) if L < 1000 else (1, 32, 2)
    seed = 7 * L + (3 if is_causal else 0) + (0 if masks is None else len(masks))
    gain = 400.0
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    r = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    kw = masks_for(masks, N, L, seed)
    if is_causal:
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
        nn_kw = dict(
            kw,
            attn_mask=causal
            if "attn_mask" not in kw
            else kw["attn_mask"].masked_fill(causal, -math.inf),
            is_causal=True,
        )
    else:
        nn_kw = kw
    reference = gradients(
        saturating_module(E, H, torch.float64, seed, gain), x, r, nn_forward(nn_kw)
    )
    nn32_kw = {
        k: (v.float() if v.is_floating_point() else v) if isinstance(v, Tensor) else v
        for k, v in nn_kw.items()
    }
    nn32 = gradients(
        saturating_module(E, H, torch.float32, seed, gain),
        x.float(),
        r.float(),
        nn_forward(nn32_kw),
    )
    ours_kw = {k: (v.float() if v.is_floating_point() else v) for k, v in kw.items()}
    ours_kw["is_causal"] = is_causal
    module = mhsa.MultiheadSelfAttention.from_torch(
        saturating_module(E, H, torch.float32, seed, gain)
    )
    ours = gradients(module, x.float(), r.float(), mhsa_forward(ours_kw))
    compare(reference, nn32, ours, f"L={L} causal={is_causal} masks={masks}")


# ---------------------------------------------------------------------------------------------
# Dropout: the suite's formula (nn's math path written out), with mhsa's keep mask.


def keep_mask(E: int, H: int, N: int, L: int, p: float, seed: int) -> Tensor:
    """mhsa's dropout keep mask for torch.manual_seed(seed): a pure function of the seed and the
    positions (counter-based generator), read off the per-head weights of a uniform-attention
    call (zero weights: every probability is 1/L, so a weight is 0 exactly where dropped)."""
    module = mhsa.MultiheadSelfAttention(E, H, dropout=p, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for q in module.parameters():
            q.zero_()
    torch.manual_seed(seed)
    _, w = module(
        torch.zeros(N, L, E, dtype=torch.float64), need_weights=True, average_attn_weights=False
    )
    return (w != 0).detach()


def math_path(
    module: nn.MultiheadAttention, x: Tensor, keep: Tensor, p: float, is_causal: bool
) -> Tensor:
    """nn.MultiheadAttention's math path (F.multi_head_attention_forward without fast paths,
    q scaled before QK^T) with the dropout mask given: the suite's reference_attention, in x's
    dtype."""
    return reference_attention(
        x,
        module.in_proj_weight,
        module.in_proj_bias,
        module.out_proj.weight,
        module.out_proj.bias,
        module.num_heads,
        batch_first=True,
        is_causal=is_causal,
        dropout_keep=keep,
        dropout_p=p,
        average_attn_weights=False,
        scale_query_first=True,
    )[0]


@pytest.mark.parametrize("L,is_causal", [(2, False), (40, True), (300, False)])
def test_saturated_gradients_with_dropout(L, is_causal):
    N, E, H, p = 2, 32, 2, 0.3
    seed = 11 + L
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    r = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    keep = keep_mask(E, H, N, L, p, seed)
    assert 0 < keep.double().mean().item() < 1
    reference = gradients(
        saturating_module(E, H, torch.float64, seed, 400.0),
        x,
        r,
        lambda m, x: math_path(m, x, keep, p, is_causal),
    )
    baseline = gradients(
        saturating_module(E, H, torch.float32, seed, 400.0),
        x.float(),
        r.float(),
        lambda m, x: math_path(m, x, keep, p, is_causal),
    )
    module = mhsa.MultiheadSelfAttention.from_torch(
        saturating_module(E, H, torch.float32, seed, 400.0)
    )
    module.dropout = p
    module.train()

    def ours_forward(m, x):
        torch.manual_seed(seed)  # the same keep mask as keep_mask()
        return m(x, need_weights=False, is_causal=is_causal)[0]

    ours = gradients(module, x.float(), r.float(), ours_forward)
    compare(reference, baseline, ours, f"dropout L={L} causal={is_causal}")


def test_math_path_baseline_is_nn():
    """The written-out math path is nn.MultiheadAttention's own float32 arithmetic (so the
    dropout test's baseline is nn's error): without dropout they agree to a few ulps."""
    N, L, E, H = 2, 40, 32, 2
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, L, E, generator=g)
    module = saturating_module(E, H, torch.float32, 5, 400.0)
    keep = torch.ones(N, H, L, L, dtype=torch.bool)
    ours = math_path(module, x, keep, 0.0, True)
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    theirs = module(x, x, x, attn_mask=causal, need_weights=False)[0]
    assert_close(ours, theirs, torch.float32, "norm", "the formula against nn")


@pytest.mark.parametrize("L", [2, 64])
def test_saturated_bfloat16_within_nn_precision(L):
    """bfloat16: the same consistency (the log-sum-exp comes from the very scores backward
    recomputes), so gradients are within 4x of nn's own bfloat16 error."""
    N, E, H = 2, 32, 2
    seed = 3 + L
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    r = torch.randn(N, L, E, generator=g, dtype=torch.float64)
    reference = gradients(saturating_module(E, H, torch.float64, seed, 400.0), x, r, nn_forward({}))
    nn16 = gradients(
        saturating_module(E, H, torch.bfloat16, seed, 400.0),
        x.bfloat16(),
        r.bfloat16(),
        nn_forward({}),
    )
    module = mhsa.MultiheadSelfAttention.from_torch(
        saturating_module(E, H, torch.bfloat16, seed, 400.0)
    )
    ours = gradients(module, x.bfloat16(), r.bfloat16(), mhsa_forward({}))
    compare(reference, nn16, ours, f"bfloat16 L={L}", torch.bfloat16)


@pytest.mark.parametrize("mode", ["native", "fp32"])
def test_saturated_bfloat16_in_both_compute_modes(mode):
    """The same check in each bfloat16 compute mode (read once per process, hence a
    subprocess): bf16 GEMMs, or fp32 compute from the bf16 values, where the stored (rounded)
    qkv must be what the forward's log-sum-exp came from."""
    result = run_pytest_in_subprocess(
        [f"{__file__}::test_saturated_bfloat16_within_nn_precision"],
        {"MHSA_BF16_COMPUTE": mode},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout


def test_saturated_on_the_portable_loop_gemms():
    """The float32 saturated checks on the portable loop GEMMs (aarch64 builds, CPUs without
    AVX2, torch.backends.mkldnn disabled; MHSA_PORTABLE_GEMM=1 is read once per process, hence
    a subprocess). The loops sum each K chunk from zero with fused multiply-adds, as the
    micro-kernels do; with a running sum from C and separate roundings, dQ of a nearly saturated
    row came out 40x less accurate ([None-True-17] failed here)."""
    result = run_pytest_in_subprocess(
        [f"{__file__}::test_saturated_gradients_match_nn_precision"],
        {"MHSA_PORTABLE_GEMM": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "24 passed" in result.stdout, result.stdout[-2000:]
    engine = run_python_in_subprocess(
        "import mhsa, torch; print(torch.ops.mhsa._backend_info())",
        [],
        dict(os.environ, MHSA_PORTABLE_GEMM="1"),
        timeout=120,
    )
    assert "gemm=portable-loops" in engine.stdout, engine.stdout + engine.stderr[-2000:]


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_saturated_on_each_kernel_copy(isa):
    """The float32 saturated checks on the lower kernel copies (MHSA_CPU_CAPABILITY is read once
    per process, hence a subprocess): the baseline x86-64 copy has no fused multiply-add, and its
    score and dP chains take each step in double instead (the exact product, one add); with a
    float multiply then a float add, [None-True-17] was 10x less accurate than nn."""
    probe = run_python_in_subprocess(
        "import mhsa, torch; print(torch.ops.mhsa._cpu_capability())",
        [],
        dict(os.environ, MHSA_CPU_CAPABILITY=isa),
        timeout=120,
    )
    chosen = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else probe.stderr
    if chosen != isa:
        pytest.skip(f"the {isa} kernel copy cannot run on this CPU (got {chosen})")
    result = run_pytest_in_subprocess(
        [f"{__file__}::test_saturated_gradients_match_nn_precision"],
        {"MHSA_CPU_CAPABILITY": isa},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "24 passed" in result.stdout, result.stdout[-2000:]
