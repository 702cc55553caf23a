"""Locating and loading libmhsa.so, the one compiled library behind every front door."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def library_path() -> Path:
    """Path of libmhsa.so: $MHSA_LIBRARY if set, else the copy inside this package.

    The package always loads the library next to its own ``__init__.py``: in a source checkout
    (``python/mhsa/``, on the path through the ``.pth`` file of scripts/setup.sh) that is the copy
    CMake puts there after each build; in an installed package (``pip install``) it is the copy
    the wheel carries.
    """
    override = os.environ.get("MHSA_LIBRARY")
    return Path(override) if override else _PACKAGE_DIR / "libmhsa.so"


def _in_source_checkout() -> bool:
    return (_PACKAGE_DIR.parent.parent / "CMakeLists.txt").is_file()


def built_torch_version(lib: Path) -> str | None:
    """The torch version the library was compiled against, recorded beside it by CMake."""
    stamp = lib.with_suffix(".torch_version")
    return stamp.read_text().strip() if stamp.exists() else None


def load() -> Path:
    """Loads libmhsa.so into torch (registering the mhsa ops) and returns its path.

    The regular LibTorch ABI is version-locked, so a library built for another torch is refused
    with an ImportError that names both versions.
    """
    lib = library_path()
    running = torch.__version__.split("+")[0]
    built = built_torch_version(lib)
    if not lib.exists():
        how = (
            "build it first (scripts/test or scripts/demo build it, or cmake --build build)"
            if _in_source_checkout()
            else "reinstall mhsa (pip install --no-build-isolation <mhsa source>)"
        )
        raise ImportError(f"mhsa: {lib} not found; {how} against torch {running}")
    if built is not None and built != running:
        raise ImportError(
            f"mhsa: {lib} was built for torch {built} but torch {running} is running; the "
            f"LibTorch ABI is version-locked, rebuild mhsa against torch {running}"
        )
    try:
        torch.ops.load_library(str(lib))
    except OSError as error:
        raise ImportError(
            f"mhsa: loading {lib} failed (built for torch {built or 'unknown'}, running "
            f"torch {running}): {error}"
        ) from error
    return lib
