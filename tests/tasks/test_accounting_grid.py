"""The accounting grid: q rounded up, sigma rounded down, so epsilon is never under-stated."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.privacy.mechanism import accounting_grid


@given(st.floats(min_value=1e-9, max_value=1e3, allow_nan=False, allow_infinity=False))
def test_rounding_goes_the_safe_way_and_stays_close(value: float) -> None:
    up = accounting_grid(value, up=True)
    down = accounting_grid(value, up=False)
    assert down <= value <= up
    assert up - down <= value * 1e-2 * 1.0001  # 3 significant digits: within 1 %


def test_nearby_settings_share_one_grid_point() -> None:
    assert accounting_grid(1.1, up=False) == accounting_grid(1.1 + 1e-9, up=False) == 1.1
    assert accounting_grid(256 / 60000, up=True) == 0.00427
    assert accounting_grid(0.5, up=True) == 0.5


@given(st.floats(min_value=5e-324, max_value=1e-280, allow_nan=False, allow_infinity=False))
def test_the_tiniest_sampling_rates_round_without_overflow(value: float) -> None:
    """A sampling rate of 1.8e-322 is in (0, 1] and reaches the grid (a fuzzer found 10**325
    overflowing it): it rounds as any other, the safe way."""
    up = accounting_grid(value, up=True)
    down = accounting_grid(value, up=False)
    assert 0.0 <= down <= value <= up
    if value > 1e-300:  # below, subnormal floats hold fewer than 3 digits
        assert up - down <= value * 1e-2 * 1.0001
