"""Per-unit contribution bounding (issue 20): one unit (a patient), whatever its number of
rows and whatever the package graph computes, moves every pre-noise released sum by at
most its bound.

* property (hypothesis): 1-50 rows per unit, the malicious-graph set plus graphs that scale
  with a row's value, its (naive) position or the batch size, NaN/Inf on chosen rows,
  values near float32's overflow and factored outer-product weight gradients: removing all
  rows of one unit moves ``clipped_sum`` by at most ``C`` in L2 (metrics: each sum by at most
  ``max(|low|, |high|)``), in SCAN and in BATCHED mode, both equal to an independent NumPy
  reference and to each other;
* a unit's rows are summed before the clip (cases that per-row clipping gets wrong), also
  for units larger than one batched run or straddling two.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.runtime.batched_wrapper import ORDER, ROWS_PER_RUN, SAME_UNIT, build_batched_wrapper
from agent.runtime.contribution import UnitBlocks
from agent.runtime.isolation import CLIP_NORM, SUM, GraphRole, X, Y, parameter_input
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from agent.runtime.tasks import Controls, GradientRelease, GradientSettings, Randomness, dp_gradient
from tests.runtime.helpers import F
from tests.runtime.unit_graphs import (
    WIDE,
    GraphCase,
    UnitArraySource,
    evaluation_cases,
    gradient_cases,
    patient_visits,
    per_example,
    starts_of,
    unit_batch,
    unit_clipped_reference,
    unit_metric_reference,
    unit_slices,
    wide_echo,
    without_unit,
    wrappers,
)

C = 0.75
SLACK = 1e-9  # relative: float64 rounding of the clip, far below any release's noise
# For graphs whose per-row values are float32 matrix products: the compiled batch's float32
# kernels round a row's gradient differently with other rows beside it (per row already,
# unit or not), so the neighbour without one unit is computed with other roundings.
BATCH_ROUNDING_SLACK = 1e-6
RTOL = 1e-6
SPECIALS = (np.nan, np.inf, -np.inf, 3e38, -3e38, 1e20, 40.0, 33.0, 1e-45, 0.0)


@st.composite
def unit_rows(draw: st.DrawFn, case: GraphCase) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A few units of 1-50 rows each (sometimes more than one batched run of rows), random
    features at a drawn scale, and special values planted on chosen rows."""
    sizes = draw(st.lists(st.integers(1, 50), min_size=1, max_size=7))
    n = sum(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 3.0, 30.0]))
    x = (rng.normal(size=(n, case.features)) * scale).astype(np.float32)
    plants = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, case.features - 1), st.sampled_from(SPECIALS)),
            max_size=4,
        )
    )
    for row, col, value in plants:
        x[row, col] = value
    return sizes, x, case.labels(rng, n)


def _assert_close(got: np.ndarray, expected: np.ndarray, bound: float, what: str, *, loose: bool = False) -> None:
    """Equal to float tolerance: rtol 1e-6, atol 1e-9 of the bound; ``loose`` (1e-5 of the
    bound) for graphs whose per-row values are float32 matrix products, which the compiled
    batch rounds differently from one row at a time (per row already, not per unit)."""
    tolerance = 1e-5 if loose else RTOL
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=(1e-5 if loose else 1e-9) * bound, err_msg=what)


# The compiled per-unit path clips by an upper bound on a unit's squared norm: the exact
# value plus m·(Σ_i ‖g_i‖)² over its rows, m the wrapper's rounding margin (below this
# for the test graphs' widths). So a unit whose rows nearly cancel is clipped harder, by
# design; its contribution, of norm at most C, shrinks by at most m·(Σ‖g_i‖)²/(2‖Σ g_i‖²)
# of itself.
MARGIN = (ROWS_PER_RUN**2 + 4 * WIDE + 64) * 2.0**-51


def _harder_clip_allowance(per_example_values: np.ndarray, sizes: list[int], clip_norm: float) -> float:
    """How far the compiled per-unit sum may lie from the exact one (L2), by that margin."""
    allowance = 0.0
    for rows in unit_slices(sizes):
        block = per_example_values[rows]
        block = block[np.all(np.isfinite(block), axis=1)]
        with np.errstate(over="ignore", invalid="ignore"):
            summed = float(np.linalg.norm(block.sum(axis=0)))
            spread = float(np.linalg.norm(block, axis=1).sum())
        if summed > 0 and np.isfinite(summed) and np.isfinite(spread):
            allowance += min(summed, clip_norm) * min(1.0, MARGIN * spread**2 / (2 * summed**2))
    return allowance


def _assert_within(
    got: np.ndarray, expected: np.ndarray, allowance: float, bound: float, what: str, *, loose: bool
) -> None:
    """``got`` within ``allowance`` of ``expected`` (L2), plus the float tolerance of :func:`_assert_close`."""
    distance = float(np.linalg.norm(got - expected))
    relative, absolute = (1e-5, 1e-5) if loose else (RTOL, 1e-9)
    assert distance <= allowance + absolute * bound + relative * float(np.linalg.norm(expected)), (
        f"{what}: {distance:.3g} apart, {allowance:.3g} allowed"
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(gradient_cases())), data=st.data())
def test_removing_one_unit_moves_the_clipped_gradient_sum_by_at_most_c(name: str, data: st.DataObject) -> None:
    case = gradient_cases()[name]
    sizes, x, y = data.draw(unit_rows(case), label="units")
    values = per_example(case, x, y)
    expected = unit_clipped_reference(values, sizes, C)
    allowance = _harder_clip_allowance(values, sizes, C)
    results = {}
    for mode, wrapper in wrappers(name, GraphRole.GRADIENT).items():
        full = wrapper.clipped_sum(case.params, unit_batch(x, y, sizes), C)
        assert np.all(np.isfinite(full)), mode
        slack = BATCH_ROUNDING_SLACK if case.float32_products and mode is RuntimeMode.BATCHED else SLACK
        for unit in range(len(sizes)):
            moved = np.linalg.norm(full - wrapper.clipped_sum(case.params, without_unit(x, y, sizes, unit), C))
            assert moved <= C * (1 + slack), f"{mode}: unit {unit} of {sizes} moves the sum by {moved / C:.6g} C"
        what = f"{mode} against the per-unit reference"
        if mode is RuntimeMode.BATCHED:
            _assert_within(full, expected, allowance, C, what, loose=case.float32_products)
        else:
            _assert_close(full, expected, C, what, loose=case.float32_products)
        results[mode] = full
    if RuntimeMode.BATCHED in results:
        _assert_within(
            results[RuntimeMode.BATCHED],
            results[RuntimeMode.SCAN],
            allowance,
            C,
            "BATCHED vs SCAN",
            loose=case.float32_products,
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(evaluation_cases())), data=st.data())
def test_removing_one_unit_moves_each_metric_sum_by_at_most_its_bound(name: str, data: st.DataObject) -> None:
    case = evaluation_cases()[name]
    bounds = case.bounds()
    sizes, x, y = data.draw(unit_rows(case), label="units")
    expected = unit_metric_reference(per_example(case, x, y), sizes, case.manifest)
    results = {}
    for mode, wrapper in wrappers(name, GraphRole.EVALUATION).items():
        full = wrapper.clipped_sum(case.params, unit_batch(x, y, sizes))
        assert np.all(np.isfinite(full)), mode
        for unit in range(len(sizes)):
            moved = np.abs(full - wrapper.clipped_sum(case.params, without_unit(x, y, sizes, unit)))
            assert np.all(moved <= bounds * (1 + SLACK)), f"{mode}: unit {unit} of {sizes} moves {moved} > {bounds}"
            for group in case.manifest.metric_groups:
                # A group together: by at most its bound in L2, not one bound per metric.
                shift = float(np.linalg.norm(moved[list(group.members)]))
                assert shift <= group.bound * (1 + SLACK), f"{mode}: unit {unit} moves group {group.name} by {shift}"
        _assert_close(full, expected, float(bounds.max()), f"{mode} vs reference", loose=case.float32_products)
        results[mode] = full
    if RuntimeMode.BATCHED in results:
        _assert_close(
            results[RuntimeMode.BATCHED],
            results[RuntimeMode.SCAN],
            float(bounds.max()),
            "BATCHED vs SCAN",
            loose=case.float32_products,
        )


def test_graphs_the_compiler_refuses_are_still_covered_in_scan() -> None:
    """The position graph (CumSum) is refused by the batching compiler, so the property
    above checks it in SCAN (AUTO's fallback, asserted in ``wrappers``); the other hostile
    graphs and the outer-product graphs are batched, so both modes are checked."""
    assert set(wrappers("new/cumsum_position", GraphRole.GRADIENT)) == {RuntimeMode.SCAN}
    for name in ("new/batch_size_gain", "new/reduce_axis0", "outer_product_x1", "outer_product_x1e+19", "zoo/mlp_tanh"):
        assert RuntimeMode.BATCHED in wrappers(name, GraphRole.GRADIENT), name


# -- rows are summed per unit before the clip ------------------------------------------------


def _echo() -> GraphCase:
    return gradient_cases()["new/echo"]


def _direction(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).normal(size=F)
    return g / np.linalg.norm(g)


MODES = (RuntimeMode.SCAN, RuntimeMode.BATCHED)


@pytest.mark.parametrize("mode", MODES)
def test_a_units_rows_are_summed_before_the_clip(mode: RuntimeMode) -> None:
    """Two rows of gradient g, |g| = 0.6 C: the unit's sum (1.2 C) is clipped to C. Per-row
    clipping would leave both rows alone and release 1.2 C."""
    wrapper = wrappers("new/echo", GraphRole.GRADIENT)[mode]
    g = (0.6 * C * _direction()).astype(np.float32)
    x = np.stack([g, g])
    y = np.zeros(2, np.float32)
    got = wrapper.clipped_sum(_echo().params, unit_batch(x, y, [2]), C)
    np.testing.assert_allclose(got[:F], C * g / np.linalg.norm(g.astype(np.float64)), rtol=1e-6)
    assert np.linalg.norm(got) == pytest.approx(C, rel=1e-6)
    # The same rows as two units (or without units): each row its own unit, 1.2 C.
    for batch in (unit_batch(x, y, [1, 1]), RowBatch(x, y)):
        assert np.linalg.norm(wrapper.clipped_sum(_echo().params, batch, C)) == pytest.approx(1.2 * C, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_rows_that_cancel_within_a_unit_are_clipped_as_their_sum(mode: RuntimeMode) -> None:
    """Rows g and -g/2 with |g| = 3 C: per row they clip to C and -C (sum 0); the unit's sum
    g/2 has norm 1.5 C and clips to C along g."""
    wrapper = wrappers("new/echo", GraphRole.GRADIENT)[mode]
    d = _direction(1)
    x = np.stack([3 * C * d, -1.5 * C * d]).astype(np.float32)
    y = np.zeros(2, np.float32)
    got = wrapper.clipped_sum(_echo().params, unit_batch(x, y, [2]), C)
    np.testing.assert_allclose(got[:F], C * d, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(wrapper.clipped_sum(_echo().params, RowBatch(x, y), C), 0.0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_non_finite_row_counts_as_zeros_and_the_rest_of_its_unit_still_counts(mode: RuntimeMode) -> None:
    wrapper = wrappers("new/echo", GraphRole.GRADIENT)[mode]
    x = np.array([[0.1, 0, 0, 0], [np.nan, 0, 0, 0], [0, 0.2, 0, 0], [np.inf, 1, 1, 1]], np.float32)
    y = np.zeros(4, np.float32)
    got = wrapper.clipped_sum(_echo().params, unit_batch(x, y, [3, 1]), C)
    np.testing.assert_allclose(got, [0.1, 0.2, 0, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("last", [np.nan, np.inf, 3e38, 1e20, 5.0])
def test_the_padding_rows_copy_the_last_row_and_add_nothing(last: float) -> None:
    """The compiled wrapper fills its blocks up with copies of the run's last row (a Gather
    of position -1): whatever that row holds, the copies add nothing, and the sum is Scan's."""
    by_mode = wrappers("new/echo", GraphRole.GRADIENT)
    x = (np.random.default_rng(5).normal(size=(5, F)) * 0.3 * C).astype(np.float32)
    x[-1, 0] = last
    y = np.zeros(5, np.float32)
    assert (UnitBlocks.of(np.array([3, 2], np.int64)).order < 0).sum() == 11  # 5 rows in a block of 16
    batch = unit_batch(x, y, [3, 2])
    expected = by_mode[RuntimeMode.SCAN].clipped_sum(_echo().params, batch, C)
    got = by_mode[RuntimeMode.BATCHED].clipped_sum(_echo().params, batch, C)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * C)


def test_a_real_row_fed_without_a_unit_counts_as_padding_not_unclipped() -> None:
    """Defence in depth against a layout bug: a real position whose same-unit row is all false
    (as a NaN unit id would give) would measure its unit's norm as 0 and pass unclipped; the
    graph counts it as padding instead. The layout never feeds one (UnitBlocks)."""
    case = gradient_cases()["new/echo"]
    model = build_batched_wrapper(case.graph, case.manifest, GraphRole.GRADIENT, units=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {parameter_input(name): np.asarray(value) for name, value in case.params.items()}
    x = np.zeros((2, F), np.float32)
    x[0, 0], x[1, 1] = 100.0, 100.0
    order = np.array([0, 1] + [-1] * 14, np.int64)
    mask = np.zeros((1, 16, 16), np.bool_)
    mask[0, 0, 0] = mask[0, 1, 1] = True
    (consistent,) = session.run(
        [SUM], feeds | {X: x, Y: np.zeros(2, np.float32), ORDER: order, SAME_UNIT: mask, CLIP_NORM: np.array(C)}
    )
    assert np.linalg.norm(consistent) == pytest.approx(np.sqrt(2) * C, rel=1e-6)  # two orthogonal units, each at C
    mask[0, 1, 1] = False
    (broken,) = session.run(
        [SUM], feeds | {X: x, Y: np.zeros(2, np.float32), ORDER: order, SAME_UNIT: mask, CLIP_NORM: np.array(C)}
    )
    assert np.linalg.norm(broken) == pytest.approx(C, rel=1e-6)  # the unmarked row adds nothing


def _assert_shrunk_copy(got: np.ndarray, exact: np.ndarray, what: str) -> float:
    """``got`` = t * ``exact`` with 0 <= t <= 1 (+ float rounding): the compiled path may clip a
    unit harder than Scan (never less), and only along the same direction. Returns t."""
    scale = float(np.dot(got, exact) / np.dot(exact, exact)) if np.any(exact) else 0.0
    assert -1e-9 <= scale <= 1 + 1e-6, f"{what}: {scale}"
    np.testing.assert_allclose(got, scale * exact, rtol=0, atol=1e-6 * C, err_msg=what)
    return scale


@pytest.mark.parametrize("big", [1e20, 1e30, 3e38])
@pytest.mark.parametrize("mode", MODES)
def test_rows_that_cancel_but_for_a_small_part_are_never_released_unclipped(mode: RuntimeMode, big: float) -> None:
    """Rows [big, d, 0, 0] and [-big, d, 0, 0] of one unit: the unit's sum [0, 2d, 0, 0] has
    norm 2d = 2e10 C. A norm computed from the rows' squares and dot products loses d² next
    to big² and would find ~0, releasing 2e10 C. Scan sums the unit exactly and releases C
    along e2. The compiled path clips by an upper bound of the norm (a rounding margin
    proportional to (sum of the rows' norms)²), so it may shrink such a unit further: it
    releases t * C along e2, 0 <= t <= 1, never more."""
    wrapper = wrappers("new/echo", GraphRole.GRADIENT)[mode]
    d = 1e10 * C
    x = np.array([[big, d, 0, 0], [-big, d, 0, 0], [0.1, 0, 0, 0]], np.float32)
    y = np.zeros(3, np.float32)
    got = wrapper.clipped_sum(_echo().params, unit_batch(x, y, [2, 1]), C)
    exact = np.array([0.1, C, 0, 0, 0])
    if mode is RuntimeMode.SCAN:
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-9 * C)
    else:
        np.testing.assert_allclose(got[0], 0.1, rtol=1e-6)
        _assert_shrunk_copy(got - [0.1, 0, 0, 0, 0], exact - [0.1, 0, 0, 0, 0], f"{mode} big={big:g}")
    for unit in (0, 1):
        without = wrapper.clipped_sum(_echo().params, without_unit(x, y, [2, 1], unit), C)
        assert np.linalg.norm(got - without) <= C * (1 + SLACK)


@pytest.mark.parametrize(
    "sizes",
    [
        [ROWS_PER_RUN + 44],  # one unit larger than a batched run
        [ROWS_PER_RUN - 6, 20, 30],  # the second unit straddles the first run's end
        [1] * (ROWS_PER_RUN - 1) + [2, 100],  # a two-row unit across the boundary
    ],
    ids=["unit_over_one_run", "unit_straddles_runs", "pair_straddles_runs"],
)
@pytest.mark.parametrize("mode", MODES)
def test_units_are_not_cut_where_the_batched_path_splits_its_runs(mode: RuntimeMode, sizes: list[int]) -> None:
    """The batched path runs ROWS_PER_RUN rows at a time; a unit across two runs must still
    be clipped once, as a whole. Every row's gradient is 0.04 C along one direction, so any
    unit of more than 25 rows sums past C and must release exactly C."""
    wrapper = wrappers("new/echo", GraphRole.GRADIENT)[mode]
    d = _direction(2)
    n = sum(sizes)
    x = np.tile((0.04 * C * d).astype(np.float32), (n, 1))
    y = np.zeros(n, np.float32)
    got = wrapper.clipped_sum(_echo().params, unit_batch(x, y, sizes), C)
    per_unit = [min(C, size * 0.04 * C) for size in sizes]
    np.testing.assert_allclose(got[:F], sum(per_unit) * d, rtol=1e-5)
    for unit in range(len(sizes)):
        without = wrapper.clipped_sum(_echo().params, without_unit(x, y, sizes, unit), C)
        assert np.linalg.norm(got - without) <= C * (1 + SLACK)


@pytest.mark.parametrize("mode", MODES)
def test_a_units_metrics_count_as_their_mean(mode: RuntimeMode) -> None:
    """PICK's metrics are x[k] * y: a unit of 4 rows whose 'correct' is 1 each adds 1 (its
    mean), not 4; removing it moves 'correct' by at most its bound 1."""
    case = evaluation_cases()["malicious/pick"]
    wrapper = wrappers("malicious/pick", GraphRole.EVALUATION)[mode]
    x = np.array([[2.0, 1.0, 0.5, 0]] * 4 + [[20.0, np.nan, 0.25, 0]], np.float32)
    y = np.ones(5, np.float32)
    got = wrapper.clipped_sum(case.params, unit_batch(x, y, [4, 1]))
    np.testing.assert_allclose(got, [2.0 + 10.0, 1.0 + 0.0, 0.5 + 0.25], rtol=1e-9)


def test_without_unit_starts_every_row_is_its_own_unit() -> None:
    """``unit_starts=None`` keeps the per-row behaviour: equal to one unit per row."""
    for name in ("malicious/scaled_1e6", "outer_product_x1", "zoo/mlp_tanh"):
        case = gradient_cases()[name]
        rng = np.random.default_rng(4)
        x = (rng.normal(size=(40, case.features)) * 3).astype(np.float32)
        y = case.labels(rng, 40)
        for mode, wrapper in wrappers(name, GraphRole.GRADIENT).items():
            per_row = wrapper.clipped_sum(case.params, RowBatch(x, y), C)
            units = wrapper.clipped_sum(case.params, unit_batch(x, y, [1] * 40), C)
            np.testing.assert_allclose(units, per_row, rtol=1e-9, atol=1e-12, err_msg=f"{name} {mode}")


def test_select_units_keeps_whole_units_and_renumbers_their_starts() -> None:
    sizes = [3, 1, 4, 2]
    x = np.arange(10 * F, dtype=np.float32).reshape(10, F)
    y = np.arange(10, dtype=np.float32)
    batch = unit_batch(x, y, sizes)
    assert batch.units == 4
    select = getattr(batch, "select_units", batch.select)  # the design's name, or select(mask per unit)
    chosen = select(np.array([True, False, True, False]))
    expected = unit_batch(np.concatenate([x[0:3], x[4:8]]), np.concatenate([y[0:3], y[4:8]]), [3, 4])
    np.testing.assert_array_equal(chosen.x, expected.x)
    np.testing.assert_array_equal(chosen.y, expected.y)
    np.testing.assert_array_equal(chosen.unit_starts, starts_of([3, 4]))
    assert chosen.units == 2
    assert select(np.zeros(4, bool)).size == 0


# -- weight gradients (outer products) that cancel within a unit -------------------------------

CANCEL_SIZES = [2, 2, 3, 9]  # pairs of rows (the batched path's pairwise norm) and a larger unit


@pytest.mark.parametrize("mode", MODES)
def test_weight_gradients_that_cancel_within_a_unit_are_still_bounded(mode: RuntimeMode) -> None:
    """Visits of one patient whose weight gradients u vᵀ cancel but for a 1e-8 detail: the
    unit's sum is tiny next to each row's, and a Gram-matrix norm of it (the compiled path
    never materialises u vᵀ) cancels catastrophically in float64. Removing any unit moves
    the sum by at most C, the sum is finite, and each unit's compiled contribution is Scan's
    or a shrunk copy of it (the compiled path clips by an upper bound of the norm)."""
    case = gradient_cases()["hostile/cancelling_outer"]
    wrapper = wrappers("hostile/cancelling_outer", GraphRole.GRADIENT)[mode]
    scan = wrappers("hostile/cancelling_outer", GraphRole.GRADIENT)[RuntimeMode.SCAN]
    for seed in range(40):
        x, y = patient_visits(np.random.default_rng(seed), CANCEL_SIZES)
        full = wrapper.clipped_sum(case.params, unit_batch(x, y, CANCEL_SIZES), C)
        assert np.all(np.isfinite(full)), f"seed {seed}: a non-finite release"
        for unit, rows in enumerate(unit_slices(CANCEL_SIZES)):
            without = wrapper.clipped_sum(case.params, without_unit(x, y, CANCEL_SIZES, unit), C)
            moved = float(np.linalg.norm(full - without)) / C
            assert moved <= 1 + SLACK, f"seed {seed}: unit {unit} moves the sum by {moved:.6g} C"
            alone = unit_batch(x[rows], y[rows], [rows.stop - rows.start])
            _assert_shrunk_copy(
                wrapper.clipped_sum(case.params, alone, C), scan.clipped_sum(case.params, alone, C), f"seed {seed}"
            )


# -- sampling by unit (dp_gradient, sigma = 0: the released sum says which rows it holds) ---------

SAMPLED_SIZES = [1, 1, 2, 3, 5, 8, 13, 1, 4, 6, 10, 2, 7, 1]  # 64 rows in 14 units
STEPS = 600
Q = 0.3


def _one_hot_rows(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n = sum(sizes)
    assert n <= WIDE
    return np.eye(WIDE, dtype=np.float32)[:n], np.zeros(n, np.float32)


def _rows_in_release(release: GradientRelease, n: int) -> np.ndarray:
    values = np.asarray(release.sums["w"], np.float64)[:n]
    # Each row is a distinct one-hot vector and C is far above any unit's norm: exactly 0 or 1.
    assert np.all((np.abs(values) < 1e-6) | (np.abs(values - 1) < 1e-6)), values
    return values > 0.5


@pytest.mark.parametrize("units_per_batch", [3, 100])
def test_units_are_sampled_whole_and_at_rate_q(units_per_batch: int) -> None:
    graph, manifest = wide_echo()
    wrapper = CompiledWrapper(graph, manifest, GraphRole.GRADIENT)
    x, y = _one_hot_rows(SAMPLED_SIZES)
    source = UnitArraySource(x, y, SAMPLED_SIZES, units_per_batch=units_per_batch)
    params = {"w": np.zeros(WIDE, np.float32), "b": np.zeros((), np.float32)}
    settings = GradientSettings(clip_norm=1e6, noise_multiplier=0.0, sampling_rate=Q)
    randomness = Randomness(sampling=np.random.default_rng(20), noise=np.random.default_rng(21))
    slices = unit_slices(SAMPLED_SIZES)
    included = np.zeros((STEPS, len(SAMPLED_SIZES)), bool)
    for step in range(STEPS):
        release = dp_gradient(
            wrapper, source, params, settings, controls=Controls(pad_timing=False), randomness=randomness
        )
        rows = _rows_in_release(release, x.shape[0])
        for unit, part in enumerate(slices):
            # All of a unit's rows, or none: never part of a patient.
            assert rows[part].all() or not rows[part].any(), f"step {step}: unit {unit} sampled partially"
            included[step, unit] = rows[part].all()
    # Each unit, whatever its size, in with probability q: Binomial(STEPS, q), within 4.5 sd
    # (a fixed seed; 4.5 sd leaves a family-wise error of ~1e-4 over 14 units for another seed).
    sd = np.sqrt(STEPS * Q * (1 - Q))
    counts = included.sum(axis=0)
    assert np.all(np.abs(counts - STEPS * Q) <= 4.5 * sd), counts
    # Units are drawn independently, not as one block: the big units are together in about
    # q² of the steps, not in q of them (nor never).
    both = int((included[:, 5] & included[:, 6]).sum())
    assert abs(both - STEPS * Q * Q) <= 4.5 * np.sqrt(STEPS * Q * Q * (1 - Q * Q)), both


# -- max_rows_per_unit: a capped unit contributes at most k rows, chosen by the agent ----------

CAPPED_SIZES = [30, 5, 3, 1, 4, 5, 2, 5, 4, 5]  # 64 rows; only the first unit exceeds the cap
CAP = 5


def _capped_source(seed: int, sizes: list[int], *, drop_unit: int | None = None) -> object:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from agent.runtime.unit_rows import UnitRowSource

    _, manifest = wide_echo()
    n = sum(sizes)
    units = np.repeat(np.arange(len(sizes)), sizes)
    keep = units != drop_unit
    eye = np.eye(WIDE)[:n][keep]
    columns = {f"f{i}": pa.array(eye[:, i]) for i in range(WIDE)}
    columns["label"] = pa.array(np.zeros(int(keep.sum())))
    columns["patient_id"] = pa.array(units[keep] * 7 + 3)  # any ids; rows of a unit adjacent or not
    source = UnitRowSource(
        ds.dataset(pa.table(columns)),
        manifest,
        "patient_id",
        max_rows_per_unit=CAP,
        memory_bytes=1 << 26,
        rng=np.random.default_rng(seed),
    )
    source.prepare()
    return source


def _released_rows(source: object, steps: int, seed: int, clip_norm: float = 1e6) -> list[np.ndarray]:
    graph, manifest = wide_echo()
    wrapper = CompiledWrapper(graph, manifest, GraphRole.GRADIENT)
    params = {"w": np.zeros(WIDE, np.float32), "b": np.zeros((), np.float32)}
    settings = GradientSettings(clip_norm=clip_norm, noise_multiplier=0.0, sampling_rate=1.0)
    randomness = Randomness(sampling=np.random.default_rng(seed), noise=np.random.default_rng(seed + 1))
    return [
        np.asarray(
            dp_gradient(
                wrapper,
                source,
                params,
                settings,
                controls=Controls(pad_timing=False),
                randomness=randomness,  # type: ignore[arg-type]
            ).sums["w"],
            np.float64,
        )
        for _ in range(steps)
    ]


def test_a_unit_contributes_at_most_max_rows_per_unit_rows_chosen_by_the_agent() -> None:
    slices = unit_slices(CAPPED_SIZES)
    chosen = []
    for task_seed in range(4):
        releases = _released_rows(_capped_source(task_seed, CAPPED_SIZES), steps=3, seed=task_seed)
        rows = [r > 0.5 for r in releases]
        # The same rows in every step of one task (chosen once per task).
        assert all(np.array_equal(rows[0], r) for r in rows[1:])
        for unit, part in enumerate(slices):
            assert rows[0][part].sum() == min(CAP, CAPPED_SIZES[unit]), unit
        chosen.append(tuple(np.flatnonzero(rows[0][slices[0]])))
    # Another task, other rows of the capped unit (C(30, 5) = 142506 choices).
    assert len(set(chosen)) == len(chosen), chosen


def test_removing_a_capped_unit_moves_the_sum_by_at_most_c() -> None:
    """One-hot rows scaled by nothing: each unit's sum has norm sqrt(rows) > C = 0.75 for any
    unit of 1+ rows, so every unit is clipped; removing the capped unit (or another) moves the
    release by at most C."""
    full = _released_rows(_capped_source(9, CAPPED_SIZES), steps=1, seed=9, clip_norm=C)[0]
    for unit in (0, 1, 3):
        without = _released_rows(_capped_source(9, CAPPED_SIZES, drop_unit=unit), steps=1, seed=9, clip_norm=C)[0]
        # The release is float32 (GradientRelease.sums): its rounding, ~6e-8 relative, on top.
        assert np.linalg.norm(full - without) <= C * (1 + 1e-6), unit
