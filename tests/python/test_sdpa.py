"""mhsa.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention:
outputs and the gradients of query, key and value.

The reference is torch's math path (SDPBackend.MATH) in float64. Where torch's function cannot
express a case in one call, it gets the equivalent explicit mask: is_causal together with
attn_mask (torch refuses both; mhsa ANDs them) and the sliding window (a boolean band). float64
is compared with the tolerance table (mhsa_testutils.TOLERANCES); float32, bfloat16 and float16
against the float64 reference, within NN_ERROR_FACTOR times torch's own error in that dtype
(torch's default CPU path on the same inputs and explicit mask; assert_as_exact_as_nn).

Also here: rows that see no key (zeros, no NaN, zero gradients), dropout against the float64
formula with mhsa's keep mask, gradcheck, the attention weights of the block op, autocast, and
the errors (each refused input with SDPA's meaning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

import mhsa
from mhsa_testutils import assert_as_exact_as_nn, assert_close, attention_core

DT = torch.float64
BLOCK_FORWARD = torch.ops.mhsa._attention_block_forward
TORCH = "torch.nn.functional.scaled_dot_product_attention"
NAMES = ("output", "grad query", "grad key", "grad value")


@dataclasses.dataclass
class Case:
    """One call: query (*batch, H, L, E), key (*batch, H_kv, S, E), value (*batch, H_kv, S, Ev);
    heads=False drops the heads dim too (2-D inputs (L, E)). mask: a key of MASKS, "float-" in
    front for an additive mask. transposed: the inputs are (*batch, L, H, E) tensors viewed as
    (*batch, H, L, E), the layout a projection gives."""

    L: int = 7
    S: Optional[int] = None  # default L
    H: int = 4
    H_kv: Optional[int] = None  # default H; enable_gqa=True when given
    batch: Tuple[int, ...] = (2,)
    E: int = 16
    Ev: Optional[int] = None  # default E
    mask: Optional[str] = None
    is_causal: bool = False
    window: Optional[Tuple[int, int]] = None
    scale: Optional[float] = None
    heads: bool = True
    transposed: bool = False
    seed: int = 0

    @property
    def keys(self) -> int:
        return self.L if self.S is None else self.S

    @property
    def kv_heads(self) -> int:
        return self.H if self.H_kv is None else self.H_kv

    @property
    def enable_gqa(self) -> bool:
        return self.H_kv is not None

    def id(self) -> str:
        parts = [f"{len(self.batch) + 2 + self.heads}d", f"L{self.L}"]
        if self.S is not None:
            parts.append(f"S{self.S}")
        parts.append(f"H{self.H}" + (f"kv{self.H_kv}" if self.H_kv is not None else ""))
        parts.append(f"E{self.E}" + (f"v{self.Ev}" if self.Ev is not None else ""))
        if self.mask:
            parts.append(self.mask)
        if self.is_causal:
            parts.append("causal")
        if self.window:
            parts.append(f"win{self.window[0]}_{self.window[1]}")
        if self.scale is not None:
            parts.append(f"scale{self.scale}")
        if self.transposed:
            parts.append("transposed")
        return "-".join(parts)


# mask kind -> its shape for (batch, H, L, S)
MASKS = {
    "LS": lambda b, H, L, S: (L, S),
    "1S": lambda b, H, L, S: (1, S),
    "HLS": lambda b, H, L, S: (H, L, S),
    "B1LS": lambda b, H, L, S: (*b, 1, L, S),
    "BHLS": lambda b, H, L, S: (*b, H, L, S),
    "B11S": lambda b, H, L, S: (*b, 1, 1, S),  # padding: each batch entry's keys past its length
    "b1LS": lambda b, H, L, S: (*b[1:], 1, L, S),  # 5-D inputs: broadcast over the outer batch dim
}


def make_mask(case: Case, dtype: torch.dtype) -> Optional[Tensor]:
    """Bool (True = may attend, as SDPA) or float (added; -inf where the bool one is False)."""
    if case.mask is None:
        return None
    kind = case.mask.split("-")[-1]
    shape = MASKS[kind](case.batch, case.H, case.L, case.keys)
    g = torch.Generator().manual_seed(case.seed + 100)
    if kind == "B11S":
        lengths = torch.randint(1, case.keys + 1, shape[:-1] + (1,), generator=g)
        attend = torch.arange(case.keys) < lengths
    else:
        attend = torch.rand(shape, generator=g) < 0.75
    if not case.mask.startswith("float-"):
        return attend
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    return values.masked_fill(~attend, -math.inf).to(dtype)


def band(L: int, S: int, is_causal: bool, window: Optional[Tuple[int, int]]) -> Optional[Tensor]:
    """(L, S) bool, True where query i may see key j under is_causal (j <= i, top-left aligned)
    and the window (i - left <= j <= i + right, -1 unbounded); None when neither is given."""
    if not is_causal and window is None:
        return None
    i = torch.arange(L).unsqueeze(1)
    j = torch.arange(S).unsqueeze(0)
    visible = torch.ones(L, S, dtype=torch.bool)
    if is_causal:
        visible &= j <= i
    if window is not None:
        if window[0] >= 0:
            visible &= j >= i - window[0]
        if window[1] >= 0:
            visible &= j <= i + window[1]
    return visible


def explicit_mask(
    attn_mask: Optional[Tensor], L: int, S: int, is_causal: bool, window
) -> Optional[Tensor]:
    """attn_mask AND is_causal AND the window, as one mask for torch (attn_mask's kind)."""
    visible = band(L, S, is_causal, window)
    if visible is None:
        return attn_mask
    if attn_mask is None:
        return visible
    if attn_mask.dtype == torch.bool:
        return attn_mask & visible
    return attn_mask.masked_fill(~visible, -math.inf)


def make_inputs(case: Case, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """query, key, value (requiring grad) and the loss weights r of (output * r).sum(); drawn in
    float64 and rounded to dtype, so the float64 reference sees exactly the same values."""
    g = torch.Generator().manual_seed(case.seed)
    Ev = case.E if case.Ev is None else case.Ev

    def tensor(heads: int, length: int, dim: int) -> Tensor:
        if not case.heads:
            shape: Tuple[int, ...] = (length, dim)
        elif case.transposed:
            shape = (*case.batch, length, heads, dim)
        else:
            shape = (*case.batch, heads, length, dim)
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        return t.transpose(-3, -2) if case.transposed and case.heads else t

    q = tensor(case.H, case.L, case.E)
    k = tensor(case.kv_heads, case.keys, case.E)
    v = tensor(case.kv_heads, case.keys, Ev)
    out_shape = (case.L, Ev) if not case.heads else (*case.batch, case.H, case.L, Ev)
    r = torch.randn(out_shape, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, r


def outputs_and_grads(call: Callable[..., Tensor], q, k, v, r) -> List[Tensor]:
    """[output, grad query, grad key, grad value] of (call(q, k, v) * r).sum()."""
    out = call(q, k, v)
    grads = torch.autograd.grad((out * r).sum(), (q, k, v))
    return [out.detach(), *grads]


def run_mhsa(case: Case, q, k, v, r, mask: Optional[Tensor]) -> List[Tensor]:
    return outputs_and_grads(
        lambda q, k, v: mhsa.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=case.is_causal,
            scale=case.scale,
            enable_gqa=case.enable_gqa,
            window_size=case.window,
        ),
        q,
        k,
        v,
        r,
    )


def run_torch(case: Case, q, k, v, r, mask: Optional[Tensor], math_path: bool) -> List[Tensor]:
    """torch's SDPA on the same call, is_causal and the window folded into the mask."""
    full = explicit_mask(mask, case.L, case.keys, case.is_causal, case.window)
    backend = sdpa_kernel([SDPBackend.MATH]) if math_path else contextlib.nullcontext()
    with backend:
        return outputs_and_grads(
            lambda q, k, v: F.scaled_dot_product_attention(
                q, k, v, attn_mask=full, scale=case.scale, enable_gqa=case.enable_gqa
            ),
            q,
            k,
            v,
            r,
        )


def as_float64(*tensors: Tensor) -> List[Tensor]:
    return [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def check_against_torch(case: Case, dtype: torch.dtype) -> None:
    q, k, v, r = make_inputs(case, dtype)
    mask = make_mask(case, dtype)
    actual = run_mhsa(case, q, k, v, r, mask)
    mask64 = mask.double() if mask is not None and mask.is_floating_point() else mask
    expected = run_torch(case, *as_float64(q, k, v, r), mask64, math_path=True)
    baseline = None if dtype == DT else run_torch(case, q, k, v, r, mask, math_path=False)
    for i, (name, a, e) in enumerate(zip(NAMES, actual, expected)):
        assert a.shape == e.shape and a.dtype == dtype, (name, a.shape, e.shape, a.dtype)
        assert not a.isnan().any(), name
        if baseline is None:
            assert_close(a, e, dtype, "out" if i == 0 else "grad", f"{case.id()} {name}")
        else:
            assert_as_exact_as_nn(a, baseline[i], e, f"{case.id()} {name}", baseline=TORCH)


# The parity grid: every argument of SDPA and mhsa's window, on small shapes; lengths that cross
# the kernels' tiles (64 queries, 128 and 512 keys) at the end.
CASES: List[Case] = [
    Case(),
    Case(L=1, S=1, H=2, E=8),
    # grouped-query attention: 8 query heads over 2 and over 1 key/value heads
    Case(L=9, H=8, H_kv=2),
    Case(L=5, S=12, H=8, H_kv=1),
    Case(L=6, H=4, H_kv=4),  # enable_gqa with as many heads: plain attention
    # L != S both ways, causal top-left aligned
    Case(L=5, S=11),
    Case(L=11, S=5),
    Case(L=5, S=11, is_causal=True),
    Case(L=11, S=5, is_causal=True),
    Case(L=12, S=7, H=8, H_kv=2, is_causal=True),
    Case(L=6, S=13, H=6, H_kv=3, is_causal=True),
    # a value dim other than the query/key dim
    Case(L=8, S=10, E=16, Ev=24),
    Case(L=8, E=24, Ev=8, H=8, H_kv=2, is_causal=True),
    # masks: every broadcast shape, bool and float, alone and with is_causal
    Case(L=9, S=10, mask="LS"),
    Case(L=9, S=10, mask="1S"),
    Case(L=9, S=10, mask="HLS"),
    Case(L=9, S=10, mask="B1LS"),
    Case(L=9, S=10, mask="BHLS"),
    Case(L=9, S=10, mask="B11S", batch=(3,)),
    Case(L=9, S=10, mask="float-LS"),
    Case(L=9, S=10, mask="float-BHLS"),
    Case(L=9, S=10, mask="float-B11S", batch=(3,)),
    Case(L=9, mask="BHLS", is_causal=True),
    Case(L=10, S=7, H=8, H_kv=2, mask="float-B1LS", is_causal=True),
    Case(L=9, S=12, H=8, H_kv=2, mask="B11S", is_causal=True, Ev=8),
    # 2-D, 3-D and 5-D inputs
    Case(L=7, S=9, H=1, batch=(), heads=False),
    Case(L=7, S=9, H=1, batch=(), heads=False, mask="LS", is_causal=True),
    Case(L=7, S=9, H=4, batch=(), mask="HLS"),
    Case(L=7, S=9, H=4, H_kv=2, batch=(), is_causal=True, Ev=8),
    Case(L=6, S=8, batch=(2, 3), mask="B1LS"),
    Case(L=6, S=8, batch=(2, 3), mask="float-b1LS", is_causal=True),
    Case(L=6, S=8, H=4, H_kv=2, batch=(2, 3), mask="float-LS", is_causal=True),
    Case(L=6, S=8, H=4, H_kv=1, batch=(3, 2), mask="B11S"),
    # scale
    Case(L=8, scale=0.3),
    Case(L=8, S=6, H=8, H_kv=2, scale=1.7, mask="BHLS", Ev=8),
    # the sliding window, alone, with is_causal and with masks, L == S and not
    Case(L=12, window=(2, 1)),
    Case(L=12, window=(3, 0), is_causal=True),
    Case(L=12, window=(-1, 2)),
    Case(L=12, window=(4, -1), mask="BHLS"),
    Case(L=9, S=14, H=8, H_kv=2, window=(2, 3), mask="B11S"),
    Case(L=14, S=9, H=8, H_kv=2, window=(3, 5), is_causal=True, mask="float-LS", Ev=8),
    # the (*batch, L, H, E) layout viewed as heads first (strided inputs)
    Case(L=9, S=7, H=8, H_kv=2, transposed=True, mask="B1LS"),
    Case(L=6, batch=(2, 2), transposed=True, is_causal=True),
    # across the kernels' tiles
    Case(L=130, S=130, H=4, H_kv=2, E=16, batch=(1,), is_causal=True),
    Case(L=70, S=600, H=2, H_kv=1, E=8, batch=(1,), mask="B11S"),
    Case(L=260, S=200, H=2, E=8, batch=(1,), window=(40, 10), mask="float-LS"),
    # a realistic head dimension
    Case(L=96, H=8, H_kv=2, E=64, batch=(1,), is_causal=True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
def test_matches_torch_sdpa(case: Case, dtype: torch.dtype):
    check_against_torch(case, dtype)


CASES_16BIT: List[Case] = [
    Case(L=9, H=8, H_kv=2),
    Case(L=12, S=7, H=8, H_kv=2, is_causal=True, mask="B11S"),
    Case(L=10, S=13, mask="float-BHLS", Ev=8, scale=0.5),
    Case(L=14, S=9, H=8, H_kv=2, window=(3, 5), is_causal=True, mask="LS"),
    Case(L=130, H=8, H_kv=2, E=64, batch=(1,), is_causal=True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", CASES_16BIT, ids=[c.id() for c in CASES_16BIT])
def test_16bit_as_exact_as_torch_sdpa(case: Case, dtype: torch.dtype):
    check_against_torch(case, dtype)


@pytest.mark.parametrize("requires_grad", ["query", "key_value", "value"])
def test_gradients_of_some_inputs(requires_grad: str):
    """Only some of query, key and value require grad: the others get none, the rest match."""
    case = Case(L=9, S=11, H=8, H_kv=2, mask="B1LS", is_causal=True, Ev=8)
    q, k, v, r = make_inputs(case, DT)
    mask = make_mask(case, DT)
    expected = run_torch(case, q, k, v, r, mask, math_path=True)
    wanted = {"query": [0], "key_value": [1, 2], "value": [2]}[requires_grad]
    leaves = [t.detach().requires_grad_(i in wanted) for i, t in enumerate((q, k, v))]
    out = mhsa.scaled_dot_product_attention(
        *leaves, attn_mask=mask, is_causal=True, enable_gqa=True
    )
    (out * r).sum().backward()
    assert_close(out, expected[0], DT, "out", "output")
    for i, t in enumerate(leaves):
        if i in wanted:
            assert_close(t.grad, expected[1 + i], DT, "grad", NAMES[1 + i])
        else:
            assert t.grad is None


def test_no_grad_inference():
    case = Case(L=9, S=11, H=8, H_kv=2, mask="float-B11S", Ev=8)
    q, k, v, _ = make_inputs(case, DT)
    mask = make_mask(case, DT)
    with torch.no_grad():
        out = mhsa.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        with sdpa_kernel([SDPBackend.MATH]):
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert not out.requires_grad
    assert_close(out, expected, DT, "out", "output")


# ---------------------------------------------------------------------------------------------
# Rows that see no key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "how", ["bool_mask", "float_mask", "causal_and_padding", "window_past_the_keys"]
)
def test_fully_masked_rows_are_zero(how: str, dtype: torch.dtype):
    """A query that can see no key gets a zero output and a zero gradient, never NaN (torch's
    math path gives the same); the other rows and the key/value gradients match torch."""
    N, H, H_kv, L, S, E = 2, 4, 2, 8, 6, 8
    mask = torch.rand(N, 1, L, S, generator=torch.Generator().manual_seed(1)) < 0.8
    is_causal, window = False, None
    if how in ("bool_mask", "float_mask"):
        mask[0, :, 3] = False
        mask[1, :, 0] = False
        mask[1, :, 5] = False
        empty = [(0, 3), (1, 0), (1, 5)]
        if how == "float_mask":
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, -math.inf)
    elif how == "causal_and_padding":
        mask = torch.ones(N, 1, 1, S, dtype=torch.bool)
        mask[1, ..., :2] = False  # entry 1's first two keys are padding: its rows 0 and 1 see none
        is_causal = True
        empty = [(1, 0), (1, 1)]
    else:
        mask = None
        window = (0, 0)  # query i sees key i only: rows 6 and 7 of 6 keys see none
        empty = [(n, i) for n in range(N) for i in (6, 7)]
    case = Case(L=L, S=S, H=H, H_kv=H_kv, E=E, batch=(N,), is_causal=is_causal, window=window)
    q, k, v, r = make_inputs(case, dtype)
    actual = run_mhsa(case, q, k, v, r, mask)
    for name, t in zip(NAMES, actual):
        assert not t.isnan().any() and not t.isinf().any(), name
    out, grad_q = actual[0], actual[1]
    for n, i in empty:
        assert torch.equal(out[n, :, i], torch.zeros_like(out[n, :, i]))
        assert torch.equal(grad_q[n, :, i], torch.zeros_like(grad_q[n, :, i]))
    mask64 = mask.double() if mask is not None and mask.is_floating_point() else mask
    expected = run_torch(case, *as_float64(q, k, v, r), mask64, math_path=True)
    for n, i in empty:
        assert (expected[0][n, :, i] == 0).all()  # the reference agrees: zeros
    if dtype == DT:
        for i, (name, a, e) in enumerate(zip(NAMES, actual, expected)):
            assert_close(a, e, DT, "out" if i == 0 else "grad", name)
    else:
        baseline = run_torch(case, q, k, v, r, mask, math_path=False)
        for name, a, b, e in zip(NAMES, actual, baseline, expected):
            assert_as_exact_as_nn(a, b, e, name, baseline=TORCH)


def test_no_key_at_all():
    """S = 0: every row is empty: a zero output, a zero query gradient, empty key/value ones."""
    q = torch.randn(2, 4, 5, 8, dtype=DT, requires_grad=True)
    k = torch.randn(2, 2, 0, 8, dtype=DT, requires_grad=True)
    v = torch.randn(2, 2, 0, 6, dtype=DT, requires_grad=True)
    out = mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert out.shape == (2, 4, 5, 6) and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    assert k.grad.shape == k.shape and v.grad.shape == v.shape


# ---------------------------------------------------------------------------------------------
# Dropout: mhsa draws its own mask; read it off the block op and compare with the formula.


def keep_mask(N: int, H: int, H_kv: int, L: int, S: int, p: float, seed: int) -> Tensor:
    """mhsa's dropout keep mask (N, H, L, S) for torch.manual_seed(seed): a pure function of the
    seed and the positions, read off the per-head weights of a uniform-attention call of the
    block op (zero query: every probability is 1/S, so a weight is 0 exactly where dropped)."""
    q = torch.zeros(N, H, L, 4, dtype=DT)
    k = torch.zeros(N, H_kv, S, 4, dtype=DT)
    torch.manual_seed(seed)
    _, weights, _, _ = BLOCK_FORWARD(
        q, k, k, dropout_p=p, need_weights=True, average_attn_weights=False
    )
    keep = weights != 0
    # what is kept is scaled by 1 / (1 - p)
    uniform = torch.full_like(weights[keep], 1.0 / S / (1.0 - p))
    assert_close(weights[keep], uniform, DT, "ulps", "kept uniform weights")
    return keep


def dropout_formula(q, k, v, mask: Optional[Tensor], keep: Tensor, p: float) -> Tensor:
    """The suite's formula (mhsa_testutils.attention_core: SDPA's math path) with the given keep
    mask (bool mask True = may attend), (N, H, L, *)."""
    masks = [] if mask is None else [~mask]
    return attention_core(q, k, v, masks=masks, keep=keep, dropout_p=p)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "case",
    [
        Case(L=9, S=13, H=4, H_kv=2, Ev=8),
        Case(L=12, S=7, H=8, H_kv=2, mask="B1LS", is_causal=True),
        Case(L=70, S=140, H=2, H_kv=1, E=8, mask="B11S", batch=(1,)),
    ],
    ids=lambda c: c.id(),
)
def test_dropout_matches_the_formula_with_the_keep_mask(case: Case, dtype: torch.dtype):
    p, seed = 0.3, 7 + case.L
    N, H, H_kv, L, S = case.batch[0], case.H, case.kv_heads, case.L, case.keys
    keep = keep_mask(N, H, H_kv, L, S, p, seed)
    assert 0.55 < keep.double().mean().item() < 0.85
    q, k, v, r = make_inputs(case, dtype)
    mask = make_mask(case, dtype)
    full = explicit_mask(mask, L, S, case.is_causal, None)

    def ours(q, k, v):
        torch.manual_seed(seed)  # the seed keep_mask() read
        return mhsa.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=case.is_causal, enable_gqa=True
        )

    def formula(q, k, v):
        return dropout_formula(q, k, v, full, keep, p)

    actual = outputs_and_grads(ours, q, k, v, r)
    expected = outputs_and_grads(formula, *as_float64(q, k, v, r))
    if dtype == DT:
        for i, (name, a, e) in enumerate(zip(NAMES, actual, expected)):
            assert_close(a, e, DT, "out" if i == 0 else "grad", name)
    else:
        baseline = outputs_and_grads(formula, q, k, v, r)
        for name, a, b, e in zip(NAMES, actual, baseline, expected):
            assert_as_exact_as_nn(a, b, e, name, baseline="the math path in float32")


def test_dropout_seeds():
    """The same seed gives the same bits; another seed, or no reseeding, other masks."""
    case = Case(L=20, H=4, H_kv=2)
    q, k, v, _ = make_inputs(case, torch.float32)

    def call(seed: Optional[int]) -> Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        return mhsa.scaled_dot_product_attention(q, k, v, dropout_p=0.4, enable_gqa=True)

    a, b, c = call(3), call(3), call(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(call(None), call(None))
    # dropout_p=0 is exactly the call without dropout
    with torch.no_grad():
        plain = mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        assert torch.equal(
            mhsa.scaled_dot_product_attention(q, k, v, dropout_p=0.0, enable_gqa=True), plain
        )


# ---------------------------------------------------------------------------------------------
# gradcheck (float64, small shapes, one thread: see test_gradcheck.py)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GRADCHECK_CASES = [
    Case(L=3, S=4, H=2, E=3, batch=(1,)),
    Case(L=5, S=6, H=4, H_kv=2, E=4, Ev=3, mask="B1LS", window=(2, 1), is_causal=True),
    Case(L=6, S=4, H=2, H_kv=1, E=3, Ev=5, mask="float-BHLS", window=(1, -1), scale=0.7),
    Case(L=4, S=5, H=2, H_kv=1, E=3, batch=(2, 1), mask="B11S", is_causal=True),
    Case(L=4, S=3, H=1, E=3, batch=(), heads=False, mask="LS"),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c.id() for c in GRADCHECK_CASES])
def test_gradcheck(case: Case, one_thread):
    q, k, v, _ = make_inputs(case, DT)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    mask = make_mask(case, DT)

    def fn(q, k, v):
        return mhsa.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=case.is_causal,
            scale=case.scale,
            enable_gqa=case.enable_gqa,
            window_size=case.window,
        )

    assert gradcheck(fn, leaves)


def test_gradcheck_with_dropout_at_a_fixed_seed(one_thread):
    """Every evaluation reseeds, so all of them see the same dropout mask."""
    case = Case(L=5, S=6, H=4, H_kv=2, E=3, Ev=4, mask="B11S", is_causal=True)
    q, k, v, _ = make_inputs(case, DT)
    mask = make_mask(case, DT)

    def fn(q, k, v):
        torch.manual_seed(123)
        return mhsa.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.3, is_causal=True, enable_gqa=True
        )

    assert gradcheck(fn, [t.detach().requires_grad_() for t in (q, k, v)])


# ---------------------------------------------------------------------------------------------
# The block op's attention weights


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_block_op_weights_averaged_is_the_mean_of_the_heads(p: float):
    """_attention_block_forward with need_weights: per-head weights are the softmax
    probabilities (after dropout), the averaged ones their mean over heads, the output and the
    log-sum-exp the same either way; gradients through the averaged weights are those through
    the mean of the per-head ones."""
    case = Case(L=6, S=9, H=4, H_kv=2, E=8, Ev=5, mask="B1LS", is_causal=True)
    q, k, v, r = make_inputs(case, DT)
    mask = make_mask(case, DT)
    mask[..., 0] = True  # every row sees a key (the log-sum-exp of an empty row is no number)
    g = torch.Generator().manual_seed(5)
    r_w = torch.randn(2, case.L, case.keys, generator=g, dtype=DT)

    def block(average: bool):
        torch.manual_seed(11)
        return BLOCK_FORWARD(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=p,
            is_causal=True,
            need_weights=True,
            average_attn_weights=average,
        )

    out_h, w_h, lse_h, rng_h = block(False)
    out_a, w_a, lse_a, rng_a = block(True)
    assert w_h.shape == (2, case.H, case.L, case.keys) and w_a.shape == (2, case.L, case.keys)
    assert torch.equal(out_h, out_a) and torch.equal(lse_h, lse_a) and torch.equal(rng_h, rng_a)
    assert_close(w_a, w_h.mean(1), DT, "out", "averaged weights")

    full = explicit_mask(mask, case.L, case.keys, True, None)
    keep = keep_mask(2, case.H, 2, case.L, case.keys, p, 11) if p > 0 else torch.ones(1)
    out_ref, probs, lse_ref = attention_core(q, k, v, masks=[~full], keep=keep, dropout_p=p)
    assert_close(w_h, probs, DT, "out", "per-head weights")
    assert_close(out_h, out_ref, DT, "out", "output")
    # the log-sum-exp of the scaled, masked scores (dropout does not change it)
    assert_close(lse_h, lse_ref, DT, "out", "lse")

    grads_a = torch.autograd.grad((out_a * r).sum() + (w_a * r_w).sum(), (q, k, v))
    grads_h = torch.autograd.grad((out_h * r).sum() + (w_h.mean(1) * r_w).sum(), (q, k, v))
    expected = torch.autograd.grad(
        (dropout_formula(q, k, v, full, keep, p) * r).sum() + (probs.mean(1) * r_w).sum(), (q, k, v)
    )
    for name, a, h, e in zip(NAMES[1:], grads_a, grads_h, expected):
        assert_close(a, h, DT, "grad", f"{name}: averaged against per-head")
        assert_close(a, e, DT, "grad", f"{name}: against the formula")


def test_block_op_without_weights_returns_no_differentiable_weights():
    case = Case(L=6, S=9, H=4, H_kv=2, E=8)
    q, k, v, r = make_inputs(case, DT)
    out, weights, lse, rng_state = BLOCK_FORWARD(q, k, v, need_weights=False)
    assert not weights.requires_grad and not lse.requires_grad and not rng_state.requires_grad
    assert lse.shape == (2, case.H, case.L) and rng_state.dtype == torch.int64
    assert_close(out, mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True), DT, "out", "o")


# ---------------------------------------------------------------------------------------------
# torch.autocast


class RecordBlockDtypes(TorchDispatchMode):
    """The dtypes of query, key, value and attn_mask that reach _attention_block_forward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[List[torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is BLOCK_FORWARD.default:
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            self.calls.append([a.dtype for a in args[:3]] + [mask.dtype])
        return func(*args, **kwargs)


def test_autocast_bfloat16():
    """Under torch.autocast("cpu", bfloat16) float32 inputs run in bfloat16 (the float mask
    stays float32) and their gradients come back in float32; as exact as torch's own SDPA under
    the same autocast, against float64 on the bfloat16-rounded inputs."""
    case = Case(L=12, S=10, H=8, H_kv=2, mask="float-B1LS", is_causal=True, Ev=8)
    q, k, v, r = make_inputs(case, torch.float32)
    r = r.bfloat16().float()  # what reaches the bfloat16 backward: exactly r
    mask = make_mask(case, torch.float32)

    def under_autocast(fn):
        def call(q, k, v):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn(q, k, v)
            assert out.dtype == torch.bfloat16
            return out.float()

        return call

    actual = outputs_and_grads(
        under_autocast(
            lambda q, k, v: mhsa.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True
            )
        ),
        q,
        k,
        v,
        r,
    )
    full = explicit_mask(mask, case.L, case.keys, True, None)
    baseline = outputs_and_grads(
        under_autocast(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=full, enable_gqa=True)
        ),
        q,
        k,
        v,
        r,
    )
    rounded = [t.detach().bfloat16().double().requires_grad_() for t in (q, k, v)]
    with sdpa_kernel([SDPBackend.MATH]):
        expected = outputs_and_grads(
            lambda q, k, v: F.scaled_dot_product_attention(
                q, k, v, attn_mask=full.double(), enable_gqa=True
            ),
            *rounded,
            r.double(),
        )
    for name, a, b, e in zip(NAMES, actual, baseline, expected):
        assert a.dtype == torch.float32, name
        # both sides' results are bfloat16 values (the output, and each gradient before its
        # cast back to float32): bfloat16's rule
        assert torch.equal(a, a.bfloat16().float()), name
        assert_as_exact_as_nn(a.bfloat16(), b.bfloat16(), e, name, baseline=TORCH)

    with torch.autocast("cpu", dtype=torch.bfloat16), RecordBlockDtypes() as record:
        mhsa.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert record.calls == [[torch.bfloat16] * 3 + [torch.float32]]


def test_autocast_leaves_float64_alone():
    case = Case(L=7, H=4, H_kv=2)
    q, k, v, _ = make_inputs(case, DT)
    with torch.no_grad():
        expected = mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = mhsa.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert actual.dtype == DT and torch.equal(actual, expected)
