"""Parity of mhsa with torch.nn.MultiheadAttention: output, weights and every gradient."""

from __future__ import annotations

import pytest
import torch

from mhsa_testutils import PARITY_CASES, Case, assert_parity, run_case

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PARITY_CASES, ids=Case.id)
def test_parity_with_nn_multihead_attention(case: Case, dtype: torch.dtype):
    expected, actual = run_case(case, dtype)
    assert_parity(expected, actual, dtype)
