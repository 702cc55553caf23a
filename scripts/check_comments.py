"""Checks the size rules of the C++ tree: no file under csrc/ or include/ over 500 lines, no
comment block over 6 lines (a comment says why in a few lines; measurements and history go to
docs/performance-notes.md or the commit message).

A comment block is a run of consecutive `//` lines (the first may end a line of code) or one
/* ... */ comment, counted in lines. Prints each finding as path:line and exits 1 if any.

    python scripts/check_comments.py            every C++ file under csrc/ and include/
    python scripts/check_comments.py FILE...    only these (others than csrc/, include/ skipped)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("csrc", "include")
SUFFIXES = (".h", ".hpp", ".cc", ".cpp")
MAX_FILE_LINES = 500
MAX_COMMENT_LINES = 6


def comment_spans(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, last line, kind) of every comment, 0-based; kind is "line" for a `//`
    comment (with "own" where nothing but space precedes it) or "block" for /* ... */."""
    spans = []
    in_block = None  # first line of an open /* comment
    for number, line in enumerate(lines):
        i, quote, code_before = 0, None, False
        while i < len(line):
            if in_block is not None:
                end = line.find("*/", i)
                if end < 0:
                    break
                spans.append((in_block, number, "block"))
                in_block, i = None, end + 2
                continue
            c = line[i]
            if quote:
                if c == "\\":
                    i += 2
                    continue
                if c == quote:
                    quote = None
            elif c in "\"'":
                quote = c
            elif line.startswith("//", i):
                spans.append((number, number, "own" if not code_before else "line"))
                break
            elif line.startswith("/*", i):
                in_block, i = number, i + 2
                continue
            if not c.isspace():
                code_before = True
            i += 1
    return spans


def comment_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(first line, line count) of every comment block, 0-based."""
    blocks = []
    run_start = run_end = None
    for first, last, kind in comment_spans(lines):
        if kind == "own" and run_end is not None and first == run_end + 1:
            run_end = last
            continue
        if run_start is not None:
            blocks.append((run_start, run_end - run_start + 1))
            run_start = run_end = None
        if kind == "block":
            blocks.append((first, last - first + 1))
        else:
            run_start, run_end = first, last
    if run_start is not None:
        blocks.append((run_start, run_end - run_start + 1))
    return blocks


def check_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(REPO).as_posix()
    findings = []
    if len(lines) > MAX_FILE_LINES:
        findings.append(f"{name}: {len(lines)} lines (at most {MAX_FILE_LINES}); split the file")
    for first, count in comment_blocks(lines):
        if count > MAX_COMMENT_LINES:
            findings.append(
                f"{name}:{first + 1}: comment block of {count} lines (at most {MAX_COMMENT_LINES})"
            )
    return findings


def files_to_check(arguments: list[str]) -> list[Path]:
    if not arguments:
        return sorted(p for f in FOLDERS for p in (REPO / f).rglob("*") if p.suffix in SUFFIXES)
    chosen = []
    for argument in arguments:
        path = Path(argument).resolve()
        relative = path.relative_to(REPO).parts if path.is_relative_to(REPO) else ()
        if relative and relative[0] in FOLDERS and path.suffix in SUFFIXES and path.is_file():
            chosen.append(path)
    return chosen


def main(arguments: list[str]) -> int:
    findings = [f for path in files_to_check(arguments) for f in check_file(path)]
    for finding in findings:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
