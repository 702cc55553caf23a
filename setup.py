"""Build step of the mhsa Python package (metadata: pyproject.toml).

CMake builds libmhsa.so against the torch of the build environment (-DMHSA_BUILD_TESTS=OFF
-DMHSA_COPY_TO_PYTHON=OFF, CMAKE_PREFIX_PATH from torch.utils.cmake_prefix_path), and the library
and its libmhsa.torch_version stamp are copied into the package, where mhsa/_library.py finds
them. The wheel requires exactly the torch version it was built against, and is tagged
py3-none-<platform>: libmhsa.so is a LibTorch library that never touches CPython's ABI, so any
Python 3 that can install that torch can use it.

    pip install --no-build-isolation .
    pip wheel --no-build-isolation . -w dist

Environment: MAX_JOBS (parallel compile jobs, default: all cores), MHSA_CMAKE_ARGS (extra
arguments for the CMake configure step).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
LIBRARY = "libmhsa.so"
STAMP = "libmhsa.torch_version"


def _torch():
    try:
        import torch
    except ImportError as error:
        raise SystemExit(
            "mhsa: building needs torch in the build environment (the library is compiled against "
            "it): install the torch you will run with, then build with pip's --no-build-isolation"
        ) from error
    return torch


class CMakeLibrary(Extension):
    """libmhsa.so, built by CMake; not a Python extension module (it has no PyInit)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class BuildWithCMake(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # mhsa/libmhsa.so, without the CPython suffix of an extension module: the library is
        # loaded with torch.ops.load_library, and C++ programs can link the same file.
        # (setuptools asks with the full dotted name, get_ext_fullpath with the last part.)
        if fullname == "mhsa.libmhsa":
            return os.path.join("mhsa", LIBRARY)
        if fullname == "libmhsa":
            return LIBRARY
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeLibrary):
            return super().build_extension(ext)
        torch = _torch()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            "-DMHSA_BUILD_TESTS=OFF",
            "-DMHSA_COPY_TO_PYTHON=OFF",
            # Installed as site-packages/mhsa/libmhsa.so next to site-packages/torch/: find
            # libtorch there, and only there (no build-machine paths in the wheel).
            "-DMHSA_TORCH_RPATH=$ORIGIN/../torch/lib",
            "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        ]
        if shutil.which("ccache"):
            configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
        configure += shlex.split(os.environ.get("MHSA_CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "mhsa", "-j", jobs], check=True
        )

        destination = Path(self.get_ext_fullpath(ext.name))
        destination.parent.mkdir(parents=True, exist_ok=True)
        # The build tree has libmhsa.so -> libmhsa.so.0 -> libmhsa.so.0.2.0; copy the file itself.
        shutil.copyfile((build_dir / LIBRARY).resolve(), destination)
        os.chmod(destination, 0o755)
        shutil.copyfile(build_dir / STAMP, destination.parent / STAMP)


class PlatformWheel(bdist_wheel):
    """Tags the wheel py3-none-<platform> instead of cp3XY-cp3XY-<platform>.

    The wheel holds a native library (so it is platform-specific) but no CPython extension
    module: nothing in it depends on the Python version or its ABI. What it does depend on,
    the exact torch version, is a requirement of the wheel (``install_requires``).
    """

    def get_tag(self) -> tuple:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


def _torch_requirement() -> list:
    version = _torch().__version__.split("+")[0]
    return [f"torch=={version}"]


setup(
    ext_modules=[CMakeLibrary("mhsa.libmhsa")],
    cmdclass={"build_ext": BuildWithCMake, "bdist_wheel": PlatformWheel},
    install_requires=_torch_requirement(),
    # setuptools' build/ would land inside the CMake build tree of scripts/setup.sh.
    options={"build": {"build_base": "build-pip"}},
    zip_safe=False,
)
