"""row_count_bucket: coarse 1-2-5 buckets for released row counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.datasets import row_count_bucket

counts = st.one_of(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10**30),
    # Right at and around the boundaries, where off-by-one errors live.
    st.builds(
        lambda m, k, d: max(0, m * 10**k + d),
        st.sampled_from([1, 2, 5]),
        st.integers(min_value=1, max_value=25),
        st.integers(min_value=-1, max_value=1),
    ),
)


def split(value: int) -> tuple[int, int]:
    """value == mantissa * 10**exponent with the mantissa not divisible by 10."""
    exponent = 0
    while value % 10 == 0:
        value //= 10
        exponent += 1
    return value, exponent


def in_series(value: int) -> bool:
    """True for 10, 20, 50, 100, 200, 500, ... (1, 2 or 5 times 10**k, k >= 1)."""
    if value < 10:
        return False
    mantissa, _ = split(value)
    return mantissa in (1, 2, 5)


def next_in_series(value: int) -> int:
    mantissa, exponent = split(value)
    return {1: 2, 2: 5, 5: 10}[mantissa] * int(10**exponent)


@pytest.mark.parametrize(
    ("n", "bucket"),
    [
        (0, (0, 10)),
        (1, (0, 10)),
        (9, (0, 10)),
        (10, (10, 20)),
        (19, (10, 20)),
        (20, (20, 50)),
        (49, (20, 50)),
        (50, (50, 100)),
        (99, (50, 100)),
        (100, (100, 200)),
        (999, (500, 1000)),
        (1000, (1000, 2000)),
        (123_456, (100_000, 200_000)),
        (10**18 - 1, (5 * 10**17, 10**18)),
    ],
)
def test_examples(n: int, bucket: tuple[int, int]) -> None:
    assert row_count_bucket(n) == bucket


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        row_count_bucket(-1)


@given(counts)
def test_bucket_contains_n_and_bounds_are_in_the_series(n: int) -> None:
    lower, upper = row_count_bucket(n)
    assert lower <= n < upper
    if n < 10:
        assert (lower, upper) == (0, 10)
    else:
        assert in_series(lower)
        assert in_series(upper)
        assert upper == next_in_series(lower)


@given(counts, counts)
def test_buckets_are_monotone(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert row_count_bucket(low)[0] <= row_count_bucket(high)[0]
    assert row_count_bucket(low)[1] <= row_count_bucket(high)[1]


@given(counts)
def test_buckets_tile_without_gaps(n: int) -> None:
    lower, upper = row_count_bucket(n)
    # The next bucket starts exactly where this one ends, and the previous
    # bucket ends exactly where this one starts.
    assert row_count_bucket(upper)[0] == upper
    if lower > 0:
        assert row_count_bucket(lower - 1)[1] == lower


@given(st.integers(min_value=10, max_value=10**30), st.integers(min_value=0, max_value=1))
def test_single_row_changes_stay_hidden_within_a_bucket(n: int, delta: int) -> None:
    # A bucket spans at least 10 rows, so neighbours usually share one.
    lower, upper = row_count_bucket(n)
    assert upper - lower >= 10
    if lower < n + delta < upper:
        assert row_count_bucket(n + delta) == (lower, upper)
