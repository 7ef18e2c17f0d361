"""The compiled per-unit wrapper's layout (:class:`agent.runtime.contribution.UnitBlocks`):
every row placed once, no unit across a block, padding marked as such and kept small.

The wrapper's sums rest on these invariants (its "same unit" mask only looks within a
block), so they are checked on their own for any unit sizes, not only through the sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime.contribution import UnitBlocks, UnitLayouts, whole_unit_spans


def _check_layout(sizes: list[int]) -> UnitBlocks:
    blocks = UnitBlocks.of(np.array(sizes, np.int64))
    # The session passes the units' starts it already has: the same layout.
    given_starts = UnitBlocks.of(np.array(sizes, np.int64), np.cumsum([0, *sizes[:-1]]).astype(np.int64))
    np.testing.assert_array_equal(given_starts.order, blocks.order)
    np.testing.assert_array_equal(given_starts.unit, blocks.unit)
    rows = sum(sizes)
    real = blocks.real
    assert blocks.order.shape == blocks.unit.shape == (blocks.blocks * blocks.block,)
    assert blocks.block >= max(sizes)
    # Every row placed exactly once; padding positions hold no row and no unit.
    assert sorted(blocks.order[real].tolist()) == list(range(rows))
    assert np.all(np.isnan(blocks.unit[~real])) and not np.isnan(blocks.unit[real]).any()
    row_unit = np.repeat(np.arange(len(sizes)), sizes)
    np.testing.assert_array_equal(blocks.unit[real], row_unit[blocks.order[real]])
    block_of = np.arange(blocks.order.size) // blocks.block
    for unit, size in enumerate(sizes):
        positions = np.flatnonzero(blocks.unit == unit)
        assert positions.size == size
        assert np.unique(block_of[positions]).size == 1, f"unit {unit} crosses a block"
        # A unit's rows stay together and in order.
        assert np.all(np.diff(positions) == 1) and np.all(np.diff(blocks.order[positions]) == 1)
    # First fit leaves at most one block half empty or less: the padding stays bounded.
    assert blocks.blocks <= 2 * -(-rows // blocks.block) + 1
    # The wrapper lays the rows out with a Gather of ``order`` (-1, padding: a copy of the
    # last row, which the wrapper's padding mask zeroes): each real position gets its row.
    values = np.arange(1, 2 * rows + 1, dtype=np.float32).reshape(rows, 2)
    laid = np.take(values, blocks.order, axis=0)
    np.testing.assert_array_equal(laid[real], values[blocks.order[real]])
    assert np.all(blocks.order[~real] == -1)
    return blocks


@given(st.lists(st.integers(1, 60), min_size=1, max_size=300))
def test_any_unit_sizes_are_laid_out_whole_in_blocks(sizes: list[int]) -> None:
    _check_layout(sizes)


def test_units_of_one_size_keep_their_order_without_padding_between_them() -> None:
    blocks = _check_layout([4] * 10)
    assert blocks.block == 16
    np.testing.assert_array_equal(blocks.order[:40], np.arange(40))
    assert not blocks.real[40:].any()


def test_units_of_mixed_sizes_fill_blocks_largest_first() -> None:
    # 10+6 fill one block of 16 and 9+7 another: no padding at all.
    blocks = _check_layout([6, 9, 10, 7])
    assert blocks.block == 16
    assert blocks.real.all()


def test_units_of_more_than_half_a_block_each_take_one_in_their_order() -> None:
    # No two of these units fit one block of 10: each has its own, without any packing.
    blocks = _check_layout([10, 10, 6, 10, 9])
    assert (blocks.block, blocks.blocks) == (10, 5)
    np.testing.assert_array_equal(blocks.unit.reshape(5, 10)[:, 0], np.arange(5))
    assert blocks.real.sum() == 45


@given(st.lists(st.integers(1, 40), max_size=60), st.integers(1, 100))
def test_runs_of_whole_units_cover_every_unit_once_within_the_limit(sizes: list[int], limit: int) -> None:
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64) if sizes else np.zeros(0, np.int64)
    spans = list(whole_unit_spans(starts, sum(sizes), limit))
    assert [first for first, *_ in spans] == [0, *[last for _, last, *_ in spans]][: len(spans)]
    assert (spans[-1][1] if spans else 0) == len(sizes)
    for first, last, begin, end in spans:
        assert (begin, end) == (int(starts[first]), int(starts[first]) + sum(sizes[first:last]))
        assert end - begin <= limit or last - first == 1  # only a unit alone may exceed the limit
        # Greedy: the next unit would not have fitted.
        assert last == len(sizes) or end - begin + sizes[last] > limit


@pytest.mark.parametrize("sizes", [[], [0, 3], [2, -1]])
def test_empty_or_non_positive_units_are_refused(sizes: list[int]) -> None:
    with pytest.raises(ValueError, match="positive row counts"):
        UnitBlocks.of(np.array(sizes, np.int64))


@pytest.mark.parametrize("sizes", [[3, 2, 5, 1], [4, 4, 4], [10, 6, 10]])
def test_a_layout_feeds_the_same_unit_mask_and_order_read_only(sizes: list[int]) -> None:
    blocks = UnitBlocks.of(np.array(sizes, np.int64))
    assert blocks.same_unit.shape == (blocks.blocks, blocks.block, blocks.block)
    assert blocks.same_unit.dtype == np.bool_
    unit = blocks.order.reshape(blocks.blocks, blocks.block).copy()
    unit[unit >= 0] = np.repeat(np.arange(len(sizes)), sizes)[unit[unit >= 0]]
    for b in range(blocks.blocks):
        for i in range(blocks.block):
            for j in range(blocks.block):
                # Padding (order -1) is of no unit: false throughout, its diagonal too.
                expected = unit[b, i] >= 0 and unit[b, i] == unit[b, j]
                assert blocks.same_unit[b, i, j] == expected
    # A layout serves many steps: nothing may change what the next step is fed.
    for array in (blocks.order, blocks.unit, blocks.same_unit):
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0


@given(st.lists(st.integers(1, 20), min_size=1, max_size=60))
def test_remembered_layouts_are_those_of_the_sizes_asked_for(sizes: list[int]) -> None:
    layouts = UnitLayouts(capacity=2)
    for _ in range(2):
        got = layouts.of(np.array(sizes, np.int64))
        expected = UnitBlocks.of(np.array(sizes, np.int64))
        np.testing.assert_array_equal(got.order, expected.order)
        np.testing.assert_array_equal(got.unit, expected.unit)
        assert got.block == expected.block


def test_only_runs_of_one_unit_size_are_remembered_and_the_memory_is_bounded() -> None:
    layouts = UnitLayouts(capacity=2)
    ones = np.ones(256, np.int64)
    assert layouts.of(ones) is layouts.of(ones.copy())
    mixed = np.array([1, 2, 3], np.int64)
    assert layouts.of(mixed) is not layouts.of(mixed)
    fours = layouts.of(np.full(10, 4, np.int64))  # the second remembered: the capacity
    assert fours is layouts.of(np.full(10, 4, np.int64))
    assert layouts.of(np.full(11, 4, np.int64)) is not fours  # a third: all are forgotten
    assert layouts.of(np.full(10, 4, np.int64)) is not fours
    with pytest.raises(ValueError, match="positive row counts"):
        layouts.of(np.array([0, 0], np.int64))
