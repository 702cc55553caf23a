"""Property-based fuzzing of mhsa against torch.nn.MultiheadAttention.

hypothesis draws one `FuzzParams` per example: shapes (L = 0 or 1, head_dim = 1, up to 64
heads, N = 0, unbatched, L up to 260 across several tiles), batch_first, bias, float64/float32, the memory layout of the input
and of the masks (contiguous, transposed, strided), every mask form and combination (bool/float
attn_mask 2-D/3-D, bool/float key_padding_mask, is_causal on top), the mask density (up to
fully masked rows, sequences and batches), need_weights and averaging. Each example compares
the output, the weights and the gradients of the input and all parameters with
nn.MultiheadAttention on the same weights, masks and loss.

Fully masked query rows (a (batch, head, query) that sees no key) are where the two differ on
purpose: nn.MultiheadAttention returns NaN there (need_weights=True path) and the NaN spreads to
every gradient, mhsa gives the row zero attention. For such examples the test checks that
every mhsa result is finite, that the fully masked rows have zero weights (and the output row
equals out_proj.bias where every head is masked), compares the output and its gradients with
nn.MultiheadAttention's need_weights=False path (scaled_dot_product_attention, which
zero-fills such rows), the weights of the other rows with the need_weights=True path, and the
gradients of a loss that includes the weights with `reference_attention`, plain autograd ops
with mhsa's documented semantics.

Budget: MHSA_FUZZ_EXAMPLES examples (default 600: about 10 s), derandomized so that CI runs the
same examples every time and a failure reproduces. The examples run with MHSA_FUZZ_THREADS
intra-op threads (default 1): the examples are small, and mhsa's results do not depend on the
thread count (test_determinism.py checks that bit for bit), while a team of OpenMP threads on a
busy machine can make thousands of tiny parallel regions many times slower. For a long local
run:

    MHSA_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/python/test_fuzz.py
    MHSA_FUZZ_RANDOM=1 MHSA_FUZZ_EXAMPLES=5000 ...   # fresh random examples each run

A failure prints hypothesis' falsifying example and the drawn parameters as a `FuzzParams(...)`
expression; `check(FuzzParams(...))` from this module reruns exactly that example.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from mhsa_testutils import (
    PARAM_NAMES,
    assert_close,
    band_blocked,
    bool_to_float,
    make_pair,
    reference_attention,
)

FUZZ_EXAMPLES = int(os.environ.get("MHSA_FUZZ_EXAMPLES", "600"))
FUZZ_RANDOM = os.environ.get("MHSA_FUZZ_RANDOM", "0") == "1"
FUZZ_THREADS = int(os.environ.get("MHSA_FUZZ_THREADS", "1"))

MASK_KINDS = [None, "bool2d", "float2d", "bool3d", "float3d"]
KPM_KINDS = [None, "bool", "float"]
X_LAYOUTS = ["contiguous", "transposed", "strided", "offset"]
MASK_LAYOUTS = ["contiguous", "transposed"]


@dataclasses.dataclass(frozen=True)
class FuzzParams:
    L: int
    N: Optional[int]  # None: unbatched (L, E) input
    H: int
    D: int
    batch_first: bool
    bias: bool
    dtype: str  # "float64" or "float32"
    x_layout: str
    attn_mask: Optional[str]
    attn_mask_layout: str
    kpm: Optional[str]
    kpm_layout: str
    mask_p: float  # probability that an entry of a mask is masked
    never_empty: bool  # unmask key 0 and the diagonal, so no row is fully masked
    is_causal: bool
    need_weights: bool
    average: bool
    seed: int
    window: Tuple[int, int] = (-1, -1)  # sliding window (left, right); -1: unbounded

    @property
    def E(self) -> int:
        return self.H * self.D

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@st.composite
def fuzz_params(draw) -> FuzzParams:
    H = draw(st.sampled_from([1, 1, 2, 3, 4, 8, 16, 32, 64]))
    D = draw(st.sampled_from([1, 1, 2, 3, 4, 8]))
    while H * D > 128:
        D = max(1, D // 2)
        if H * D > 128:
            H //= 2
    # Lengths: the edge cases, short, across the kernels' first tile sizes, and (the
    # randomized-parity examples of earlier versions) long ones across several key and query
    # blocks, kept cheap with a small width and at most one batch entry.
    L = draw(
        st.one_of(
            st.sampled_from([0, 1, 1, 2]),
            st.integers(1, 12),
            st.integers(13, 70),
            st.integers(120, 260),
        )
    )
    N = draw(st.sampled_from([None, None, 0, 1, 1, 2, 2, 3, 3]))
    if L > 100:
        while H * D > 16:
            H, D = (H // 2, D) if H > D else (H, D // 2)
        N = None if N is None else min(N, 1)
    return FuzzParams(
        L=L,
        N=N,
        H=H,
        D=D,
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        x_layout=draw(st.sampled_from(X_LAYOUTS)),
        attn_mask=draw(st.sampled_from(MASK_KINDS)),
        attn_mask_layout=draw(st.sampled_from(MASK_LAYOUTS)),
        kpm=draw(st.sampled_from(KPM_KINDS)),
        kpm_layout=draw(st.sampled_from(MASK_LAYOUTS)),
        mask_p=draw(st.sampled_from([0.0, 0.2, 0.4, 0.7, 1.0])),
        never_empty=draw(st.booleans()),
        is_causal=draw(st.booleans()),
        need_weights=draw(st.booleans()),
        average=draw(st.booleans()),
        seed=draw(st.integers(0, 2**20)),
        window=draw(
            st.sampled_from(
                [(-1, -1)] * 4 + [(0, 0), (2, 0), (0, 3), (4, 4), (-1, 2), (3, -1), (10, 1)]
            )
        ),
    )


# ------------------------------------------------------------------------------------------
# Inputs


def make_x(p: FuzzParams):
    """(leaf, x): x is the input in p.x_layout, a view of the leaf that gradients refer to."""
    g = torch.Generator().manual_seed(p.seed + 1)
    E, L = p.E, p.L
    if p.N is None:
        shape = (L, E)
    else:
        shape = (p.N, L, E) if p.batch_first else (L, p.N, E)
    dt = p.torch_dtype

    def randn(s):
        return torch.randn(s, generator=g, dtype=torch.float64).to(dt).requires_grad_()

    if p.x_layout == "contiguous":
        leaf = randn(shape)
        return leaf, leaf
    if p.x_layout == "transposed":  # the other layout's contiguous tensor, transposed
        if len(shape) == 2:
            leaf = randn((E, L))
            return leaf, leaf.t()
        leaf = randn((shape[1], shape[0], E))
        return leaf, leaf.transpose(0, 1)
    if p.x_layout == "strided":  # every other element of the last dim
        leaf = randn(shape[:-1] + (2 * E,))
        return leaf, leaf[..., ::2]
    # "offset": a slice of a larger tensor along the first dim
    leaf = randn((shape[0] + 3,) + shape[1:])
    return leaf, leaf[2 : 2 + shape[0]]


def _masked_entries(shape, p: FuzzParams, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand(shape, generator=g) < p.mask_p
    if p.never_empty and masked.numel():
        masked[..., 0] = False
        if masked.dim() >= 2 and masked.shape[-1] == masked.shape[-2]:
            masked.diagonal(dim1=-2, dim2=-1).fill_(False)
    return masked


def _in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values, stored transposed (non-contiguous) when layout == "transposed"."""
    if layout == "contiguous":
        return t
    if t.dim() == 1:  # every other element of a tensor twice as long
        big = torch.empty(2 * t.shape[0], dtype=t.dtype)
        big[::2] = t
        return big[::2]
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def make_masks(p: FuzzParams):
    Nb = 1 if p.N is None else p.N
    attn_mask = kpm = None
    dt = p.torch_dtype
    if p.attn_mask is not None:
        shape = (p.L, p.L) if p.attn_mask.endswith("2d") else (Nb * p.H, p.L, p.L)
        m = _masked_entries(shape, p, p.seed + 2)
        if p.attn_mask.startswith("float"):
            m = bool_to_float(m, dt, seed=p.seed + 3)
        attn_mask = _in_layout(m, p.attn_mask_layout)
    if p.kpm is not None:
        shape = (p.L,) if p.N is None else (p.N, p.L)
        m = _masked_entries(shape, p, p.seed + 4)
        if p.kpm == "float":
            m = bool_to_float(m, dt, seed=p.seed + 5)
        kpm = _in_layout(m, p.kpm_layout)
    return attn_mask, kpm


def fully_masked_rows(p: FuzzParams, attn_mask, kpm) -> torch.Tensor:
    """(N, H, L) bool: the (batch, head, query) rows that see no key (N = 1 unbatched)."""
    Nb = 1 if p.N is None else p.N
    L, H = p.L, p.H
    masked = torch.zeros(Nb, H, L, L, dtype=torch.bool)
    if attn_mask is not None:
        m = attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
        masked = masked | (m.view(Nb, H, L, L) if m.dim() == 3 else m)
    if kpm is not None:
        m = kpm if kpm.dtype == torch.bool else torch.isneginf(kpm)
        masked = masked | m.reshape(Nb, 1, 1, L)
    if p.is_causal:
        masked = masked | torch.ones(L, L, dtype=torch.bool).triu(1)
    masked = masked | band_blocked(L, p.window)
    return masked.all(-1) if L > 0 else torch.zeros(Nb, H, 0, dtype=torch.bool)


# ------------------------------------------------------------------------------------------
# References


def run_nn_mha(ref, x, p: FuzzParams, attn_mask, kpm, need_weights: bool):
    """nn.MultiheadAttention with explicit causal and band masks (it has neither of its own)."""
    if p.is_causal or p.window != (-1, -1):
        causal = (
            torch.ones(p.L, p.L, dtype=torch.bool).triu(1)
            if p.is_causal
            else torch.zeros(p.L, p.L, dtype=torch.bool)
        )
        causal = causal | band_blocked(p.L, p.window)
        if attn_mask is None:
            attn_mask = causal
        elif attn_mask.dtype == torch.bool:
            attn_mask = attn_mask | causal
        else:
            attn_mask = attn_mask.masked_fill(causal, float("-inf"))
    with warnings.catch_warnings():
        # "Support for mismatched key_padding_mask and attn_mask is deprecated"
        warnings.simplefilter("ignore")
        return ref(
            x,
            x,
            x,
            key_padding_mask=kpm,
            attn_mask=attn_mask,
            need_weights=need_weights,
            average_attn_weights=p.average,
        )


# ------------------------------------------------------------------------------------------
# The check


def _grads(loss, tensors):
    if not loss.requires_grad:  # empty input: nothing flows
        return [torch.zeros_like(t) for t in tensors]
    gs = torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(t) if gr is None else gr for gr, t in zip(gs, tensors)]


def check(p: FuzzParams) -> None:
    """Runs one example and asserts every property; raises AssertionError with details."""
    dt = p.torch_dtype
    ref, mod = make_pair(p.E, p.H, bias=p.bias, batch_first=p.batch_first, dtype=dt, seed=p.seed)
    leaf, x = make_x(p)
    attn_mask, kpm = make_masks(p)
    full = fully_masked_rows(p, attn_mask, kpm)
    note(f"fully masked (batch, head, query) rows: {int(full.sum())} of {full.numel()}")

    ref_params = dict(ref.named_parameters())
    mod_params = dict(mod.named_parameters())
    names = [n for n in PARAM_NAMES if n in mod_params]
    ref_tensors = [leaf] + [ref_params[n] for n in names]
    mod_tensors = [leaf] + [mod_params[n] for n in names]
    grad_names = ["input"] + names

    out, w = mod(
        x,
        key_padding_mask=kpm,
        attn_mask=attn_mask,
        need_weights=p.need_weights,
        average_attn_weights=p.average,
        is_causal=p.is_causal,
        window_size=p.window,
    )
    assert out.shape == x.shape and out.dtype == dt
    assert torch.isfinite(out).all(), "mhsa output is not finite"
    if p.need_weights:
        Nb = 1 if p.N is None else p.N
        wshape = (Nb, p.L, p.L) if p.average else (Nb, p.H, p.L, p.L)
        assert w.shape == (wshape[1:] if p.N is None else wshape) and w.dtype == dt
        assert torch.isfinite(w).all(), "mhsa weights are not finite"
    else:
        assert w is None

    g = torch.Generator().manual_seed(p.seed + 6)
    r1 = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dt)
    r2 = torch.randn(w.shape, generator=g, dtype=torch.float64).to(dt) if w is not None else None
    out_loss = (out * r1).sum()
    loss = out_loss + ((w * r2).sum() if w is not None else 0)
    grads = _grads(loss, mod_tensors)
    for name, gr in zip(grad_names, grads):
        assert torch.isfinite(gr).all(), f"mhsa gradient of {name} is not finite"

    if out.numel() == 0 or p.L == 0:
        event("empty input")
        # Empty batch or sequence: nn.MultiheadAttention cannot take masks then (it reshapes
        # them with a -1 of zero elements), so it runs unmasked for the shapes; every
        # parameter gradient is zero (no row contributes) and so is the input's.
        ref_out, ref_w = run_nn_mha(
            ref, x, dataclasses.replace(p, is_causal=False, window=(-1, -1)), None, None, True
        )
        assert out.shape == ref_out.shape
        if p.need_weights:
            assert w.shape == ref_w.shape
        for name, gr in zip(grad_names, grads):
            assert torch.equal(gr, torch.zeros_like(gr)), f"grad of {name} of an empty input"
        return

    if not full.any():
        event("parity")
        # Plain parity: output, weights and every gradient of a loss over both.
        ref_out, ref_w = run_nn_mha(ref, x, p, attn_mask, kpm, p.need_weights)
        assert_close(out, ref_out, dt, "out", "attn_output")
        if p.need_weights:
            assert_close(w, ref_w, dt, "out", "attn_weights")
        ref_loss = (ref_out * r1).sum() + ((ref_w * r2).sum() if p.need_weights else 0)
        for name, a, e in zip(grad_names, grads, _grads(ref_loss, ref_tensors)):
            assert_close(a, e, dt, "grad", f"grad of {name}")
        return

    # Fully masked rows present.
    event("fully masked rows")
    Nb = 1 if p.N is None else p.N
    every_head = full.all(1)  # (N, L): the query sees no key in any head
    out_nl = out.unsqueeze(1) if p.N is None else (out if p.batch_first else out.transpose(0, 1))
    out_nl = out_nl.reshape(Nb, p.L, p.E)
    bias = mod.out_proj.bias.detach() if p.bias else torch.zeros(p.E, dtype=dt)
    assert_close(
        out_nl[every_head].detach(),
        bias.expand(int(every_head.sum()), p.E),
        dt,
        "bitwise",
        "output rows masked in every head",
    )

    # Output and its gradients: nn.MultiheadAttention's need_weights=False path.
    sdpa_out, _ = run_nn_mha(ref, x, p, attn_mask, kpm, need_weights=False)
    assert torch.isfinite(sdpa_out).all(), "premise: the need_weights=False path zero-fills"
    assert_close(out, sdpa_out, dt, "out", "attn_output (vs need_weights=False path)")
    out_grads = _grads(out_loss, mod_tensors)
    for name, a, e in zip(grad_names, out_grads, _grads((sdpa_out * r1).sum(), ref_tensors)):
        assert_close(a, e, dt, "grad", f"grad of {name} of the output (vs need_weights=False path)")

    if p.need_weights:
        # Weights: zero on fully masked rows, nn.MultiheadAttention's elsewhere.
        w_nh = w.unsqueeze(0) if p.N is None else w
        if p.average:
            assert (w_nh[every_head] == 0).all(), "averaged weights of rows masked in every head"
        else:
            assert (w_nh[full] == 0).all(), "weights of fully masked rows"
        _, ref_w = run_nn_mha(ref, x, p, attn_mask, kpm, need_weights=True)
        ref_nh = ref_w.unsqueeze(0) if p.N is None else ref_w
        nan_rows = torch.isnan(ref_nh).any(-1)
        expected_nan = full.any(1) if p.average else full
        assert torch.equal(nan_rows, expected_nan), (
            "premise: MHA is NaN exactly on the fully masked rows"
        )
        assert_close(
            w_nh[~nan_rows], ref_nh[~nan_rows], dt, "out", "attn_weights of rows that see a key"
        )
        # Gradients of a loss over output and weights: mhsa's semantics in plain ops.
        w_in, b_in, w_out, b_out = [mod_params.get(n) for n in PARAM_NAMES]
        zr_out, zr_w = reference_attention(
            x,
            w_in,
            b_in,
            w_out,
            b_out,
            p.H,
            batch_first=p.batch_first,
            attn_mask=attn_mask,
            key_padding_mask=kpm,
            is_causal=p.is_causal,
            window=p.window,
            average_attn_weights=p.average,
        )
        assert_close(out, zr_out, dt, "out", "attn_output (vs reference_attention)")
        assert_close(w, zr_w, dt, "out", "attn_weights (vs reference_attention)")
        zr_loss = (zr_out * r1).sum() + (zr_w * r2).sum()
        for name, a, e in zip(grad_names, grads, _grads(zr_loss, mod_tensors)):
            assert_close(a, e, dt, "grad", f"grad of {name} (vs reference_attention)")


_settings = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=not FUZZ_RANDOM,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def fuzz_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(FUZZ_THREADS)
    yield
    torch.set_num_threads(previous)


@_settings
@given(p=fuzz_params())
def test_fuzz_against_nn_multihead_attention(p: FuzzParams):
    note(f"reproduce: check({p!r})  # tests/python/test_fuzz.py")
    check(p)
