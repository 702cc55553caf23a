"""The CPU model and the instruction-set flags that decide which mhsa kernels run, for test and
benchmark reports (the project's machines differ: AVX2-only AMD, AVX-512/AMX Intel)."""

from __future__ import annotations

from typing import List, Set, Tuple

KERNEL_FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16"]


def cpu_model_and_flags() -> Tuple[str, Set[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo ("unknown CPU", {} elsewhere)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_description() -> str:
    """E.g. "AMD EPYC (avx2, fma, avx512f, avx512_bf16; no avx512_fp16, amx_bf16, amx_fp16)"."""
    model, flags = cpu_model_and_flags()
    have: List[str] = [f for f in KERNEL_FLAGS if f in flags]
    lacks: List[str] = [f for f in KERNEL_FLAGS if f not in flags]
    return f"{model} ({', '.join(have) or 'none'}; no {', '.join(lacks) or '-'})"
