#!/usr/bin/env bash
# The files scripts/format and scripts/check_format.sh work on; source it, don't run it.
# Both functions print one path per line, relative to the repository root (the current
# directory): the given paths of the right kind, or with no arguments every tracked or new,
# non-ignored file of the right kind in the repository.

# Every tracked or new, non-ignored file that exists (a tracked file deleted in the work tree is
# left out).
tracked_files() {
  local file
  git ls-files --cached --others --exclude-standard | while IFS= read -r file; do
    [ -f "$file" ] && printf '%s\n' "$file"
  done
}

# C++ sources and headers, wherever they are.
format_cpp_files() {
  local pattern='\.(h|hpp|cc|cpp)$'
  if [ "$#" -gt 0 ]; then
    printf '%s\n' "$@" | grep -E '\.(h|hpp|cc|cpp)$' || true
  else
    tracked_files | grep -E "$pattern" || true
  fi
}

# Python files, wherever they are.
format_python_files() {
  local pattern='\.py$'
  if [ "$#" -gt 0 ]; then
    printf '%s\n' "$@" | grep -E '\.py$' || true
  else
    tracked_files | grep -E "$pattern" || true
  fi
}
