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
