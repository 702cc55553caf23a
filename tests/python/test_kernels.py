"""The kernels' internal variants against nn.MultiheadAttention: tile sizes (MHSA_TILES, read on
every call) and instruction sets (MHSA_CPU_CAPABILITY, read once per process, so each runs in
a subprocess)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mhsa._cpu_info import cpu_model_and_flags
from mhsa_testutils import (
    TOLERANCES,
    Case,
    assert_close,
    assert_parity,
    run_case,
    run_python_in_subprocess,
)

HERE = Path(__file__).resolve().parent

# Cases for small tiles: every mask form, causal, both weight forms, lengths that leave
# partial tiles.
TILE_CASES = [
    Case(L=37, N=2, E=16, H=4, attn_mask="bool2d", kpm="bool"),
    Case(L=45, N=2, E=16, H=2, batch_first=True, attn_mask="float3d", kpm="float", average=False),
    Case(L=50, N=1, E=16, H=4, is_causal=True, kpm="bool"),
    Case(L=41, N=2, E=32, H=8, is_causal=True, need_weights=False, attn_mask="bool2d"),
    Case(L=33, N=None, E=16, H=4, attn_mask="bool3d", is_causal=True, average=False),
]

# forward_q, forward_k, backward_q, backward_kv; odd sizes on purpose (any positive size is
# accepted)
TILE_CONFIGS = ["16,32,16,32", "7,13,5,11", "1,1,1,1", "64,8,8,64"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("tiles", TILE_CONFIGS)
def test_parity_with_small_tiles(tiles, dtype, monkeypatch):
    monkeypatch.setenv("MHSA_TILES", tiles)
    for case in TILE_CASES:
        expected, actual = run_case(case, dtype)
        assert_parity(expected, actual, dtype)


def test_tile_override_does_not_change_results_beyond_rounding(monkeypatch):
    """The same call with default and with tiny tiles (f64: only summation order differs)."""
    case = Case(
        L=70, N=2, E=16, H=4, attn_mask="float2d", kpm="bool", is_causal=True, average=False
    )
    _, default = run_case(case, torch.float64)
    monkeypatch.setenv("MHSA_TILES", "8,8,8,8")
    _, small = run_case(case, torch.float64)
    f64 = torch.float64
    assert_close(small.output, default.output, f64, "reordered", "output")
    assert_close(small.weights, default.weights, f64, "reordered_weights", "weights")
    for name in default.grads:
        assert_close(small.grads[name], default.grads[name], f64, "reordered_grad", name)


_ISA_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import mhsa
from mhsa_testutils import Case, assert_parity, run_case
cases = [
    Case(L=70, N=2, E=16, H=4, attn_mask="bool2d", kpm="bool"),
    Case(L=130, N=1, E=32, H=8, batch_first=True, is_causal=True, average=False),
    Case(L=65, N=2, E=24, H=3, attn_mask="float3d", kpm="float", need_weights=False),
    Case(L=9, N=None, E=16, H=16, is_causal=True),
]
worst = 0.0
for dtype in (torch.float64, torch.float32):
    for case in cases:
        expected, actual = run_case(case, dtype)
        assert_parity(expected, actual, dtype)
# dropout: deterministic per seed in this instruction set too
mod = mhsa.MultiheadSelfAttention(16, 4, dropout=0.3)
x = torch.randn(20, 2, 16)
torch.manual_seed(0); a = mod(x, average_attn_weights=False)
torch.manual_seed(0); b = mod(x, average_attn_weights=False)
assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
print(json.dumps({"capability": torch.ops.mhsa._cpu_capability()}))
"""

ISA_ORDER = ["default", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_parity_per_instruction_set(isa):
    """MHSA_CPU_CAPABILITY lowers the kernels' instruction set (never above what the CPU
    has); each one must match nn.MultiheadAttention."""
    if not hasattr(torch.ops.mhsa, "_cpu_capability"):
        pytest.fail("torch.ops.mhsa._cpu_capability is missing")
    best = torch.ops.mhsa._cpu_capability() if "MHSA_CPU_CAPABILITY" not in os.environ else None
    if best is not None and ISA_ORDER.index(isa) > ISA_ORDER.index(best):
        pytest.skip(
            f"this CPU lacks {isa}: its best kernels are {best} (the {isa} copy cannot run here)"
        )
    env = dict(
        os.environ, MHSA_CPU_CAPABILITY=isa, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")
    )
    result = run_python_in_subprocess(_ISA_SCRIPT, [str(HERE)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    chosen = json.loads(result.stdout.strip().splitlines()[-1])["capability"]
    if best is not None:
        assert chosen == isa, (isa, best, chosen)
    print(f"kernels that ran: {chosen}")


def test_malformed_tile_override_warns_and_is_ignored(monkeypatch):
    """Proves the override is read on every call (what the tests above rely on)."""
    case = Case(L=20, N=1, E=8, H=2)
    monkeypatch.setenv("MHSA_TILES", "not,a,tile,size")
    with pytest.warns(UserWarning, match="MHSA_TILES"):
        expected, actual = run_case(case, torch.float64)
    assert_parity(expected, actual, torch.float64)


_BF16_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import mhsa
from mhsa_testutils import relative_error as rel
torch.manual_seed(0)
E, H = 32, 4
x = torch.randn(3, 70, E)
ref = torch.nn.MultiheadAttention(E, H, batch_first=True)
kpm = torch.rand(3, 70) < 0.2
kpm[:, 0] = False
worst = {}
for nw in (True, False):
    xr = x.clone().requires_grad_()
    out_r, w_r = ref(xr, xr, xr, key_padding_mask=kpm, need_weights=nw)
    out_r.sum().backward()
    mod = mhsa.MultiheadSelfAttention.from_torch(ref).to(torch.bfloat16)
    xb = x.to(torch.bfloat16).requires_grad_()
    out_b, w_b = mod(xb, key_padding_mask=kpm, need_weights=nw)
    out_b.float().sum().backward()
    assert out_b.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16
    errs = [rel(out_b, out_r), rel(xb.grad, xr.grad)]
    errs += [rel(p.grad, q.grad) for p, q in zip(mod.parameters(), ref.parameters())]
    if nw:
        errs.append(rel(w_b, w_r))
    ref.zero_grad()
    worst[str(nw)] = max(errs)
print(json.dumps(worst))
"""


@pytest.mark.parametrize("mode", ["native", "fp32"])
def test_bfloat16_compute_modes(mode):
    """bfloat16 inputs run with bf16 GEMMs (native) or in fp32 from the bf16 values (the default
    on CPUs without bf16 instructions); both match a float32 nn.MultiheadAttention to bfloat16
    precision (the table's bfloat16 "norm" bound: a few 2^-8)."""
    env = dict(os.environ, MHSA_BF16_COMPUTE=mode)
    result = run_python_in_subprocess(_BF16_SCRIPT, [str(HERE)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    worst = json.loads(result.stdout.strip().splitlines()[-1])
    bound = TOLERANCES[torch.bfloat16]["norm"].rtol
    for need_weights, err in worst.items():
        assert err < bound, (mode, need_weights, err)


_CAP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import mhsa
from mhsa_testutils import assert_close
torch.manual_seed(0)
ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
mod = mhsa.MultiheadSelfAttention.from_torch(ref)
x = torch.randn(2, 40, 32)
assert_close(mod(x)[0], ref(x, x, x)[0], torch.float32, "out", "output")
print(torch.ops.mhsa._backend_info())
"""


@pytest.mark.parametrize("cap", ["AVX2", "SSE41"])
def test_onednn_isa_cap_chooses_the_gemm_engine(cap):
    """A oneDNN ISA cap at AVX2 (what an AVX2-only CPU has) keeps the float32 micro-kernel and
    takes away the 16-bit ones; a cap below AVX2 leaves the portable loops. Either way the
    results match nn.MultiheadAttention."""
    flags = cpu_model_and_flags()[1]
    if "avx2" not in flags or "fma" not in flags:
        pytest.skip("this CPU has no AVX2+FMA: the micro-kernels never run here")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=cap)
    env.pop("DNNL_MAX_CPU_ISA", None)
    env.pop("MHSA_PORTABLE_GEMM", None)
    result = run_python_in_subprocess(_CAP_SCRIPT, [str(HERE)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    info = result.stdout.strip().splitlines()[-1]
    if cap == "AVX2":
        assert "gemm=onednn-brgemm(float32;bfloat16-as-float32;float16-as-float32)" in info, info
    else:
        assert "gemm=portable-loops" in info, info
