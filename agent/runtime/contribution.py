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
  as one row did before, and the sum weighs patients equally. The metrics of a declared
  group (:class:`agent.packages.manifest.MetricGroup`, e.g. the cells of a histogram of
  scores) are, after clamping, scaled together to L2 norm at most the group's bound in
  each row (:func:`bounded_metric_groups`); a mean of such rows is within it too, so one
  unit moves the group's sums by at most the bound in L2.

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

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import MetricGroup

IndexArray = npt.NDArray[np.int64]
_Value = TypeVar("_Value", bound=np.generic)

# fl32(p) is infinite exactly when |p| >= 2^128 * (1 - 2^-25) (round to nearest even): the
# float32 outer product the package would have materialised overflows exactly there.
FLOAT32_OVERFLOW = 2.0**128 * (1.0 - 2.0**-25)


def bounded_metric_groups(
    op: Callable[[str, list[str]], str],
    constant: Callable[[npt.NDArray[np.float64]], str],
    clamped: str,
    metrics: int,
    groups: Sequence[MetricGroup],
) -> str:
    """Nodes (made with ``op(op_type, inputs)`` and ``constant(value)``) that scale each
    group's values in ``clamped`` (float64 ``[..., metrics]``, every value finite and in its
    metric's range) to L2 norm at most the group's bound; other metrics pass unchanged.
    Without groups, ``clamped`` itself.

    The norm is taken of the values divided by their bound (``|ratio| <= 1``, a group's
    bound at least MIN_GROUP_BOUND): squares of the values themselves could underflow to 0
    for a tiny bound, leaving a group unscaled, or overflow to inf for a huge one, and
    inf · 0 in the membership product would make every metric NaN. Metrics of no group
    enter as ratio 0 (a finite value times 0).
    """
    if not groups:
        return clamped
    membership = np.zeros((metrics, len(groups)), np.float64)
    inverse_bound = np.zeros(metrics, np.float64)
    for index, group in enumerate(groups):
        membership[list(group.members), index] = 1.0
        inverse_bound[list(group.members)] = 1.0 / group.bound
    ratio = op("Mul", [clamped, constant(inverse_bound)])
    norms = op("Sqrt", [op("MatMul", [op("Mul", [ratio, ratio]), constant(membership)])])  # [..., groups], <= sqrt(k)
    one = constant(np.array(1.0, np.float64))
    # 1 / max(norm, 1): exactly 1 within the bound, no division by 0.
    scale = op("Div", [one, op("Max", [norms, one])])
    # Each metric's factor: its group's scale, or 1 for a metric of no group.
    factor = op(
        "Add",
        [op("MatMul", [scale, constant(np.ascontiguousarray(membership.T))]), constant(1.0 - membership.sum(axis=1))],
    )
    return op("Mul", [clamped, factor])


def check_unit_starts(unit_starts: IndexArray, rows: int) -> None:
    """``unit_starts`` must begin at 0, increase strictly and stay below ``rows`` (no empty unit)."""
    if rows == 0:
        if unit_starts.size != 0:
            raise ValueError("a batch without rows has no units")
        return
    if unit_starts.ndim != 1 or unit_starts.size == 0 or unit_starts[0] != 0:
        raise ValueError("unit_starts must be a 1-D array starting at 0")
    # Neighbours compared directly: np.diff's own checks cost more than the comparison (every step).
    if unit_starts[-1] >= rows or bool((unit_starts[1:] <= unit_starts[:-1]).any()):
        raise ValueError("unit_starts must increase strictly and stay below the number of rows")


def unit_sizes(unit_starts: IndexArray, rows: int) -> IndexArray:
    """Rows per unit."""
    sizes = np.empty(unit_starts.size, np.int64)
    if sizes.size:
        # One subtraction into place: np.diff of np.append copies twice (every step).
        np.subtract(unit_starts[1:], unit_starts[:-1], out=sizes[:-1])
        sizes[-1] = rows - unit_starts[-1]
    return sizes


def whole_unit_spans(unit_starts: IndexArray, rows: int, limit: int) -> Iterator[tuple[int, int, int, int]]:
    """Consecutive runs of whole units, each of at most ``limit`` rows unless one unit alone
    has more, in order: ``(first unit, last unit + 1, first row, last row + 1)`` of each."""
    if rows <= limit:  # the common case, one run: no search
        if unit_starts.size:
            yield 0, int(unit_starts.size), 0, rows
        return
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
    padding. ``unit``: each position's unit number, float64 and NaN for padding (NaN equals
    nothing, itself included: the same-unit mask is one comparison). Units are packed
    largest first (few padding rows) into blocks of the largest unit's size or of 16 rows,
    whichever costs less (units of one size: blocks of a multiple of it, in their order):
    every position costs a row of the package graph, each row's share of its block's Gram
    matrices grows with the block, and every block adds small matrix products of its own.
    """

    order: IndexArray
    unit: npt.NDArray[np.float64]
    block: int

    def __post_init__(self) -> None:
        _read_only(self.order)
        _read_only(self.unit)

    @property
    def real(self) -> npt.NDArray[np.bool_]:
        return self.order >= 0

    @property
    def blocks(self) -> int:
        return self.order.size // self.block

    @cached_property
    def same_unit(self) -> npt.NDArray[np.bool_]:
        """``[blocks, block, block]``: true where two positions of a block hold rows of one
        unit, false throughout for padding (computed once per layout, read-only)."""
        unit = self.unit.reshape(self.blocks, self.block)
        return _read_only(np.equal(unit[:, :, None], unit[:, None, :]))

    @classmethod
    def of(cls, sizes: IndexArray, starts: IndexArray | None = None) -> UnitBlocks:
        """The layout of least estimated cost among a few block sizes (see the class doc) for
        units of ``sizes`` rows, in that order (``starts``: where each begins, if known).

        A run holds at most a few hundred units: plain Python lists pack them faster than
        NumPy calls would, whose fixed cost dominates at this size."""
        listed: list[int] = sizes.tolist() if sizes.ndim == 1 else []
        if not listed or min(listed) < 1:
            raise ValueError("unit sizes must be a non-empty 1-D array of positive row counts")
        rows, largest, smallest = sum(listed), max(listed), min(listed)
        if smallest == largest:
            # Units of one size fill blocks of a multiple of it exactly, in their own order.
            block = largest * max(1, _BLOCK // largest)
            order = np.full(-(-rows // block) * block, -1, np.int64)
            order[:rows] = np.arange(rows, dtype=np.int64)
            unit = np.full(order.size, np.nan)
            unit[:rows] = np.repeat(np.arange(len(listed), dtype=np.float64), largest)
            return cls(order, unit, block)
        # Blocks of fewer than 8 rows make many tiny products: never cheaper than 16 rows.
        candidates = {max(largest, _BLOCK)} | ({largest} if largest >= 8 else set())
        # A lower bound on each block size's cost: no two units of more than half a block
        # share one. Packed in that order, a block size whose bound is no better than a
        # packing already found is skipped: mostly, one packing is all it takes.
        ascending = sorted(listed)
        alone = {block: len(listed) - bisect_right(ascending, block // 2) for block in candidates}
        bounds = {block: _cost(max(-(-rows // block), alone[block]), block) for block in candidates}
        by_size: list[int] | None = None
        best: tuple[float, int, int, IndexArray] | None = None
        for block in sorted(candidates, key=lambda block: (bounds[block], block)):
            # Another packing (a Python loop) only where it may well be cheaper, not by a few rows.
            if best is not None and bounds[block] >= best[0] * (1.0 - _REPACK):
                continue
            if alone[block] == len(listed):
                # No two units share a block: each has one of its own, in order (no packing).
                blocks, position = len(listed), np.arange(len(listed), dtype=np.int64) * block
            else:
                if by_size is None:  # largest first; stable: ties keep their order
                    by_size = sorted(range(len(listed)), key=listed.__getitem__, reverse=True)
                blocks, first = _first_fit_decreasing(listed, by_size, block)
                position = np.asarray(first, np.int64)
            cost = _cost(blocks, block)
            if best is None or cost < best[0]:
                best = (cost, blocks, block, position)
        if best is None:
            raise ValueError("no block size")  # unreachable: the first block size is always packed
        _, blocks, block, position = best
        if starts is None:
            starts = np.cumsum(sizes) - sizes
        return cls._laid_out(sizes, starts, rows, (blocks, block), position)

    @classmethod
    def _laid_out(
        cls, sizes: IndexArray, starts: IndexArray, rows: int, shape: tuple[int, int], position: IndexArray
    ) -> UnitBlocks:
        """Each unit's rows (``rows`` in all, from ``starts``) one after another from its
        first ``position`` on, in ``shape`` (blocks, rows per block)."""
        blocks, block = shape
        row = np.arange(rows, dtype=np.int64)
        destination = np.repeat(position - starts, sizes) + row
        order = np.full(blocks * block, -1, np.int64)
        unit = np.full(blocks * block, np.nan)
        order[destination] = row
        unit[destination] = np.repeat(np.arange(sizes.size, dtype=np.float64), sizes)
        return cls(order, unit, block)


class UnitLayouts:
    """The layouts of one wrapper's runs (:meth:`UnitBlocks.of`), remembering those of runs
    whose units all have one size.

    A dataset with one row per patient gives every step the same layout, and the layout's
    feeds (``order``, ``same_unit``) are most of a step's work outside the graph. Only runs
    of units of one size are remembered, at most ``capacity`` of them (then all are
    forgotten): keyed by (size, units), there are few.
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._uniform: dict[tuple[int, int], UnitBlocks] = {}

    def of(self, sizes: IndexArray, starts: IndexArray | None = None) -> UnitBlocks:
        """:meth:`UnitBlocks.of` ``(sizes, starts)``, the remembered layout when ``sizes`` are all one size."""
        if sizes.ndim != 1 or sizes.size == 0:
            return UnitBlocks.of(sizes)  # which refuses them
        first = int(sizes[0])
        if first < 1 or not bool((sizes == first).all()):
            return UnitBlocks.of(sizes, starts)
        key = (first, int(sizes.size))
        layout = self._uniform.get(key)
        if layout is None:
            if len(self._uniform) >= self._capacity:
                self._uniform.clear()
            layout = self._uniform[key] = UnitBlocks.of(sizes)
        return layout


def _read_only(values: npt.NDArray[_Value]) -> npt.NDArray[_Value]:
    """``values``, no longer writeable: a layout may be reused for many steps."""
    values.flags.writeable = False
    return values


# Rows per block where units are smaller: fewer would make many tiny matrix products, more
# would make each row's share of its block's Gram matrices costly (measured on the bench MLP).
_BLOCK = 16
# The cost model between blocks of the largest unit's size and of _BLOCK rows, in rows of
# the package graph: a position costs one row plus its share of the block's Gram matrices
# (block / _GRAM_ROWS rows), and each block's small matrix products _BLOCK_ROWS rows more.
_GRAM_ROWS = 48.0
_BLOCK_ROWS = 3.0
# A second block size is packed only if its lower bound is this much below the first's
# cost: a packing costs about as much as a few rows' share of the graph.
_REPACK = 0.03


def _cost(blocks: int, block: int) -> float:
    """The estimated cost of ``blocks`` blocks of ``block`` rows, in rows of the package graph."""
    return blocks * block * (1.0 + block / _GRAM_ROWS) + blocks * _BLOCK_ROWS


def _first_fit_decreasing(sizes: list[int], by_size: list[int], block: int) -> tuple[int, list[int]]:
    """Units packed into blocks of ``block`` rows, largest first (``by_size``: the units by
    decreasing size): the number of blocks, and each unit's first position.

    Blocks are filled one at a time, each with the largest units that still fit (by size
    class, so the work grows with blocks times distinct sizes, not with units squared);
    units of one size keep their order.
    """
    classes: list[list[int]] = []  # [size, next unplaced, end] of each run of one size in by_size
    for index, member in enumerate(by_size):
        if classes and classes[-1][0] == sizes[member]:
            classes[-1][2] = index + 1
        else:
            classes.append([sizes[member], index, index + 1])
    smallest = classes[-1][0]
    position = [0] * len(sizes)
    left, blocks = len(sizes), 0
    while left:
        room, at = block, blocks * block
        for entry in classes:
            size, first, end = entry
            if size > room or first == end:
                continue
            count = min(end - first, room // size)
            for member in by_size[first : first + count]:
                position[member] = at
                at += size
            entry[1] = first + count
            left -= count
            room -= count * size
            if room < smallest:
                break
        blocks += 1
    return blocks, position
