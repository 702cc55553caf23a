"""Randomized parity with nn.MultiheadAttention: hypothesis draws shapes, flags and masks
beyond the fixed grid of test_parity.py. Derandomized, so CI runs the same examples every time."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhsa_testutils import Case, assert_parity, run_case


@st.composite
def cases(draw):
    H = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    D = draw(st.sampled_from([1, 2, 4, 8]))
    L = draw(
        st.one_of(
            st.integers(1, 9),
            st.integers(1, 9),
            st.integers(60, 70),
            st.integers(125, 132),
            st.integers(250, 260),
        )
    )
    N = draw(st.one_of(st.none(), st.integers(1, 3)))
    E = H * D
    if L > 100:  # keep the long cases cheap
        E = min(E, 16) if 16 % H == 0 else E
        N = None if N is None else 1
    return Case(
        L=L,
        N=N,
        E=E,
        H=H,
        batch_first=draw(st.booleans()),
        bias=True,  # bias=False: see the test_parity.py grid
        attn_mask=draw(st.sampled_from([None, "bool2d", "float2d", "bool3d", "float3d"])),
        kpm=draw(st.sampled_from([None, "bool", "float"])),
        is_causal=draw(st.booleans()),
        need_weights=draw(st.booleans()),
        average=draw(st.booleans()),
        seed=draw(st.integers(0, 10_000)),
    )


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_random_parity_with_nn_multihead_attention(case, dtype):
    expected, actual = run_case(case, dtype)
    assert_parity(expected, actual, dtype)
