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
``units=True``) takes runs of whole units (:func:`whole_unit_spans`), laid out by
:class:`UnitBlocks` in blocks no unit crosses, and never materialises a unit's sum: a
unit's squared norm is ``Σ_{i,j} g_i·g_j`` over its rows (for an outer-product gradient
``g_i·g_j = (u_i·u_j)(v_i·v_j)``), from each block's Gram matrices, plus a rounding
margin; its clipped sum is each row scaled by its unit's scale. Tests hold the two
wrappers to the same numbers (the compiled one may clip a nearly cancelling unit harder).
"""

from __future__ import annotations

from collections.abc import Iterator
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


def whole_unit_spans(unit_starts: IndexArray, rows: int, limit: int) -> Iterator[tuple[int, int, int, int]]:
    """Consecutive runs of whole units, each of at most ``limit`` rows unless one unit alone
    has more, in order: ``(first unit, last unit + 1, first row, last row + 1)`` of each."""
    ends = np.append(unit_starts[1:], rows)
    first = 0
    while first < unit_starts.size:
        begin = int(unit_starts[first])
        # The last unit that still ends within `limit` rows of this run's start (at least one).
        last = max(first + 1, int(np.searchsorted(ends, begin + limit, side="right")))
        yield first, last, begin, int(ends[last - 1])
        first = last


@dataclass(frozen=True, eq=False)
class UnitBlocks:
    """A run of whole units laid out in blocks of ``block`` rows, as the compiled per-unit
    wrapper takes it: no unit crosses a block; the rows that fill a block up are padding.

    ``order`` ``[blocks·block]``: for each position, the run's row placed there, or -1 for
    padding. ``unit``: each position's unit number (-1 for padding). Units are packed
    largest first (few padding rows) into blocks of the largest unit's size or of 16 rows,
    whichever costs less (units of one size: blocks of a multiple of it): every position
    costs a row of the package graph, each row's share of its block's Gram matrices grows
    with the block, and every block adds small matrix products of its own.
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
        if np.all(sizes == largest):  # units of one size fill blocks of a multiple of it exactly
            block = largest * max(1, _BLOCK // largest)
            return cls._laid_out(unit_starts, sizes, _first_fit_decreasing(sizes, block), block)
        best: tuple[float, int, IndexArray] | None = None
        # Blocks of fewer than 8 rows make many tiny products: never cheaper than 16 rows.
        for block in sorted({max(largest, _BLOCK)} | ({largest} if largest >= 8 else set())):
            placed = _first_fit_decreasing(sizes, block)
            blocks = int(placed.max(initial=-1)) + 1
            cost = blocks * block * (1.0 + block / _GRAM_ROWS) + blocks * _BLOCK_ROWS
            if best is None or cost < best[0]:
                best = (cost, block, placed)
        if best is None:
            raise ValueError("no block size")  # unreachable: the set above is never empty
        return cls._laid_out(unit_starts, sizes, best[2], best[1])

    @classmethod
    def _laid_out(cls, unit_starts: IndexArray, sizes: IndexArray, placed: IndexArray, block: int) -> UnitBlocks:
        """Units block by block (``placed``: each unit's block), each after those placed before it."""
        rows = int(sizes.sum())
        blocks = int(placed.max(initial=-1)) + 1
        members = np.lexsort((np.arange(sizes.size), placed)).astype(np.int64)
        member_sizes = sizes[members]
        block_of = placed[members]
        before = np.concatenate(([0], np.cumsum(member_sizes)[:-1]))
        first_in_block = np.concatenate(([0], np.flatnonzero(np.diff(block_of)) + 1))
        within = before - np.repeat(before[first_in_block], np.diff(np.append(first_in_block, members.size)))
        steps = np.arange(rows, dtype=np.int64) - np.repeat(before, member_sizes)  # row index within its unit
        destination = np.repeat(block_of * block + within, member_sizes) + steps
        order = np.full(blocks * block, -1, np.int64)
        unit = np.full(blocks * block, -1, np.int64)
        order[destination] = np.repeat(unit_starts[members], member_sizes) + steps
        unit[destination] = np.repeat(members, member_sizes)
        return cls(order, unit, block)


# Rows per block where units are smaller: fewer would make many tiny matrix products, more
# would make each row's share of its block's Gram matrices costly (measured on the bench MLP).
_BLOCK = 16
# The cost model between blocks of the largest unit's size and of _BLOCK rows, in rows of
# the package graph: a position costs one row plus its share of the block's Gram matrices
# (block / _GRAM_ROWS rows), and each block's small matrix products _BLOCK_ROWS rows more.
_GRAM_ROWS = 48.0
_BLOCK_ROWS = 3.0


def _first_fit_decreasing(sizes: IndexArray, block: int) -> IndexArray:
    """Each unit's block when packed into blocks of ``block`` rows, largest units first.

    Blocks are filled one at a time, each with the largest units that still fit (by size
    class, so the work grows with blocks times distinct sizes, not with units squared);
    units of one size keep their order.
    """
    if sizes.size and np.all(sizes == sizes[0]):
        return np.arange(sizes.size, dtype=np.int64) // max(1, block // int(sizes[0]))
    by_size: dict[int, list[int]] = {}
    for member, size in enumerate(sizes.tolist()):
        by_size.setdefault(size, []).append(member)
    classes = sorted(by_size, reverse=True)
    placed = [0] * sizes.size
    remaining, current = sizes.size, 0
    while remaining:
        room = block
        for size in classes:
            waiting = by_size[size]
            if size > room or not waiting:
                continue
            count = min(len(waiting), room // size)
            for member in waiting[:count]:
                placed[member] = current
            del waiting[:count]
            remaining -= count
            room -= count * size
            if room == 0:
                break
        current += 1
    return np.array(placed, np.int64)
