#!/usr/bin/env bash
# Shared set-up for scripts/test, scripts/demo and scripts/bench; source it, don't run it.
# Idempotent: installs only what is missing on a fresh Debian machine:
#   1. apt packages (compiler, CMake, GoogleTest, ccache; chromium, which the tests use to
#      render the demo's report.html; clang-format, for scripts/format),
#   2. .venv at the repo root with the pinned Python dependencies (requirements.txt, and
#      requirements-transformers.txt for the tests of the optional transformers integration),
#   3. the CMake build in build/ (libmhsa.so, copied into python/mhsa/),
#   4. a .pth file so `.venv/bin/python -c "import mhsa"` works.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
BUILD_DIR="${MHSA_BUILD_DIR:-$REPO/build}"
JOBS="${MHSA_JOBS:-$(nproc)}"

log() { printf '\033[1m[mhsa]\033[0m %s\n' "$*" >&2; }

ensure_apt_packages() {
  local missing=()
  local pkg
  for pkg in g++ cmake make libgtest-dev ccache chromium clang-format; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local stamp="$VENV/.requirements.sha"
  local requirements=("$REPO/requirements.txt" "$REPO/requirements-transformers.txt")
  local want
  want="$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    # python3 on PATH must be 3.11: the local torch 2.13.0 CPU wheel is built for it.
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing pinned Python dependencies"
    # One resolution for both files: torch==2.13.0 stays pinned while pip resolves
    # transformers' dependencies.
    "$PY" -m pip install -q -r "${requirements[0]}" -r "${requirements[1]}"
    echo "$want" >"$stamp"
  fi
  local site
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$REPO/python" >"$site/mhsa.pth"
}

ensure_build() {
  local prefix
  prefix="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    log "configuring CMake in $BUILD_DIR"
    cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_INSTALL_PREFIX="$BUILD_DIR/install" "${launcher[@]}" "$@" >/dev/null
  fi
  log "building (cmake --build $BUILD_DIR -j$JOBS)"
  if ! cmake --build "$BUILD_DIR" -j"$JOBS" >"$BUILD_DIR/build.log" 2>&1; then
    grep -E 'error|Error' "$BUILD_DIR/build.log" | head -40 >&2 || true
    tail -20 "$BUILD_DIR/build.log" >&2
    log "build failed; full log in $BUILD_DIR/build.log"
    return 1
  fi
}

mhsa_setup() {
  ensure_apt_packages
  ensure_venv
  ensure_build "$@"
}
