"""Contribution bounding by privacy unit: a unit's rows are summed first, then clipped.

A dataset with a declared privacy unit (a patient) has many rows per unit; clipping each
row at ``C`` would let one patient with ``k`` rows move a release by ``k·C``. For rows
grouped by unit (:attr:`agent.runtime.rows.RowBatch.unit_starts`), both wrappers compute:

* gradients: each row's per-example gradient (all parameters, float64) counts as zeros if
  any of its values is NaN or infinite (or, for a weight gradient the graph computes as an
  outer product, if float32 would overflow it); a unit's gradient is the sum of its rows';
  it is scaled by ``C / max(‖g_unit‖₂, C)`` (zeros if that norm is not finite); the scaled
  unit gradients are summed. Removing every row of one unit moves the sum by at most ``C``.
* metrics: each row's metric, non-finite made 0 and clamped into ``[low, high]``, averaged
  over the unit's rows; the unit averages are summed. A unit average lies in
  ``[low, high]``, so one unit moves metric ``m``'s sum by at most ``max(|low|, |high|)``,
  as one row did before, and the sum weighs patients equally.

The ``Scan`` wrapper (:func:`agent.runtime.isolation.build_wrapper` with ``units=True``)
carries the open unit's partial sum from row to row and clips it on the unit's last row.
The compiled batch (:func:`agent.runtime.batched_wrapper.build_batched_wrapper` with
``units=True``) takes runs of whole units and never materialises a unit's sum: a unit's
squared norm is ``Σ_i ‖g_i‖² + 2 Σ_{i<j} g_i·g_j`` over its rows (for an outer-product
gradient ``g_i·g_j = (u_i·u_j)(v_i·v_j)``), from the row pairs this module lists, and its
clipped sum is each row scaled by its unit's scale. Tests hold the two to the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]

# fl32(p) is infinite exactly when |p| >= 2^128 * (1 - 2^-25) (round to nearest even): the
# float32 outer product the package would have materialised overflows exactly there.
FLOAT32_OVERFLOW = 2.0**128 * (1.0 - 2.0**-25)


def check_unit_starts(unit_starts: IndexArray, rows: int) -> None:
    """``unit_starts`` must begin at 0, increase strictly and stay below ``rows`` (no empty unit)."""
    if rows == 0:
        if unit_starts.size != 0:
            raise ValueError("a batch without rows has no units")
        return
    if unit_starts.ndim != 1 or unit_starts.size == 0 or unit_starts[0] != 0:
        raise ValueError("unit_starts must be a 1-D array starting at 0")
    if unit_starts[-1] >= rows or np.any(np.diff(unit_starts) <= 0):
        raise ValueError("unit_starts must increase strictly and stay below the number of rows")


def unit_sizes(unit_starts: IndexArray, rows: int) -> IndexArray:
    """Rows per unit."""
    return np.diff(np.append(unit_starts, rows)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class RunUnits:
    """How the rows of one run are grouped, as the compiled per-unit wrapper takes it.

    ``unit`` ``[N]``: each row's unit number. ``unit_rows`` ``[G, k]``: each unit's rows,
    padded with ``N`` (``k``: the run's largest unit).
    """

    unit: IndexArray
    unit_rows: IndexArray

    @classmethod
    def of(cls, unit_starts: IndexArray, rows: int) -> RunUnits:
        check_unit_starts(unit_starts, rows)
        sizes = unit_sizes(unit_starts, rows)
        unit = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        unit_rows = np.full((sizes.size, int(sizes.max(initial=1))), rows, np.int64)
        # Row r of unit g sits at column r - start(g).
        every_row = np.arange(rows, dtype=np.int64)
        unit_rows[unit, every_row - unit_starts[unit]] = every_row
        return cls(unit, unit_rows)
