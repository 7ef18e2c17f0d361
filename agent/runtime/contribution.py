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
class UnitBlocks:
    """A run of whole units laid out in blocks of ``block`` rows, as the compiled per-unit
    wrapper takes it: no unit crosses a block; the rows that fill a block up are padding.

    ``order`` ``[blocks·block]``: for each position, the run's row placed there, or -1 for
    padding. ``unit``: each position's unit number (-1 for padding). Units are packed
    first-fit by decreasing size (few padding rows) into blocks of the size, among the
    largest unit's and a few larger ones, that costs least: every position costs a row of
    the package graph, each row's share of its block's Gram matrices grows with the block,
    and every block adds small matrix products of its own.
    """

    order: IndexArray
    unit: IndexArray
    block: int

    @property
    def real(self) -> npt.NDArray[np.bool_]:
        return self.order >= 0

    @classmethod
    def of(cls, unit_starts: IndexArray, rows: int) -> UnitBlocks:
        """The layout of least estimated cost among a few block sizes (see the class doc)."""
        check_unit_starts(unit_starts, rows)
        sizes = unit_sizes(unit_starts, rows)
        largest = int(sizes.max(initial=1))
        if np.all(sizes == largest):  # units of one size: one per block, in order, no padding
            every_row = np.arange(rows, dtype=np.int64)
            return cls(every_row, np.repeat(np.arange(sizes.size, dtype=np.int64), sizes), largest)
        best: tuple[float, UnitBlocks] | None = None
        for block in sorted({largest, *(size for size in _BLOCK_SIZES if size > largest)}):
            layout = cls.packed(unit_starts, rows, block)
            blocks = layout.order.size // block
            cost = layout.order.size * (1.0 + block / _GRAM_ROWS) + blocks * _BLOCK_ROWS
            if best is None or cost < best[0]:
                best = (cost, layout)
        if best is None:
            raise ValueError("no block size")  # unreachable: the largest unit's size is a candidate
        return best[1]

    @classmethod
    def packed(cls, unit_starts: IndexArray, rows: int, block: int) -> UnitBlocks:
        """Units packed first-fit by decreasing size into blocks of ``block`` rows (at least the largest unit)."""
        sizes = unit_sizes(unit_starts, rows)
        if block < int(sizes.max(initial=1)):
            raise ValueError(f"a block of {block} rows cannot hold a unit of {int(sizes.max())}")
        bins = _first_fit_decreasing(sizes, block)
        # Each unit's first position: its block's start plus the sizes placed before it there.
        members = np.array([member for packed in bins for member in packed], np.int64)
        block_of = np.repeat(np.arange(len(bins), dtype=np.int64), [len(packed) for packed in bins])
        member_sizes = sizes[members]
        before = np.concatenate(([0], np.cumsum(member_sizes)[:-1]))
        first_in_block = np.concatenate(([0], np.flatnonzero(np.diff(block_of)) + 1))
        within = before - np.repeat(before[first_in_block], np.diff(np.append(first_in_block, members.size)))
        steps = np.arange(rows, dtype=np.int64) - np.repeat(before, member_sizes)  # row index within its unit
        destination = np.repeat(block_of * block + within, member_sizes) + steps
        order = np.full(len(bins) * block, -1, np.int64)
        unit = np.full(len(bins) * block, -1, np.int64)
        order[destination] = np.repeat(unit_starts[members], member_sizes) + steps
        unit[destination] = np.repeat(members, member_sizes)
        return cls(order, unit, block)


# Block sizes tried beside the largest unit's.
_BLOCK_SIZES = (8, 16, 32)
# The cost model, in rows of the package graph (measured on the bench MLP): a position
# costs one row plus its share of the block's Gram matrices (block / _GRAM_ROWS rows), and
# each block's small matrix products cost _BLOCK_ROWS rows more.
_BLOCK_ROWS = 1.0
_GRAM_ROWS = 48.0


def _first_fit_decreasing(sizes: IndexArray, block: int) -> list[list[int]]:
    """Units (indices into ``sizes``) packed into blocks of ``block`` rows."""
    bins: list[list[int]] = []
    free: list[int] = []
    for member in np.argsort(-sizes, kind="stable"):
        size = int(sizes[member])
        for index, room in enumerate(free):
            if size <= room:
                bins[index].append(int(member))
                free[index] -= size
                break
        else:
            bins.append([int(member)])
            free.append(block - size)
    return bins
