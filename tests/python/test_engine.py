"""Which tile GEMM engine this CPU gets, read from its flags: mhsa is never silently slow.

An Intel Xeon with AMX once ran every dtype on the portable loops (77-228x slower than torch)
while every other test passed, because a failed bfloat16 probe switched everything off. These
tests ask a fresh process (no engine overrides in its environment) which engine runs, and assert
it from /proc/cpuinfo; and they make probes fail on purpose (MHSA_TEST_FAIL_PROBE) to check that
a failure costs only that dtype its micro-kernel, is warned about once, and is reported.
"""

import os
import platform
import re
from pathlib import Path
from typing import Dict, Set

import pytest

from mhsa._cpu_info import cpu_model_and_flags
from mhsa_testutils import run_python_in_subprocess

HERE = Path(__file__).resolve().parent

# Settings that change the engine on purpose; the engine tests run without them.
ENGINE_OVERRIDES = (
    "MHSA_PORTABLE_GEMM",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MHSA_CPU_CAPABILITY",
    "MHSA_BF16_COMPUTE",
    "MHSA_HALF_COMPUTE",
    "MHSA_TEST_FAIL_PROBE",
)

_INFO_SCRIPT = r"""
import sys, warnings, torch
sys.path.insert(0, sys.argv[1])
import mhsa
from mhsa_testutils import assert_close
warnings.simplefilter("always")
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    ref = torch.nn.MultiheadAttention(64, 4, batch_first=True).to(dtype)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    x = torch.randn(2, 70, 64, dtype=dtype)
    for _ in range(2):  # the warning comes once, however many calls
        out = mod(x, need_weights=False)[0]
    expected = ref.float()(x.float(), x.float(), x.float(), need_weights=False)[0]
    assert_close(out.float(), expected, dtype, "out", f"{dtype} output")
print(torch.ops.mhsa._backend_info())
"""


def engine_run(**env_changes: str):
    """Runs _INFO_SCRIPT in a fresh process without engine overrides, plus `env_changes`."""
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k not in ENGINE_OVERRIDES}
    env.update(env_changes)
    result = run_python_in_subprocess(_INFO_SCRIPT, [str(HERE)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip().splitlines()[-1], result.stderr


def gemm_field(info: str) -> str:
    match = re.search(r"gemm=(\S+)", info)
    assert match, info
    return match.group(1)


def is_x86() -> bool:
    return platform.machine() in ("x86_64", "AMD64", "i686", "i386")


def has_avx512_core(flags: Set[str]) -> bool:
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags


def test_engine_matches_the_cpu_flags():
    """AVX2+FMA -> the float32 micro-kernel; AVX512-BF16 or AMX-BF16 -> the bfloat16 one, in the
    AMX layout where the CPU has AMX; AMX-FP16 -> the float16 one in the AMX layout;
    AVX512-FP16 alone -> the float16 one, or the probe's reason in probe-notes. No probe a flag
    promises may fail."""
    model, flags = cpu_model_and_flags()
    info, stderr = engine_run()
    gemm = gemm_field(info)
    context = f"{model}: {info}"
    assert "probe-failures" not in info, context
    assert "mhsa: a micro-kernel" not in stderr, stderr[-2000:]
    if not is_x86():
        assert gemm.startswith("portable-loops"), context
        return
    if {"avx2", "fma"} <= flags:
        assert gemm.startswith("onednn-brgemm(float32"), context
    else:
        assert gemm.startswith("portable-loops") and "no AVX2+FMA" in info, context
    if has_avx512_core(flags) and ({"avx512_bf16", "amx_bf16"} & flags):
        layout = "amx" if "amx_bf16" in flags else "vnni"
        assert f",bfloat16-{layout}" in gemm, context
    if "avx512_fp16" in flags:
        if "amx_fp16" in flags:
            assert ",float16-amx" in gemm, context
        else:
            assert ",float16-" in gemm or "float16:" in info, context
    else:
        assert ";float16-as-float32" in gemm or gemm.startswith("portable-loops"), context


def require_micro_kernels(flags: Set[str], bfloat16: bool) -> None:
    if not is_x86() or not {"avx2", "fma"} <= flags:
        pytest.skip("no micro-kernels on this CPU: the portable loops are its engine")
    if bfloat16 and not (has_avx512_core(flags) and ({"avx512_bf16", "amx_bf16"} & flags)):
        pytest.skip("no bfloat16 micro-kernel on this CPU to lose")


def test_failed_bfloat16_probe_costs_only_bfloat16_its_micro_kernel():
    """Every bfloat16 layout's probe fails: bfloat16 tiles move to the float32 micro-kernel,
    float32 keeps it (it used to drop to the loops too), both still match nn, one warning names
    the dtype, the layout, the shape and the exception text, and _backend_info reports it."""
    flags = cpu_model_and_flags()[1]
    require_micro_kernels(flags, bfloat16=True)
    info, stderr = engine_run(MHSA_TEST_FAIL_PROBE="bfloat16-vnni,bfloat16-amx,bfloat16-plain")
    gemm = gemm_field(info)
    assert gemm.startswith("onednn-brgemm(float32;bfloat16-as-float32"), info
    assert "probe-failures=[bfloat16: " in info, info
    assert "failure injected by MHSA_TEST_FAIL_PROBE" in info, info
    assert stderr.count("mhsa: a micro-kernel this CPU's flags promise failed") == 1, stderr
    warning = stderr[stderr.index("mhsa: a micro-kernel") :]
    assert re.search(r"bfloat16: \w+ probe failed at M=\d+ N=\d+ K=\d+", warning), warning
    assert "failure injected by MHSA_TEST_FAIL_PROBE" in warning, warning


def test_failed_layout_probe_tries_the_next_layout():
    """The preferred layout's probe fails (the matrix unit's where the CPU has one, else VNNI
    pairs): the next layout that works is used, and the failure is still reported."""
    flags = cpu_model_and_flags()[1]
    require_micro_kernels(flags, bfloat16=True)
    if "amx_bf16" not in flags:
        # Only VNNI pairs work for bfloat16 without AMX: failing VNNI leaves no layout.
        info, _ = engine_run(MHSA_TEST_FAIL_PROBE="bfloat16-vnni")
        assert "bfloat16-as-float32" in gemm_field(info), info
        assert "vnni probe failed" in info and "plain probe" in info, info
        return
    info, _ = engine_run(MHSA_TEST_FAIL_PROBE="bfloat16-amx")
    assert ",bfloat16-vnni" in gemm_field(info) or "bfloat16-as-float32" in info, info
    assert "amx probe failed" in info, info


def test_failed_float32_probe_leaves_the_loops_and_says_so():
    """float32's probe fails: its tiles (and bfloat16's without its own kernel) run on the
    portable loops, the results still match nn, and the reason is given, not silent."""
    flags = cpu_model_and_flags()[1]
    require_micro_kernels(flags, bfloat16=False)
    info, stderr = engine_run(
        MHSA_TEST_FAIL_PROBE="float32,bfloat16-vnni,bfloat16-amx,bfloat16-plain"
    )
    assert gemm_field(info).startswith("portable-loops"), info
    assert "(the float32 probe failed)" in info, info
    assert "probe-failures=[float32: float32 probe failed at M=" in info, info
    assert stderr.count("mhsa: a micro-kernel this CPU's flags promise failed") == 1, stderr


def test_portable_loops_say_why():
    """The loops asked for by the environment are reported with the reason."""
    info, stderr = engine_run(MHSA_PORTABLE_GEMM="1")
    assert gemm_field(info).startswith("portable-loops"), info
    if is_x86():
        assert "(MHSA_PORTABLE_GEMM=1)" in info, info
    assert "mhsa: a micro-kernel" not in stderr


def test_float32_scores_run_on_the_tile_gemm():
    """float32 scores and dP run on the tile GEMM on every CPU: the portable loops sum each
    element as one fused chain by construction, the micro-kernel where its chain probe passes
    (random values, bitwise), which no CPU's micro-kernel may fail."""
    info, stderr = engine_run()
    assert "float32-scores=tile-gemm" in info, info
    assert "probe-failures" not in info, info


_HASH_SCRIPT = r"""
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
import mhsa
torch.manual_seed(0)
digest = hashlib.sha256()
# Ordinary scores, and saturated ones (one-hot softmax rows, whose dS must be exactly zero),
# across query and key blocks, with a causal mask, key padding and returned weights.
for L, gain, causal, need_weights in ((70, 1.0, False, True), (300, 1.0, True, False),
                                      (140, 60.0, False, False)):
    ref = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    mod = mhsa.MultiheadSelfAttention.from_torch(ref)
    x = (gain * torch.randn(2, L, 64)).requires_grad_()
    mask = torch.ones(L, L, dtype=torch.bool).triu(1) if causal else None
    padding = torch.zeros(2, L, dtype=torch.bool)
    padding[1, L - 5 :] = True
    out, weights = mod(x, key_padding_mask=padding, attn_mask=mask, need_weights=need_weights)
    (out.square().sum() + (weights.sum() if weights is not None else 0)).backward()
    for t in (out, weights, x.grad, *(p.grad for p in mod.parameters())):
        if t is not None:
            digest.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
print(torch.ops.mhsa._backend_info())
print(digest.hexdigest())
"""


def hash_run(**env_changes: str):
    """Runs _HASH_SCRIPT in a fresh process: (backend info, digest of outputs and gradients)."""
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k not in ENGINE_OVERRIDES}
    env.update(env_changes)
    result = run_python_in_subprocess(_HASH_SCRIPT, [str(HERE)], env)
    assert result.returncode == 0, result.stderr[-4000:]
    info, digest = result.stdout.strip().splitlines()[-2:]
    return info, digest, result.stderr


def test_float32_scores_on_the_micro_kernel_are_the_dot_chains_bits():
    """The float32 chain probe fails on purpose: scores and dP go back to dot_tile's chain, the
    warning and _backend_info say so, and outputs, weights and every gradient are bitwise those
    of the micro-kernel run, saturated rows included: scores on the micro-kernel are exact by
    construction, not approximately equal."""
    flags = cpu_model_and_flags()[1]
    require_micro_kernels(flags, bfloat16=False)
    info, digest, stderr = hash_run()
    assert "float32-scores=tile-gemm" in info, info
    chain_info, chain_digest, chain_stderr = hash_run(MHSA_TEST_FAIL_PROBE="float32-chain")
    assert "float32-scores=dot-chain" in chain_info, chain_info
    assert "probe-failures=[float32 scores: float32 chain probe failed at M=" in chain_info
    assert chain_stderr.count("mhsa: a micro-kernel this CPU's flags promise failed") == 1
    assert "mhsa: a micro-kernel" not in stderr, stderr[-2000:]
    assert digest == chain_digest


@pytest.mark.parametrize("S", [40, 600])
def test_few_row_calls_give_the_full_calls_bits(S: int) -> None:
    """A call of a few query rows (generation's one-token calls) runs its float32 products on
    plain vector loops instead of micro-kernels JIT-built for every new cache length: the same
    fused chains, so its rows are bitwise those the full call computes on the micro-kernel."""
    import torch

    import mhsa

    assert "float32-scores=tile-gemm" in torch.ops.mhsa._backend_info()
    torch.manual_seed(0)
    q = torch.randn(1, 8, S, 64)
    k, v = torch.randn(1, 2, S, 64), torch.randn(1, 2, S, 64)
    full = mhsa.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    for rows in (1, 3, 8):
        # The last rows of the causal mask (bottom-right aligned): row r sees keys <= S - rows + r.
        sees = torch.arange(S)[None, :] <= torch.arange(S - rows, S)[:, None]
        tail = mhsa.scaled_dot_product_attention(q[:, :, -rows:], k, v, sees, enable_gqa=True)
        assert torch.equal(tail, full[:, :, -rows:]), rows
