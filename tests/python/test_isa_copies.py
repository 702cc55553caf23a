"""The per-instruction-set copies of the kernels stay apart at link time.

Every file of CMake's MHSA_ISA_SOURCES is compiled once per instruction set (baseline, AVX2,
AVX-512), each copy inside its own namespace mhsa::cpu::isa_<name>. An external symbol of such an
object outside that namespace (an out-of-line std::vector member, c10's inline Half conversion,
an inline member of a shared header) is one symbol for all copies: the linker keeps one of them,
possibly the AVX-512 one, and an AVX2-only CPU would then crash on an illegal instruction. This
reads the objects' symbol tables from the build that scripts/test made.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kernel_objects() -> dict:
    build = Path(os.environ.get("BUILD_DIR", REPO / "build"))
    found = {}
    for isa in ("default", "avx2", "avx512"):
        folder = build / "CMakeFiles" / f"mhsa_kernels_{isa}.dir"
        objects = sorted(folder.rglob("*.o")) if folder.is_dir() else []
        if objects:
            found[isa] = objects
    return found


def test_kernel_copies_export_only_their_own_namespace():
    if shutil.which("nm") is None:
        pytest.fail("nm (binutils) is needed to read the kernel objects' symbols")
    objects = kernel_objects()
    if not objects:
        if "BUILD_DIR" in os.environ:
            pytest.fail(f"no kernel objects under {os.environ['BUILD_DIR']}/CMakeFiles")
        pytest.skip("no CMake build tree here (scripts/test provides one)")
    assert "default" in objects, objects.keys()
    strays = []
    for isa, files in objects.items():
        for obj in files:
            out = subprocess.run(
                ["nm", "-C", "--defined-only", "--extern-only", str(obj)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for line in out.splitlines():
                name = line.split(maxsplit=2)[-1]
                if f"mhsa::cpu::isa_{isa}::" in name or name.startswith("DW.ref."):
                    continue
                strays.append(f"{obj.name} ({isa}): {name}")
    assert not strays, "symbols shared between instruction-set copies:\n" + "\n".join(strays)
