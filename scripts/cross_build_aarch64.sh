#!/usr/bin/env bash
# Cross-builds libmhsa.so for aarch64 (Graviton, Ampere, Apple silicon under Linux) on an x86-64
# Debian machine, to check that the portable build compiles and links there:
#   1. Debian's aarch64 cross compiler (g++-aarch64-linux-gnu),
#   2. the aarch64 torch==2.13.0 wheel from PyPI (pip download; ~430 MB) for its headers, CMake
#      package and libtorch_cpu.so,
#   3. CMake with a toolchain file and -DMHSA_PORTABLE_GEMM=ON (PyTorch's oneDNN brgemm
#      micro-kernels exist on x86-64 only, and without the option configuring for another
#      architecture stops with an error that says so), tests off (GoogleTest's x86 package
#      cannot link for aarch64).
# PyPI's aarch64 torch 2.13 wheel is a CUDA build: its CMake package insists on finding CUDA,
# which a CPU-only cross build has no use for; the copy extracted here is patched to skip that
# block and to stub the torch::cudart target (only the extracted copy, nothing installed).
# Running the result needs an aarch64 machine (or qemu-user with an aarch64 Python and torch).
#
#   scripts/cross_build_aarch64.sh [work-dir]      (default: build-aarch64/, git-ignored)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$REPO/build-aarch64}"
PY="${PY:-$REPO/.venv/bin/python}"
mkdir -p "$WORK"
if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
fi
wheel=$(ls "$WORK"/torch-2.13.0-*aarch64.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 torch==2.13.0 -d "$WORK" >/dev/null
  wheel=$(ls "$WORK"/torch-2.13.0-*aarch64.whl | head -1)
fi
TORCH="$WORK/torch-aarch64"
if [ ! -d "$TORCH/torch/share/cmake" ]; then
  "$PY" - "$wheel" "$TORCH" <<'PYEOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(("torch/include/", "torch/share/", "torch/lib/")):
            z.extract(name, out)
config = f"{out}/torch/share/cmake/Caffe2/Caffe2Config.cmake"
text = open(config).read()
marker = "if(1)\n  # The file public/cuda.cmake exclusively uses CAFFE2_USE_*."
assert marker in text, "unexpected Caffe2Config.cmake layout"
open(config, "w").write(text.replace(marker, "if(0)  # CPU-only cross build\n  # The file public/cuda.cmake exclusively uses CAFFE2_USE_*."))
PYEOF
fi
cat >"$WORK/toolchain.cmake" <<'TCEOF'
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
TCEOF
echo 'add_library(torch::cudart INTERFACE IMPORTED)' >"$WORK/cuda_stubs.cmake"
cmake -S "$REPO" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$WORK/toolchain.cmake" -DCMAKE_PROJECT_INCLUDE="$WORK/cuda_stubs.cmake" \
  -DCMAKE_PREFIX_PATH="$TORCH/torch/share/cmake" \
  -DMHSA_BUILD_TESTS=OFF -DMHSA_COPY_TO_PYTHON=OFF -DMHSA_PORTABLE_GEMM=ON >"$WORK/configure.log"
cmake --build "$WORK/build" -j"${MHSA_JOBS:-$(nproc)}" >"$WORK/build.log"
file -L "$WORK/build/libmhsa.so"
