"""Packed variable-length sequences (issue #11 part 2): ``multi_head_self_attention_packed`` and
``MultiheadSelfAttention.forward_packed`` against running every sequence alone through the
module and through nn.MultiheadAttention; cu_seqlens validation, dropout, gradcheck, opcheck,
TorchScript."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.library import opcheck

import mhsa
from mhsa_testutils import PARAM_NAMES, assert_close, band_blocked, causal_bool, make_pair

# Lengths cross the kernels' tile edges (64-row forward query blocks, 128-row backward key
# blocks) and include a sequence of one token.
LENGTHS = [5, 1, 70, 13, 130, 2]
E, H = 16, 4

# torch 2.13 marks torch.jit.script/save/load deprecated; they are what one test here tests
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def _offsets(lengths: Sequence[int], dtype: torch.dtype = torch.int64) -> Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=dtype)


def _packed_input(lengths: Sequence[int], dtype: torch.dtype, seed: int, *, E: int = E) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(lengths), E, generator=g, dtype=torch.float64).to(dtype).requires_grad_()


def _band_mask(L: int, is_causal: bool, window: Tuple[int, int]) -> Optional[Tensor]:
    """Bool (L, L) mask, True = may not attend: the causal mask and/or the sliding window."""
    if not is_causal and window[0] < 0 and window[1] < 0:
        return None
    masked = band_blocked(L, window)
    return masked | causal_bool(L) if is_causal else masked


def _per_sequence(
    module: nn.Module,
    x: Tensor,
    lengths: Sequence[int],
    *,
    is_causal: bool,
    window: Tuple[int, int] = (-1, -1),
    nn_reference: bool = False,
) -> Tensor:
    """Each sequence alone through ``module`` (unbatched (L, E) input), outputs concatenated.
    mhsa gets is_causal, nn.MultiheadAttention an explicit mask."""
    outs: List[Tensor] = []
    start = 0
    for L in lengths:
        xs = x[start : start + L]
        start += L
        mask = _band_mask(L, is_causal, window)
        if nn_reference:
            outs.append(module(xs, xs, xs, attn_mask=mask, need_weights=False)[0])
        elif window == (-1, -1):
            outs.append(module(xs, need_weights=False, is_causal=is_causal)[0])
        else:
            outs.append(module(xs, need_weights=False, attn_mask=mask)[0])
    return torch.cat(outs)


def _grads(out: Tensor, x: Tensor, module: nn.Module, seed: int = 99) -> List[Tensor]:
    """Gradients of a random projection of ``out`` w.r.t. x and the four parameters."""
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    params = [module.get_parameter(n) for n in PARAM_NAMES]
    return list(torch.autograd.grad((out * r.to(out.dtype)).sum(), [x] + params))


def _close_16bit(actual: Tensor, expected: Tensor, what: str) -> None:
    # 16-bit storage: a few roundings of 2^-8 (bfloat16) or 2^-11 (float16) relative, measured
    # against the largest entry (as test_shapes.test_bfloat16_close_to_float32_reference).
    assert_close(actual, expected, actual.dtype, "largest", what)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_matches_each_sequence_alone(dtype, is_causal):
    """Outputs and all five gradients (parameter gradients summed over the sequences) equal
    those of the module run on every sequence alone."""
    _, mod = make_pair(E, H, dtype=dtype, seed=3)
    x = _packed_input(LENGTHS, dtype, seed=4)
    out = mod.forward_packed(x, _offsets(LENGTHS), is_causal=is_causal)
    assert out.shape == x.shape and out.dtype == dtype
    grads = _grads(out, x, mod)
    x_ref = x.detach().clone().requires_grad_()
    out_ref = _per_sequence(mod, x_ref, LENGTHS, is_causal=is_causal)
    grads_ref = _grads(out_ref, x_ref, mod)
    names = ("output", "grad of x") + tuple(f"grad of {n}" for n in PARAM_NAMES)
    for i, (name, a, e) in enumerate(zip(names, [out] + grads, [out_ref] + grads_ref)):
        if dtype in (torch.float64, torch.float32):
            assert_close(a, e, dtype, "reordered" if i == 0 else "reordered_grad", name)
        else:
            _close_16bit(a, e, name)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_nn_multihead_attention(dtype, is_causal):
    ref, mod = make_pair(E, H, dtype=dtype, seed=5)
    x = _packed_input(LENGTHS, dtype, seed=6)
    out = mod.forward_packed(x, _offsets(LENGTHS, torch.int32), is_causal=is_causal)
    grads = _grads(out, x, mod)
    x_ref = x.detach().clone().requires_grad_()
    out_ref = _per_sequence(ref, x_ref, LENGTHS, is_causal=is_causal, nn_reference=True)
    grads_ref = _grads(out_ref, x_ref, ref)
    assert_close(out, out_ref, dtype, "out", "output")
    for name, a, e in zip(("x",) + PARAM_NAMES, grads, grads_ref):
        assert_close(a, e, dtype, "grad", f"grad of {name}")


def test_bfloat16_close_to_float64_reference():
    """bfloat16 packed against the float64 per-sequence reference on the same rounded values."""
    _, mod = make_pair(E, H, dtype=torch.float64, seed=7)
    mod_bf = mhsa.MultiheadSelfAttention(E, H, dtype=torch.bfloat16)
    mod_bf.load_state_dict(mod.state_dict())
    mod.load_state_dict({k: v.bfloat16().double() for k, v in mod_bf.state_dict().items()})
    x = _packed_input(LENGTHS, torch.bfloat16, seed=8)
    out = mod_bf.forward_packed(x, _offsets(LENGTHS), is_causal=True)
    x_ref = x.detach().double().requires_grad_()
    out_ref = _per_sequence(mod, x_ref, LENGTHS, is_causal=True)
    _close_16bit(out, out_ref, "output")
    for name, a, e in zip(
        ("x",) + PARAM_NAMES, _grads(out, x, mod_bf), _grads(out_ref, x_ref, mod)
    ):
        assert a.dtype == torch.bfloat16
        _close_16bit(a, e, f"grad of {name}")


@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_batch_of_one_is_the_plain_module(cu_dtype):
    _, mod = make_pair(E, H, seed=9)
    x = _packed_input([37], torch.float64, seed=10)
    out = mod.forward_packed(x, _offsets([37], cu_dtype), max_seqlen=37)
    expected = mod(x, need_weights=False)[0]
    assert_close(out, expected, torch.float64, "reordered", "output")


def test_functional_and_zero_length_sequences():
    """A zero-length sequence contributes nothing; the functional form takes every argument."""
    lengths = [4, 0, 9, 0]
    _, mod = make_pair(E, H, seed=11, bias=False)
    x = _packed_input(lengths, torch.float64, seed=12)
    out = mhsa.functional.multi_head_self_attention_packed(
        x,
        _offsets(lengths),
        mod.in_proj_weight,
        None,
        mod.out_proj.weight,
        None,
        H,
        max_seqlen=9,
        dropout_p=0.5,
        training=False,
        is_causal=True,
    )
    expected = _per_sequence(mod, x, [4, 9], is_causal=True)
    assert_close(out, expected, torch.float64, "reordered", "output")


def test_threads_do_not_change_a_bit():
    """The partition of the work across threads changes, the results do not (backward: one
    team of threads dealt all sequences' key-block tasks round-robin, here also with more
    threads than some sequences have tasks and than the machine has cores)."""
    lengths = [300, 7, 150, 64, 1, 0, 33]
    _, mod = make_pair(E, H, seed=13, dtype=torch.float32)
    x = _packed_input(lengths, torch.float32, seed=14)
    cu = _offsets(lengths)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            out = mod.forward_packed(x, cu, is_causal=True)
            results.append([out] + _grads(out, x, mod))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


# ---------------------------------------------------------------------------------------------
# Dropout


def _mask_reading_module(L: int, p: float) -> mhsa.MultiheadSelfAttention:
    """One head, E = L, Q = K = 0 (uniform probabilities 1/L), V = identity, out_proj =
    identity: output[i, j] = keep_ij / (L (1 - p)), the dropout mask itself."""
    mod = mhsa.MultiheadSelfAttention(L, 1, dropout=p, dtype=torch.float64)
    with torch.no_grad():
        mod.in_proj_weight.zero_()
        mod.in_proj_weight[2 * L :] = torch.eye(L, dtype=torch.float64)
        mod.in_proj_bias.zero_()
        mod.out_proj.weight.copy_(torch.eye(L, dtype=torch.float64))
        mod.out_proj.bias.zero_()
    return mod


def test_dropout_keeps_one_minus_p_and_sequences_differ():
    L, B, p = 64, 6, 0.3
    mod = _mask_reading_module(L, p)
    x = torch.eye(L, dtype=torch.float64).repeat(B, 1)
    out = mod.forward_packed(x, _offsets([L] * B))
    keep = out * (L * (1 - p))
    assert_close(keep, keep.round(), torch.float64, "reordered", "the keep mask read back")
    assert set(keep.round().unique().tolist()) <= {0.0, 1.0}
    kept = keep.round().mean().item()
    # 6 * 64 * 64 Bernoulli(0.7) draws: standard deviation 0.0036.
    assert abs(kept - (1 - p)) < 0.02, kept
    masks = keep.round().view(B, L, L)
    for b in range(1, B):
        assert not torch.equal(masks[b], masks[0]), "sequences share a dropout mask"
    # eval mode: no dropout at all
    mod.eval()
    uniform = mod.forward_packed(x, _offsets([L] * B)) * L
    assert_close(uniform, torch.ones_like(uniform), torch.float64, "reordered", "eval mode")


def test_dropout_reproducible_by_manual_seed():
    _, mod = make_pair(E, H, seed=18, dropout=0.4)
    x = _packed_input(LENGTHS, torch.float64, seed=19)
    cu = _offsets(LENGTHS)
    torch.manual_seed(5)
    a = mod.forward_packed(x, cu, is_causal=True)
    ga = _grads(a, x, mod)
    torch.manual_seed(5)
    b = mod.forward_packed(x, cu, is_causal=True)
    gb = _grads(b, x, mod)
    c = mod.forward_packed(x, cu, is_causal=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64) and opcheck


@pytest.fixture
def one_thread():
    """gradcheck makes many calls on tiny tensors (see test_gradcheck.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_params(E: int, bias: bool, seed: int) -> List[Optional[Tensor]]:
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int, scale: float) -> Tensor:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    return [
        t(3 * E, E, scale=E**-0.5),
        t(3 * E, scale=0.5) if bias else None,
        t(E, E, scale=E**-0.5),
        t(E, scale=0.5) if bias else None,
    ]


@pytest.mark.parametrize(
    "is_causal, dropout_p, bias",
    [(False, 0.0, True), (True, 0.0, False), (True, 0.3, True)],
    ids=["full", "causal_no_bias", "causal_dropout"],
)
def test_gradcheck(one_thread, is_causal, dropout_p, bias):
    lengths = [3, 1, 5]
    e, h = 8, 2
    x = _packed_input(lengths, torch.float64, seed=20, E=e)
    w, b, ow, ob = _small_params(e, bias, seed=21)
    cu = _offsets(lengths, torch.int32)

    def fn(x, w, b, ow, ob):
        torch.manual_seed(7)  # the same dropout mask in every evaluation
        return mhsa.functional.multi_head_self_attention_packed(
            x, cu, w, b, ow, ob, h, dropout_p=dropout_p, is_causal=is_causal
        )

    assert gradcheck(fn, (x, w, b, ow, ob))


def _op_args(requires_grad: bool, dropout_p: float = 0.0) -> tuple:
    lengths = [3, 1, 5]
    x = _packed_input(lengths, torch.float64, seed=22, E=8).detach().requires_grad_(requires_grad)
    w, b, ow, ob = [
        t.detach().requires_grad_(requires_grad) for t in _small_params(8, True, seed=23)
    ]
    return (x, _offsets(lengths), w, b, ow, ob, 2, None, True, -1, -1, dropout_p)


ALL_TESTS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25], ids=["plain", "dropout"])
def test_opcheck_mha_packed_forward(requires_grad, dropout_p):
    opcheck(
        torch.ops.mhsa._mha_packed_forward.default,
        _op_args(requires_grad, dropout_p),
        test_utils=ALL_TESTS,
    )


def test_opcheck_mha_packed_backward():
    args = _op_args(False)
    out, qkv, context, lse, rng_state = torch.ops.mhsa._mha_packed_forward(*args)
    x, cu, w, b, ow, ob, h, _, is_causal, wl, wr, p = args
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(24), dtype=out.dtype)
    bargs = (grad, x, cu, w, ow, qkv, context, lse, rng_state, h, is_causal, wl, wr, p, [True] * 5)
    opcheck(torch.ops.mhsa._mha_packed_backward.default, bargs, test_utils=ALL_TESTS)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_opcheck_public_op(requires_grad):
    x, cu, w, b, ow, ob, h, *_ = _op_args(requires_grad)
    opcheck(
        torch.ops.mhsa.multi_head_self_attention_packed.default,
        (x, cu, w, b, ow, ob, h),
        {"is_causal": True},
        test_utils=ALL_TESTS,
    )


def test_double_backward_is_refused():
    _, mod = make_pair(E, H, seed=25)
    x = _packed_input([4, 3], torch.float64, seed=26)
    out = mod.forward_packed(x, _offsets([4, 3]))
    (gx,) = torch.autograd.grad(out.sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


# ---------------------------------------------------------------------------------------------
# TorchScript


class _PackedUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = mhsa.MultiheadSelfAttention(E, H, dtype=torch.float64)

    def forward(self, x: Tensor, cu_seqlens: Tensor) -> Tensor:
        return self.attn.forward_packed(x, cu_seqlens, is_causal=True, max_seqlen=130)


def test_torchscript_forward_packed_save_load(tmp_path):
    eager = _PackedUser()
    eager.attn.load_state_dict(make_pair(E, H, seed=27)[1].state_dict())
    path = tmp_path / "packed.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    loaded = torch.jit.load(str(path))
    x = _packed_input(LENGTHS, torch.float64, seed=28)
    cu = _offsets(LENGTHS)
    out = loaded(x, cu)
    expected = eager(x, cu)
    assert_close(out, expected, torch.float64, "reordered", "output")
    g = torch.autograd.grad(out.sum(), x)[0]
    g_ref = torch.autograd.grad(expected.sum(), x)[0]
    assert_close(g, g_ref, torch.float64, "reordered_grad", "grad of x")
    scripted_fn = torch.jit.script(mhsa.functional.multi_head_self_attention_packed)
    attn = eager.attn
    out_fn = scripted_fn(
        x,
        cu,
        attn.in_proj_weight,
        attn.in_proj_bias,
        attn.out_proj.weight,
        attn.out_proj.bias,
        H,
        is_causal=True,
    )
    assert_close(out_fn, expected, torch.float64, "reordered", "scripted functional")


# ---------------------------------------------------------------------------------------------
# Sliding window: needs the kernels to honour MaskView.window_left/right (the padded-batch
# sliding-window change); the reference is nn.MultiheadAttention with an explicit band mask.


@pytest.mark.parametrize(
    "window, is_causal",
    [((3, 2), False), ((5, -1), True), ((-1, 0), False), ((0, 4), False), ((40, 70), False)],
    ids=["both", "left_causal", "right_zero", "left_zero", "wider_than_tiles"],
)
def test_sliding_window_matches_band_mask(window, is_causal):
    ref, mod = make_pair(E, H, seed=29)
    x = _packed_input(LENGTHS, torch.float64, seed=30)
    out = mod.forward_packed(x, _offsets(LENGTHS), is_causal=is_causal, window_size=window)
    grads = _grads(out, x, mod)
    x_ref = x.detach().clone().requires_grad_()
    out_ref = _per_sequence(
        ref, x_ref, LENGTHS, is_causal=is_causal, window=window, nn_reference=True
    )
    grads_ref = _grads(out_ref, x_ref, ref)
    assert_close(out, out_ref, torch.float64, "out", "output")
    for name, a, e in zip(("x",) + PARAM_NAMES, grads, grads_ref):
        assert_close(a, e, torch.float64, "grad", f"grad of {name}")


def test_torch_compile_fullgraph_dynamic():
    """The packed op traces through its Meta kernel: torch.compile(fullgraph=True, dynamic=True)
    gives the eager results, forward and backward, for two different packings."""
    _, mod = make_pair(E, H, seed=31)

    def fn(x: Tensor, cu: Tensor) -> Tensor:
        return mod.forward_packed(x, cu, is_causal=True)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for seed, lengths in enumerate(([5, 1, 9], [7, 20])):
        x = _packed_input(lengths, torch.float64, seed=32 + seed)
        cu = _offsets(lengths)
        out = compiled(x, cu)
        expected = fn(x, cu)
        assert_close(out, expected, torch.float64, "reordered", "output")
        (g,) = torch.autograd.grad(out.sum(), x)
        (g_ref,) = torch.autograd.grad(expected.sum(), x)
        assert_close(g, g_ref, torch.float64, "reordered_grad", "grad of x")
