"""Shared helpers of the mhsa pytest suite (imported by conftest.py and the test files).

Everything here builds inputs and runs the references side by side with mhsa; the assertions
live in the test files. There are two references, one idea each:

- torch.nn.MultiheadAttention (`make_pair`, `run_case`): the definition of correct wherever it
  can express the case;
- `reference_attention`: mhsa's documented semantics as an explicit formula in plain autograd
  ops, for what nn.MultiheadAttention cannot express (a query that sees no key gets zero
  weights and a zero attention output instead of NaN, sliding windows, a subset of query rows of
  a sequence too long for an L x L matrix, dropout with a given keep mask). Run it in float64.
  Its attention step, `attention_core`, is the formula on heads (grouped-query, masks, dropout)
  for the tests that start from q, k and v; no test writes a softmax of its own.
  tests/cpp/reference.h is the same formula for the C++ suite.

Every tolerance of the suite comes from one table, TOLERANCES (per dtype and kind, with the
reason for each entry).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import subprocess
import sys
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mhsa

PARAM_NAMES = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")

# The tolerance table: TOLERANCES[dtype][kind] is the one place a test of this suite takes a
# tolerance from (assert_close, assert_as_exact_as_nn and the helpers below read it;
# tests/cpp/reference.h holds the C++ suite's table, same kind names). Each kind says what is
# compared; each entry says why its numbers are enough. An entry is a Tol(rtol, atol, per):
# "abs": |actual - expected| <= atol + rtol |expected|, elementwise (torch.testing.assert_close);
# "magnitude": the same with atol x max(1, max |expected|) (for sums whose rounding grows with
# their terms); "largest": atol x max |expected|; "norm": ||actual - expected|| < rtol
# ||expected||; "baseline", "baseline_norm", "baseline_largest": as exact as a baseline
# (assert_as_exact_as_nn, as_exact_as_baseline, test_transformers_integration).
#
# Kinds:
# - out, grad: mhsa against an independent reference (nn.MultiheadAttention, torch's SDPA,
#   reference_attention, Hugging Face's eager attention) computed in the same dtype: outputs and
#   weights ("out"), gradients ("grad");
# - scaled: the same where the atol follows the tensor's magnitude (parameter gradients that sum
#   every row of a long sequence, 16-bit against float32);
# - reordered, reordered_grad, reordered_weights: mhsa against mhsa on another route to the same
#   values (decode against the causal forward, packed against each sequence alone, small tiles
#   against the default ones, a window against the dense band mask, scripted, compiled or
#   exported against eager), or against nn on shapes so small that only a few roundings differ;
# - from_weights: the output recomputed from mhsa's own returned (dropped-out) weights;
# - bitwise: the very same bits (the same kernels on the same values);
# - rounding: a value rounded once to the dtype against the float64 value (the KV cache);
# - largest: 16-bit mhsa against a float32 or float64 reference on the same rounded values,
#   bounded by the largest entry;
# - abs, abs_long: absolute bounds for values of magnitude ~1 (abs_long: sums over 10^4 keys, or
#   a loss through a few optimizer steps);
# - norm: norm-wise relative error of a whole tensor;
# - conditioned: how much huge scores widen "out" and "grad" (test_hostile);
# - as_exact_as_nn, saturated, as_exact_as_nn_norm, as_exact_as_eager: mhsa's error against
#   float64 within a factor (atol) of a baseline's own error in mhsa's dtype, rtol being the
#   bound for entries the baseline gets exactly ("baseline"), the floor of the baseline's error
#   ("baseline_norm") or the share of the largest entry allowed on top ("baseline_largest").


class Tol(NamedTuple):
    rtol: float
    atol: float
    per: str = "abs"


# One unit roundoff of each dtype: rounding the exact result to it alone costs that much
# (bfloat16 keeps 8 significant bits, float16 11, float32 24).
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}

# The factor of the as-exact-as-nn rule (the rule of PyTorch's own attention tests, which derive
# atol from the low-precision reference's deviation): mhsa's largest error against float64 may be
# at most NN_ERROR_FACTOR times the baseline's own largest error in mhsa's dtype. Measured over
# the parity grid on AMD Zen 4 (2026-12): worst ratio 4.2, for the out_proj.bias gradient (mhsa
# sums the N*L rows in a fixed blocked order so that the bits do not depend on the thread count;
# nn's at::sum adds pairwise); 1.9-3.5 for the rest. 8 leaves room for another CPU's BLAS.
NN_ERROR_FACTOR = 8.0

TOLERANCES: Dict[torch.dtype, Dict[str, Tol]] = {
    torch.float64: {
        # Both sides round at 1e-16; the gradients of the shared weights sum N*L rows of
        # products, so a few hundred rows of entries up to ~50 stay below 1e-12 absolute. These
        # leave two orders of margin and still catch any float32 rounding inside the kernels.
        "out": Tol(1e-7, 1e-10),
        "grad": Tol(1e-7, 1e-10),
        # test_window's parameter gradients over L = 700: "grad" with the atol of the largest
        # entry, since each entry sums every row.
        "scaled": Tol(1e-7, 1e-10, "magnitude"),
        # Sums of O(1) terms compared absolutely: the in_proj_bias gradient (block sums of dQ,
        # dK, dV against nn's sum of grad_qkv, test_bias_grad) and Hugging Face logits (up to
        # ~10) and gradients against the exact eager attention: measured ~1e-14 (float64 rounding
        # of sums over at most a few hundred terms); one float32 rounding anywhere would leave
        # ~1e-7, so 1e-10 has four orders of margin and still catches that.
        "abs": Tol(0.0, 1e-10),
        # Another route to the same values (or nn on a 2 x 5 x 8 input): only the order of float64
        # roundings differs, a few ulps of O(1) values; outputs are not sums over rows, hence the
        # smaller atol.
        "reordered": Tol(1e-12, 1e-14),
        # Gradients on another route: each sums the rows in another order (~1e-14 absolute).
        "reordered_grad": Tol(1e-12, 1e-12),
        # Weights on another route: positive numbers, each rounded relatively, so no atol.
        "reordered_weights": Tol(1e-12, 0.0),
        # The same short expression (1 / S / (1 - p), a kept uniform weight) evaluated in another
        # order: a few ulps (2.2e-16 each) relative.
        "ulps": Tol(1e-15, 0.0),
        # The output recomputed from the returned weights (W V, then out_proj): two more GEMMs in
        # float64, a few hundred ulps of the largest terms.
        "from_weights": Tol(1e-10, 1e-12),
        "bitwise": Tol(0.0, 0.0),
        # The KV cache against the float64 projection: no narrower rounding, only another order.
        "rounding": Tol(1e-12, 1e-12),
        # Scores of magnitude s are only known to s * eps, which moves their probabilities by
        # that much relative: test_hostile widens "out" and "grad" to rtol x s (8 eps: a few
        # roundings on the way to the score).
        "conditioned": Tol(8 * 2.0**-52, 0.0, "conditioned"),
    },
    torch.float32: {
        # An output entry of magnitude ~1 carries ~1e-6 of rounding from the projections (sums
        # over E) and the softmax (sums over L); gradients another order (sums over N*L rows in
        # the weight gradients). These fit small shapes (test_convert holds its gradients to
        # "out" too); for larger shapes, where the weight gradients' cancellation exceeds a fixed
        # atol, compare against float64 with assert_as_exact_as_nn instead.
        "out": Tol(1e-5, 1e-5),
        "grad": Tol(1e-4, 2e-5),
        # test_window's float32 parameter gradients: "grad" with the atol of the largest entry.
        "scaled": Tol(1e-4, 2e-5, "magnitude"),
        # Another route (decode, packed, compile, AOTInductor): float32 roundings in another
        # order, a few ulps relative; the atol covers entries near zero, larger for gradients,
        # whose entries sum many rows with cancellation.
        "reordered": Tol(1e-5, 1e-6),
        "reordered_grad": Tol(1e-5, 1e-5),
        "bitwise": Tol(0.0, 0.0),
        # The KV cache: one float32 rounding (6e-8) of projections of magnitude ~1, and the
        # projection's own sums over E.
        "rounding": Tol(1e-5, 1e-5),
        # Absolute bounds: weights (at most 1) and row sums of 12000-key rows against float64
        # (test_scale), logits of a scripted model against eager (test_demo).
        "abs": Tol(0.0, 1e-5),
        # Outputs over 12000-16384 keys against float64 (test_scale), a loss through a few
        # optimizer steps against nn (test_demo): float32 rounding grows with the sums.
        "abs_long": Tol(0.0, 1e-4),
        # The demo's report (test_demo): weights as the HTML page shows them (rounded to a few
        # decimals), a row of the stored rounded weights summing to 1, and the held-out accuracy
        # of the mhsa and torch models trained alike (a prediction or so may flip).
        "report": Tol(0.0, 1e-4),
        "report_sum": Tol(0.0, 2e-3),
        "accuracy": Tol(0.0, 1e-2),
        # nn's math path written out (test_saturated.math_path) against nn itself: the same float32
        # arithmetic up to the order of a few sums.
        "norm": Tol(1e-5, 0.0, "norm"),
        # As exact as nn: entries nn gets more exactly than NN_ERROR_FACTOR x its own largest
        # error must still be within 1e-5 of the float64 value.
        "as_exact_as_nn": Tol(1e-5, NN_ERROR_FACTOR, "baseline"),
        # Saturated softmax (issue #9): norm-wise within 4x nn's own float32 error; one float32
        # unit roundoff is the floor of nn's error when nn happens to be exact.
        "saturated": Tol(UNIT_ROUNDOFF[torch.float32], 4.0, "baseline_norm"),
        # As float64's: 8 float32 eps per unit of the largest score (test_hostile).
        "conditioned": Tol(8 * 2.0**-23, 0.0, "conditioned"),
    },
    torch.bfloat16: {
        # bfloat16 keeps 8 significant bits (2^-8 = 0.4% relative per rounding); the errors of
        # the three GEMMs and the softmax add up to a few of those against a reference in
        # bfloat16 or in float32 on the same bfloat16 values.
        "out": Tol(3e-2, 3e-2),
        # The same with the atol of the tensor's magnitude (autocast against float32, gradients).
        "scaled": Tol(3e-2, 3e-2, "magnitude"),
        # Decode against the causal forward: both round the projected keys, values and contexts
        # to bfloat16, in different orders: a few bfloat16 ulps.
        "reordered": Tol(3e-2, 3e-2),
        "bitwise": Tol(0.0, 0.0),
        # The KV cache: one bfloat16 rounding (2^-8) of the float64 projection.
        "rounding": Tol(1e-2, 1e-2),
        # Against float32/float64 on the same rounded values, relative to the largest entry: a few
        # roundings of 2^-8 deep.
        "largest": Tol(0.0, 3e-2, "largest"),
        # Norm-wise against float32 nn: the bfloat16 storage of every step, a few 2^-8.
        "norm": Tol(2e-2, 0.0, "norm"),
        # As exact as torch (test_sdpa): entries torch gets more exactly than NN_ERROR_FACTOR x
        # its own error must be within one bfloat16 unit roundoff, what rounding alone costs.
        "as_exact_as_nn": Tol(UNIT_ROUNDOFF[torch.bfloat16], NN_ERROR_FACTOR, "baseline"),
        "saturated": Tol(UNIT_ROUNDOFF[torch.bfloat16], 4.0, "baseline_norm"),
        # Hugging Face models (test_transformers_integration): mhsa's largest error against the
        # float64 reference at most atol x eager's own bfloat16 error plus rtol x the largest
        # entry (one bfloat16 rounding, so that a quantity eager gets almost exact, e.g. the
        # scalar loss, does not demand more than bfloat16 holds). Both round the same bfloat16
        # projections; the attention rounds differently (eager: bfloat16 scores and weights, a
        # float32 softmax), so neither is systematically closer; a factor of 2 leaves room for
        # that without letting a wrong mask through (errors of order 1).
        "as_exact_as_eager": Tol(UNIT_ROUNDOFF[torch.bfloat16], 2.0, "baseline_largest"),
    },
    torch.float16: {
        # Decode against the causal forward: a few float16 ulps (2^-11 relative).
        "reordered": Tol(4e-3, 4e-3),
        "bitwise": Tol(0.0, 0.0),
        # The KV cache: one float16 rounding (2^-11) of the float64 projection.
        "rounding": Tol(1e-3, 1e-3),
        # Against float32/float64 on the same rounded values, relative to the largest entry.
        "largest": Tol(0.0, 4e-3, "largest"),
        # Norm-wise, float16 autocast against float32: float16 storage of every step.
        "norm": Tol(5e-3, 0.0, "norm"),
        "as_exact_as_nn": Tol(UNIT_ROUNDOFF[torch.float16], NN_ERROR_FACTOR, "baseline"),
        # nn runs its float16 CPU kernels; mhsa's error must be within 2x of theirs (4x on
        # saturated rows), one float16 unit roundoff being the floor.
        "as_exact_as_nn_norm": Tol(UNIT_ROUNDOFF[torch.float16], 2.0, "baseline_norm"),
        "saturated": Tol(UNIT_ROUNDOFF[torch.float16], 4.0, "baseline_norm"),
    },
}


def run_pytest_in_subprocess(
    args: List[str], env_updates: Dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess:
    """pytest on args (files, file::test ids, -k ...) in a fresh interpreter whose environment
    adds env_updates: for settings that mhsa reads once per process (MHSA_BF16_COMPUTE,
    MHSA_HALF_COMPUTE, ...). Returns the finished process, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        env=dict(os.environ, **env_updates),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python_in_subprocess(
    code: str, args: List[str], env: Dict[str, str], timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -c code *args` in a fresh interpreter with exactly the environment `env` (for
    settings read once per process or when the libraries load). Output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tolerance(dtype: torch.dtype, kind: str, expected: Optional[Tensor] = None) -> Dict[str, float]:
    """rtol and atol of TOLERANCES[dtype][kind] for torch.testing.assert_close; "magnitude" and
    "largest" entries scale the atol by `expected`."""
    tol = TOLERANCES[dtype][kind]
    if tol.per == "abs":
        scale = 1.0
    elif tol.per in ("magnitude", "largest"):
        e = expected.detach()
        scale = e.abs().max().item() if e.numel() else 0.0
        if tol.per == "magnitude":
            scale = max(1.0, scale)
    else:
        raise ValueError(f"{dtype} {kind} is a '{tol.per}' tolerance, not an elementwise one")
    return {"rtol": tol.rtol, "atol": tol.atol * scale}


def relative_error(actual: Tensor, reference: Tensor) -> float:
    """||actual - reference|| / ||reference||, norm-wise, in float64."""
    reference = reference.detach().double()
    error = (actual.detach().double() - reference).norm()
    return (error / reference.norm().clamp_min(1e-300)).item()


def assert_close(
    actual: Tensor, expected: Tensor, dtype: torch.dtype, kind: str, what: str = ""
) -> None:
    """actual against expected with the table's TOLERANCES[dtype][kind] (dtype: the tested one;
    tensors of different dtypes are compared in float64)."""
    tol = TOLERANCES[dtype][kind]
    if tol.per == "norm":
        error = relative_error(actual, expected)
        assert error < tol.rtol, (
            f"{what}: norm-wise relative error {error:.3e}, bound {tol.rtol:.1e} ({dtype} {kind})"
        )
        return
    if actual.dtype != expected.dtype:
        actual, expected = actual.detach().double(), expected.detach().double()
    torch.testing.assert_close(
        actual, expected, **tolerance(dtype, kind, expected), msg=lambda m: f"{what}: {m}"
    )


def assert_below(error: float, dtype: torch.dtype, kind: str, what: str = "") -> None:
    """A largest absolute error measured elsewhere (a subprocess, a summary) below the atol of
    an absolute entry of the table."""
    tol = TOLERANCES[dtype][kind]
    assert tol.per == "abs" and tol.rtol == 0.0, (dtype, kind, tol)
    assert error < tol.atol, f"{what}: largest error {error:.3e}, bound {tol.atol:.1e}"


def as_exact_as_baseline(
    actual: Tensor, baseline: Tensor, reference: Tensor, dtype: torch.dtype, kind: str
) -> Tuple[bool, float, float]:
    """For a "baseline_norm" entry: whether mhsa's norm-wise error against the float64 reference
    is at most atol x the baseline's own (rtol its floor); returns (ok, mhsa's, baseline's)."""
    tol = TOLERANCES[dtype][kind]
    assert tol.per == "baseline_norm", (dtype, kind, tol)
    ours, theirs = relative_error(actual, reference), relative_error(baseline, reference)
    return ours <= tol.atol * max(theirs, tol.rtol), ours, theirs


def assert_as_exact_as_nn(
    actual: Tensor,
    nn_same_dtype: Tensor,
    nn_float64: Tensor,
    what: str,
    *,
    baseline: str = "nn.MultiheadAttention",
) -> None:
    """mhsa (float32, or a 16-bit dtype) against the reference in float64 with the table's
    "as_exact_as_nn" entry of that dtype: within NN_ERROR_FACTOR x the baseline's own largest
    error in mhsa's dtype (nn.MultiheadAttention's; for scaled_dot_product_attention, torch's
    SDPA's), and within the entry's rtol for the entries the baseline gets more exactly."""
    dtype = nn_same_dtype.dtype
    tol = TOLERANCES[dtype]["as_exact_as_nn"]
    reference = nn_float64.detach().double()
    nn_error = (nn_same_dtype.detach().double() - reference).abs().max().item()
    torch.testing.assert_close(
        actual.detach().double(),
        reference,
        rtol=tol.rtol,
        atol=tol.atol * nn_error,
        msg=lambda m: f"{what}: {m} ({baseline}'s own {dtype} error: {nn_error:.2e})",
    )


def randomize_(module: nn.Module, seed: int) -> None:
    """Gives every parameter random values (biases too, so their gradients matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.dim() == 2 else 4
            p.copy_(
                torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) / fan_in**0.5
            )


def make_pair(
    E: int,
    H: int,
    *,
    bias: bool = True,
    batch_first: bool = False,
    dtype: torch.dtype = torch.float64,
    dropout: float = 0.0,
    seed: int = 0,
) -> Tuple[nn.MultiheadAttention, mhsa.MultiheadSelfAttention]:
    """An nn.MultiheadAttention with random weights and the mhsa module built from it."""
    ref = nn.MultiheadAttention(
        E, H, dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype
    )
    randomize_(ref, seed)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    return ref, mod


def make_input(
    L: int, N: Optional[int], E: int, *, batch_first: bool, dtype: torch.dtype, seed: int
) -> Tensor:
    """(L, N, E), (N, L, E) with batch_first, or (L, E) when N is None (unbatched)."""
    g = torch.Generator().manual_seed(seed)
    if N is None:
        shape = (L, E)
    else:
        shape = (N, L, E) if batch_first else (L, N, E)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()


def _never_empty(masked: Tensor) -> Tensor:
    """Unmasks key 0 and the diagonal, so that no query row is fully masked (even with a
    causal mask on top: key 0 is always visible)."""
    masked = masked.clone()
    masked[..., 0] = False
    if masked.dim() >= 2 and masked.shape[-1] == masked.shape[-2]:
        masked.diagonal(dim1=-2, dim2=-1).fill_(False)
    return masked


def random_bool_mask(shape, *, seed: int, p: float = 0.35, never_empty: bool = True) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand(shape, generator=g) < p
    return _never_empty(masked) if never_empty else masked


def bool_to_float(mask: Tensor, dtype: torch.dtype, *, seed: int) -> Tensor:
    """A float mask: -inf where `mask` is True, random finite values elsewhere."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(mask.shape, generator=g, dtype=torch.float64).to(dtype)
    return values.masked_fill(mask, float("-inf"))


def make_attn_mask(
    kind: Optional[str], *, N: Optional[int], H: int, L: int, dtype: torch.dtype, seed: int
):
    """kind: None, bool2d, float2d, bool3d, float3d. 3-D masks are (N*H, L, L), or (H, L, L)
    unbatched (N is None)."""
    if kind is None:
        return None
    shape = (L, L) if kind.endswith("2d") else ((N if N is not None else 1) * H, L, L)
    m = random_bool_mask(shape, seed=seed)
    return m if kind.startswith("bool") else bool_to_float(m, dtype, seed=seed + 1)


def make_kpm(kind: Optional[str], *, N: Optional[int], L: int, dtype: torch.dtype, seed: int):
    """kind: None, bool, float. (N, L), or (L) unbatched."""
    if kind is None:
        return None
    m = random_bool_mask((L,) if N is None else (N, L), seed=seed, p=0.3)
    return m if kind == "bool" else bool_to_float(m, dtype, seed=seed + 1)


def causal_bool(L: int) -> Tensor:
    return torch.ones(L, L, dtype=torch.bool).triu(1)


def with_causal(attn_mask: Optional[Tensor], L: int, dtype: torch.dtype) -> Tensor:
    """attn_mask combined with the causal mask, in the same representation as attn_mask."""
    causal = causal_bool(L)
    if attn_mask is None:
        return causal
    if attn_mask.dtype == torch.bool:
        return attn_mask | causal
    return attn_mask.masked_fill(causal, float("-inf"))


@dataclasses.dataclass
class Case:
    L: int
    N: Optional[int]  # None: unbatched
    E: int
    H: int
    batch_first: bool = False
    bias: bool = True
    attn_mask: Optional[str] = None
    kpm: Optional[str] = None
    is_causal: bool = False
    need_weights: bool = True
    average: bool = True
    seed: int = 0

    def id(self) -> str:
        parts = [
            f"L{self.L}",
            "unbatched" if self.N is None else f"N{self.N}",
            f"E{self.E}",
            f"H{self.H}",
        ]
        parts.append("bf" if self.batch_first else "sf")
        if not self.bias:
            parts.append("nobias")
        if self.attn_mask:
            parts.append(f"am-{self.attn_mask}")
        if self.kpm:
            parts.append(f"kpm-{self.kpm}")
        if self.is_causal:
            parts.append("causal")
        parts.append("w" + ("avg" if self.average else "heads") if self.need_weights else "nw")
        return "-".join(parts)


@dataclasses.dataclass
class Run:
    output: Tensor
    weights: Optional[Tensor]
    grads: Dict[str, Tensor]  # "input" and the four parameter names
    # For a float32 run of nn.MultiheadAttention: the same run in float64 (run_case).
    float64: Optional["Run"] = None


def _loss_and_grads(
    module: nn.Module,
    x: Tensor,
    output: Tensor,
    weights: Optional[Tensor],
    r1: Tensor,
    r2: Optional[Tensor],
) -> Dict[str, Tensor]:
    loss = (output * r1).sum()
    if weights is not None and r2 is not None:
        loss = loss + (weights * r2).sum()
    params = dict(module.named_parameters())
    names = ["input"] + [n for n in PARAM_NAMES if n in params]
    tensors = [x] + [params[n] for n in names[1:]]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return {
        n: (g if g is not None else torch.zeros_like(t)) for n, t, g in zip(names, tensors, grads)
    }


def run_reference(
    ref: nn.MultiheadAttention,
    x: Tensor,
    case: Case,
    dtype: torch.dtype,
    r1: Tensor,
    r2: Optional[Tensor],
    *,
    masks,
) -> Run:
    """nn.MultiheadAttention on the case. For is_causal it gets an explicit causal attn_mask
    (with is_causal=True when that mask is purely causal, as MHA requires; when another
    attn_mask is combined with the causal one, is_causal=False, since MHA would treat the hint
    as permission to ignore the mask's contents)."""
    attn_mask, kpm = masks
    is_causal = False
    if case.is_causal:
        is_causal = attn_mask is None
        attn_mask = with_causal(attn_mask, case.L, dtype)
    with warnings.catch_warnings():
        # "Support for mismatched key_padding_mask and attn_mask is deprecated"
        warnings.simplefilter("ignore")
        out, w = ref(
            x,
            x,
            x,
            key_padding_mask=kpm,
            need_weights=case.need_weights,
            attn_mask=attn_mask,
            average_attn_weights=case.average,
            is_causal=is_causal,
        )
    return Run(out, w, _loss_and_grads(ref, x, out, w, r1, r2))


def run_mhsa(
    mod: mhsa.MultiheadSelfAttention,
    x: Tensor,
    case: Case,
    r1: Tensor,
    r2: Optional[Tensor],
    *,
    masks,
) -> Run:
    """mhsa on the case: is_causal=True with no causal mask of its own."""
    attn_mask, kpm = masks
    out, w = mod(
        x,
        key_padding_mask=kpm,
        need_weights=case.need_weights,
        attn_mask=attn_mask,
        average_attn_weights=case.average,
        is_causal=case.is_causal,
    )
    return Run(out, w, _loss_and_grads(mod, x, out, w, r1, r2))


def run_case(case: Case, dtype: torch.dtype) -> Tuple[Run, Run]:
    """Runs nn.MultiheadAttention and mhsa on the same weights, inputs, masks and loss."""
    ref, mod = make_pair(
        case.E, case.H, bias=case.bias, batch_first=case.batch_first, dtype=dtype, seed=case.seed
    )
    x = make_input(
        case.L, case.N, case.E, batch_first=case.batch_first, dtype=dtype, seed=case.seed + 1
    )
    masks = (
        make_attn_mask(
            case.attn_mask, N=case.N, H=case.H, L=case.L, dtype=dtype, seed=case.seed + 2
        ),
        make_kpm(case.kpm, N=case.N, L=case.L, dtype=dtype, seed=case.seed + 4),
    )
    g = torch.Generator().manual_seed(case.seed + 6)
    r1 = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    r2 = None
    if case.need_weights:
        N = 1 if case.N is None else case.N
        wshape = (N, case.L, case.L) if case.average else (N, case.H, case.L, case.L)
        if case.N is None:
            wshape = wshape[1:]
        r2 = torch.randn(wshape, generator=g, dtype=torch.float64).to(dtype)
    expected = run_reference(ref, x, case, dtype, r1, r2, masks=masks)
    actual = run_mhsa(mod, x, case, r1, r2, masks=masks)
    if dtype != torch.float64:
        # nn.MultiheadAttention in float64 on the same (exactly converted) weights, input, masks
        # and loss: the reference assert_parity measures both float32 runs against.
        ref64 = copy.deepcopy(ref).double()
        masks64 = tuple(m.double() if m is not None and m.is_floating_point() else m for m in masks)
        x64 = x.detach().double().requires_grad_(x.requires_grad)
        expected.float64 = run_reference(
            ref64,
            x64,
            case,
            torch.float64,
            r1.double(),
            None if r2 is None else r2.double(),
            masks=masks64,
        )
    return expected, actual


def max_errors(expected: Run, actual: Run) -> Dict[str, Tuple[float, float]]:
    """Per compared tensor: (max abs error, max abs error / max(1, max |reference|))."""
    pairs = [("output", expected.output, actual.output)]
    if expected.weights is not None:
        pairs.append(("weights", expected.weights, actual.weights))
    pairs += [(f"grad {n}", expected.grads[n], actual.grads[n]) for n in expected.grads]
    result = {}
    for name, e, a in pairs:
        if e.numel() == 0:
            result[name] = (0.0, 0.0)
            continue
        err = (a.detach().double() - e.detach().double()).abs().max().item()
        result[name] = (err, err / max(1.0, e.detach().abs().max().item()))
    return result


def assert_parity(expected: Run, actual: Run, dtype: torch.dtype) -> None:
    """mhsa's run against nn.MultiheadAttention's: float64 with the tolerance table, float32
    against nn in float64 with the as-exact-as-nn rule (see NN_ERROR_FACTOR)."""
    assert actual.output.shape == expected.output.shape
    assert actual.output.dtype == expected.output.dtype
    pairs = [("attn_output", "out", actual.output, expected.output, "output")]
    if expected.weights is None:
        assert actual.weights is None
    else:
        assert actual.weights is not None
        assert actual.weights.shape == expected.weights.shape
        pairs.append(("attn_weights", "out", actual.weights, expected.weights, "weights"))
    assert set(actual.grads) == set(expected.grads)
    pairs += [
        (f"grad of {n}", "grad", actual.grads[n], expected.grads[n], n) for n in expected.grads
    ]
    exact = expected.float64
    for what, kind, a, e, key in pairs:
        if exact is None:
            assert_close(a, e, dtype, kind, what)
            continue
        e64 = {"output": exact.output, "weights": exact.weights}.get(key)
        assert_as_exact_as_nn(a, e, exact.grads[key] if e64 is None else e64, what)


# The parity grid: representative rather than a Cartesian product. Lengths cross the kernels'
# default tiles (forward: 64-row query blocks, 128 from L = 768, and 512-key blocks; backward:
# 128-key blocks, 256 from L = 1024, and 64-row query blocks); long sequences use a small E to
# keep the suite fast. test_kernels.py repeats cases with small tiles.
PARITY_CASES: List[Case] = [
    # short sequences, every mask form, both layouts
    Case(L=1, N=2, E=16, H=4),
    Case(L=1, N=3, E=16, H=4, batch_first=True, attn_mask="bool3d", kpm="bool", average=False),
    Case(L=2, N=3, E=16, H=2, batch_first=True, attn_mask="bool2d"),
    Case(L=2, N=2, E=16, H=16, attn_mask="float2d", kpm="float", average=False),
    Case(L=7, N=2, E=24, H=3, attn_mask="float2d", average=False),
    Case(L=7, N=2, E=16, H=4, batch_first=True, bias=False, attn_mask="bool3d"),
    Case(L=7, N=2, E=16, H=4, attn_mask="float3d", average=False),
    Case(L=9, N=3, E=16, H=1, batch_first=True, kpm="bool"),
    Case(L=9, N=3, E=32, H=8, kpm="float", average=False),
    Case(L=7, N=2, E=16, H=4, attn_mask="bool2d", kpm="float"),
    Case(
        L=8, N=2, E=16, H=4, batch_first=True, attn_mask="float3d", kpm="bool", need_weights=False
    ),
    Case(L=5, N=4, E=64, H=16, need_weights=False),
    Case(L=6, N=2, E=16, H=2, bias=False, attn_mask="bool2d", kpm="bool", need_weights=False),
    # causal: mhsa gets no mask, MHA gets the explicit causal mask
    Case(L=7, N=2, E=16, H=4, is_causal=True),
    Case(L=7, N=2, E=16, H=4, batch_first=True, is_causal=True, need_weights=False),
    Case(L=33, N=2, E=16, H=4, batch_first=True, attn_mask="bool2d", is_causal=True),
    Case(L=40, N=2, E=16, H=2, attn_mask="float3d", kpm="bool", is_causal=True, average=False),
    Case(L=20, N=2, E=16, H=4, kpm="float", is_causal=True, need_weights=False),
    # unbatched (L, E): masks (L, L) or (H, L, L), key_padding_mask (L)
    Case(L=7, N=None, E=16, H=4),
    Case(L=9, N=None, E=16, H=4, attn_mask="bool3d", kpm="bool", average=False),
    Case(
        L=9,
        N=None,
        E=16,
        H=2,
        batch_first=True,
        attn_mask="float2d",
        kpm="float",
        need_weights=False,
    ),
    Case(L=11, N=None, E=16, H=4, is_causal=True),
    Case(L=70, N=None, E=16, H=4, attn_mask="float3d", is_causal=True, average=False),
    # lengths around the tiles
    Case(L=63, N=2, E=32, H=4, attn_mask="bool2d"),
    Case(L=64, N=2, E=32, H=4, batch_first=True, attn_mask="bool2d", kpm="bool"),
    Case(L=65, N=2, E=32, H=16, attn_mask="float3d", kpm="float", average=False),
    Case(
        L=65, N=2, E=32, H=4, batch_first=True, attn_mask="bool3d", kpm="float", need_weights=False
    ),
    Case(L=127, N=1, E=16, H=2, kpm="bool", is_causal=True),
    Case(L=128, N=2, E=64, H=8, batch_first=True, kpm="bool", average=False),
    Case(L=129, N=2, E=16, H=4, kpm="bool", is_causal=True),
    Case(L=130, N=2, E=16, H=2, bias=False, attn_mask="float2d", kpm="bool"),
    Case(L=130, N=1, E=32, H=8, batch_first=True, is_causal=True, average=False),
    Case(L=255, N=1, E=16, H=4, attn_mask="bool2d"),
    Case(L=256, N=1, E=16, H=4, attn_mask="float2d", average=False),
    Case(L=257, N=2, E=16, H=4, batch_first=True, is_causal=True, need_weights=False),
    Case(L=300, N=2, E=16, H=4, batch_first=True),
    Case(L=300, N=1, E=16, H=2, attn_mask="bool2d", kpm="bool", need_weights=False),
    Case(L=300, N=1, E=16, H=4, attn_mask="float3d", kpm="float", is_causal=True),
    # beyond the forward key tile (512), the larger query tile (L >= 768) and the larger
    # backward key tile (L >= 1024) that the kernels switch to for long sequences
    Case(L=520, N=1, E=16, H=2, attn_mask="bool2d", kpm="bool"),
    Case(L=800, N=1, E=8, H=2, batch_first=True, is_causal=True, average=False),
    Case(L=1030, N=1, E=8, H=1, kpm="float", is_causal=True, need_weights=False),
]


def band_blocked(L: int, window: Tuple[int, int]) -> Tensor:
    """(L, L) bool, True where the sliding window (left, right) hides key j from query i."""
    i = torch.arange(L).unsqueeze(1)
    j = torch.arange(L).unsqueeze(0)
    blocked = torch.zeros(L, L, dtype=torch.bool)
    if window[0] >= 0:
        blocked |= j < i - window[0]
    if window[1] >= 0:
        blocked |= j > i + window[1]
    return blocked


def attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    masks: Sequence[Tensor] = (),
    scale: Optional[float] = None,
    scale_query_first: bool = False,
    keep: Optional[Tensor] = None,
    dropout_p: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The attention of mhsa's semantics on heads, in plain autograd ops, in q's dtype (give it
    float64; test_saturated and test_sdpa also run it in float32 as a baseline).

    q is (..., H, L, D), k and v (..., H_kv, S, D) and (..., H_kv, S, Dv), H a multiple of H_kv
    (grouped-query: each key/value head serves H / H_kv query heads). The scores are q k^T
    divided by sqrt(D), or times `scale`; scale_query_first scales q before the product instead
    (nn.MultiheadAttention's math path, whose float32 arithmetic test_saturated's baseline is).
    Each of `masks`, broadcastable to (..., H, L, S), applies in turn: bool True = may not
    attend, float added to the scores. A query row that sees no key gets zero weights and a zero
    output. keep, broadcastable to the weights, is dropout's keep mask: kept weights are divided
    by 1 - dropout_p. Returns (output, weights after dropout, log-sum-exp of the masked scores).
    """
    group = q.shape[-3] // k.shape[-3]
    if group > 1:
        k = k.repeat_interleave(group, dim=-3)
        v = v.repeat_interleave(group, dim=-3)
    kt = k.transpose(-1, -2)
    if scale_query_first:
        scores = (q * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)) @ kt
    elif scale is None:
        scores = (q @ kt) / math.sqrt(q.shape[-1])
    else:
        scores = (q @ kt) * scale
    for m in masks:
        scores = scores.masked_fill(m, -math.inf) if m.dtype == torch.bool else scores + m
    lse = scores.logsumexp(-1)
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    if keep is not None:
        probs = probs * keep.to(probs.dtype) / (1.0 - dropout_p)
    return probs @ v, probs, lse


def reference_attention(
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    num_heads: int,
    *,
    num_kv_heads: Optional[int] = None,
    batch_first: bool = False,
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    window: Tuple[int, int] = (-1, -1),
    average_attn_weights: bool = True,
    rows: Optional[List[int]] = None,
    dropout_keep: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    scale_query_first: bool = False,
) -> Tuple[Tensor, Tensor]:
    """mhsa's semantics in plain autograd ops, in x's dtype (give it float64): the projections
    around attention_core.

    x is (L, N, E), (N, L, E) with batch_first, or (L, E) unbatched; masks as in
    nn.MultiheadAttention (bool: True = may not attend; float: added to the scores), combined
    with is_causal and the sliding window. num_kv_heads: grouped-query, in_proj_weight
    ((H + 2 H_kv) D, E). A query row that sees no key gets zero weights and a zero attention
    output. `rows` restricts the queries to those positions (all keys are still seen): the output
    is then (R, N, E) whatever batch_first ((R, E) unbatched) and the weights (N, [H,] R, L), so a
    few rows of a very long sequence can be checked without an L x L matrix. dropout_keep
    (N, H, L, L), True where kept (read off mhsa's per-head weights), applies dropout with
    probability dropout_p. scale_query_first: see attention_core. Returns (output, weights), the
    weights (after dropout) averaged over heads if average_attn_weights.
    """
    unbatched = x.dim() == 2
    xx = x.unsqueeze(0) if unbatched else (x if batch_first else x.transpose(0, 1))
    N, L, E = xx.shape
    H = num_heads
    H_kv = H if num_kv_heads is None else num_kv_heads
    D = E // H
    query_rows = torch.arange(L) if rows is None else torch.tensor(rows, dtype=torch.long)
    R = len(query_rows)
    qkv = F.linear(xx, in_proj_weight, in_proj_bias)  # (N, L, (H + 2 H_kv) D)
    q, k, v = qkv.split([H * D, H_kv * D, H_kv * D], -1)

    def heads(t: Tensor, h: int) -> Tensor:  # (N, rows, h * D) -> (N, h, rows, D)
        return t.reshape(N, t.shape[1], h, D).transpose(1, 2)

    masks = []
    if attn_mask is not None:
        m = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(N, H, L, L)
        masks.append(m[..., query_rows, :])
    if key_padding_mask is not None:
        masks.append(key_padding_mask.reshape(N, 1, 1, L))
    blocked = band_blocked(L, window)[query_rows]
    if is_causal:
        blocked |= torch.arange(L).unsqueeze(0) > query_rows.unsqueeze(1)
    masks.append(blocked)
    keep = None if dropout_keep is None else dropout_keep[..., query_rows, :]
    ctx, weights, _ = attention_core(
        heads(q if rows is None else q[:, query_rows], H),
        heads(k, H_kv),
        heads(v, H_kv),
        masks=masks,
        scale_query_first=scale_query_first,
        keep=keep,
        dropout_p=dropout_p,
    )
    out = F.linear(ctx.transpose(1, 2).reshape(N, R, E), out_proj_weight, out_proj_bias)
    if average_attn_weights:
        weights = weights.mean(1)
    if unbatched:
        return out.squeeze(0), weights.squeeze(0)
    if not batch_first or rows is not None:
        out = out.transpose(0, 1)
    return out, weights


def decode_op_args(module: mhsa.MultiheadSelfAttention, x: Tensor, cache: mhsa.KVCache) -> tuple:
    """The arguments of torch.ops.mhsa.decode_step for ``module``, tokens ``x`` and ``cache``."""
    return (
        x,
        module.in_proj_weight,
        module.in_proj_bias,
        module.out_proj.weight,
        module.out_proj.bias,
        module.num_heads,
        module.batch_first,
        cache.key,
        cache.value,
        cache.length,
    )
