"""Prints the largest errors of mhsa against nn.MultiheadAttention over the parity grid of
test_parity.py (output, weights, each gradient), per dtype.

    python tests/python/parity_errors.py

"abs" is the largest absolute error; "rel" divides it by max(1, max |reference|) of the same
tensor, the quantity the tests' scaled atol bounds. Cases that raise are listed, not measured.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mhsa_testutils import PARITY_CASES, max_errors, run_case  # noqa: E402


def main() -> None:
    for dtype in (torch.float64, torch.float32):
        worst = {}
        failures = []
        for case in PARITY_CASES:
            try:
                expected, actual = run_case(case, dtype)
            except Exception as error:  # noqa: BLE001  (reported, not hidden)
                failures.append((case.id(), str(error).splitlines()[0]))
                continue
            for name, (err, rel) in max_errors(expected, actual).items():
                cur = worst.get(name, (0.0, 0.0, "", ""))
                worst[name] = (
                    max(cur[0], err),
                    max(cur[1], rel),
                    case.id() if err >= cur[0] else cur[2],
                    case.id() if rel >= cur[1] else cur[3],
                )
        print(
            f"== {dtype}: {len(PARITY_CASES) - len(failures)} of {len(PARITY_CASES)} cases measured"
        )
        for name, (err, rel, case_abs, case_rel) in worst.items():
            print(f"  {name:24s} abs {err:.3e} ({case_abs})\n  {'':24s} rel {rel:.3e} ({case_rel})")
        for case_id, message in failures:
            print(f"  FAILED {case_id}: {message}")


if __name__ == "__main__":
    main()
