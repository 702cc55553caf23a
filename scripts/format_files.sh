#!/usr/bin/env bash
# The files scripts/format and scripts/check_format.sh work on; source it, don't run it.
# Both functions print one path per line, relative to the repository root (the current
# directory): the given paths of the right kind, or with no arguments every tracked or new,
# non-ignored file of the right kind under the formatted folders.

# C++ sources and headers under csrc/, include/, tests/cpp/ and examples/.
format_cpp_files() {
  local pattern='^(csrc|include|tests/cpp|examples)/.*\.(h|hpp|cc|cpp)$'
  if [ "$#" -gt 0 ]; then
    printf '%s\n' "$@" | grep -E '\.(h|hpp|cc|cpp)$' || true
  else
    git ls-files --cached --others --exclude-standard | grep -E "$pattern" || true
  fi
}

# Python files under python/, tests/ and scripts/.
format_python_files() {
  local pattern='^(python|tests|scripts)/.*\.py$'
  if [ "$#" -gt 0 ]; then
    printf '%s\n' "$@" | grep -E '\.py$' || true
  else
    git ls-files --cached --others --exclude-standard | grep -E "$pattern" || true
  fi
}
