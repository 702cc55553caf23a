#!/usr/bin/env bash
# Checks that the tree is formatted as scripts/format would leave it, changing nothing: fails
# (exit 1) on any clang-format difference in any C++ file, any `ruff format` difference or any
# `ruff check` finding in any Python file (every tracked or new, non-ignored one), and any csrc/
# or include/ file over 500 lines or comment block over 6 lines (scripts/check_comments.py).
# Prints the differences; `scripts/format` fixes the formatting.
#
#   scripts/check_format.sh            the whole tree
#   scripts/check_format.sh FILE...    only these files
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$REPO/scripts/format_files.sh"
set +e

command -v clang-format >/dev/null || ensure_apt_packages || exit 1
# RUFF=/path/to/ruff uses that ruff instead of .venv's (set up here if needed).
if [ -z "${RUFF:-}" ]; then
  ensure_venv || exit 1
  RUFF="$VENV/bin/ruff"
fi
# Given files are taken relative to the caller's directory.
files=()
for file in "$@"; do files+=("$(realpath "$file")"); done
cd "$REPO"
mapfile -t cpp < <(format_cpp_files "${files[@]}")
mapfile -t py < <(format_python_files "${files[@]}")

failed=()
if [ "${#cpp[@]}" -gt 0 ]; then
  log "clang-format on ${#cpp[@]} C++ file(s)"
  unformatted=()
  for file in "${cpp[@]}"; do
    if ! clang-format --style=file "$file" | diff -u --label "$file" --label "$file (formatted)" \
        "$file" -; then
      unformatted+=("$file")
    fi
  done
  [ "${#unformatted[@]}" -gt 0 ] && failed+=("clang-format: ${unformatted[*]}")
  # The size rules of csrc/ and include/: no file over 500 lines, no comment block over 6.
  log "file and comment-block sizes (scripts/check_comments.py)"
  python="$PY"
  [ -x "$python" ] || python=python3
  "$python" "$REPO/scripts/check_comments.py" "${cpp[@]}" || failed+=("check_comments.py")
fi
if [ "${#py[@]}" -gt 0 ]; then
  log "ruff format --check and ruff check on ${#py[@]} Python file(s)"
  "$RUFF" format --check --diff "${py[@]}" || failed+=("ruff format")
  "$RUFF" check "${py[@]}" || failed+=("ruff check")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  log "not formatted (${failed[*]}); run scripts/format"
  exit 1
fi
log "formatting ok"
