#!/usr/bin/env bash
# Builds the C++ examples (examples/) against the *installed* mhsa CMake package, the way a
# user's project would consume it, and runs them:
#   consumer       functional op + module, forward and backward
#   train          trains a tiny mhsa model with torch::optim::Adam; fails if the loss does not fall
#   load_scripted  runs the TorchScript model saved from Python (tests/python/make_scripted_model.py)
# Called by scripts/test; also runs standalone (sets up the build first). Exits non-zero on
# any failure.
set -euo pipefail

if [ -z "${BUILD_DIR:-}" ] || [ -z "${PY:-}" ] || [ -z "${REPO:-}" ]; then
  # shellcheck source=scripts/setup.sh
  source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
  mhsa_setup
fi
log() { printf '\033[1m[mhsa]\033[0m %s\n' "$*" >&2; }

INSTALL_DIR="$BUILD_DIR/install"
EXAMPLES_BUILD="$BUILD_DIR/examples"
TORCH_PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

log "installing mhsa into $INSTALL_DIR"
cmake --install "$BUILD_DIR" --prefix "$INSTALL_DIR" >/dev/null

log "building examples/ in $EXAMPLES_BUILD against the installed package"
# -Umhsa_DIR: always look the package up again under CMAKE_PREFIX_PATH.
cmake -S "$REPO/examples" -B "$EXAMPLES_BUILD" -Umhsa_DIR -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$INSTALL_DIR;$TORCH_PREFIX" "${launcher[@]}" >"$EXAMPLES_BUILD.configure.log" 2>&1 \
  || { cat "$EXAMPLES_BUILD.configure.log" >&2; exit 1; }
grep -E '^-- mhsa ' "$EXAMPLES_BUILD.configure.log" >&2 || true
cmake --build "$EXAMPLES_BUILD" -j"${MHSA_JOBS:-$(nproc)}" >"$EXAMPLES_BUILD.build.log" 2>&1 \
  || { tail -40 "$EXAMPLES_BUILD.build.log" >&2; exit 1; }

ARTIFACTS="${MHSA_TEST_ARTIFACTS:-$BUILD_DIR/test-artifacts}"
if [ ! -f "$ARTIFACTS/scripted_mhsa.pt" ]; then
  log "writing the scripted model into $ARTIFACTS"
  mkdir -p "$ARTIFACTS"
  "$PY" "$REPO/tests/python/make_scripted_model.py" "$ARTIFACTS"
fi

log "examples/consumer"
"$EXAMPLES_BUILD/consumer"
log "examples/train"
"$EXAMPLES_BUILD/train"
log "examples/load_scripted $ARTIFACTS/scripted_mhsa.pt"
"$EXAMPLES_BUILD/load_scripted" "$ARTIFACTS/scripted_mhsa.pt"
if [ -f "$ARTIFACTS/scripted_mhsa_io.pt" ]; then
  log "examples/load_scripted $ARTIFACTS/scripted_mhsa.pt $ARTIFACTS/scripted_mhsa_io.pt"
  "$EXAMPLES_BUILD/load_scripted" "$ARTIFACTS/scripted_mhsa.pt" "$ARTIFACTS/scripted_mhsa_io.pt"
fi
log "examples: ok"
