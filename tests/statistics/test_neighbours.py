"""Removing one patient moves every block by at most its sensitivity (random tables and plans).

The sensitivities of agent/packages/release_layout.py hold only because the agent keeps one row
per patient. The row is chosen with a key per row drawn before any filter, so that the
neighbouring table (all of one unit's rows removed, with their keys) leaves every other
unit's choice unchanged: the two tables' patients differ in that unit's one row only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.packages.manifest import plan_lacks
from agent.packages.release_layout import layout
from agent.statistics.patients import patient_table, patient_table_keyed
from agent.statistics.tables import exact_release

from .helpers import TABLE_KINDS, plan_of

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _masked(rng: np.random.Generator, values: np.ndarray, rate: float) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < rate)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """1 to 6 units of 1 to 50 rows each, rows shuffled; every column may hold nulls (floats NaN too)."""
    sizes = draw(st.lists(st.integers(1, 50), min_size=1, max_size=6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = sum(sizes)
    unit = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    x = rng.normal(0.0, 50.0, rows)
    x[rng.random(rows) < 0.1] = np.nan
    x[rng.random(rows) < 0.03] = np.inf
    time = rng.uniform(-1.0, 30.0, rows)
    time[rng.random(rows) < 0.1] = np.nan
    c = _masked(rng, rng.choice(["p", "q", "r", "z"], rows), 0.1)
    columns: dict[str, Any] = {
        "u": pa.array([f"unit-{u}" for u in unit]) if draw(st.booleans()) else pa.array(unit),
        "s1": _masked(rng, rng.choice(["a", "b", "c"], rows), 0.1),
        "s2": _masked(rng, rng.integers(0, 3, rows), 0.1),
        "b": _masked(rng, rng.random(rows) < 0.5, 0.1),
        "x": _masked(rng, x, 0.05),
        "y": _masked(rng, rng.integers(-5, 21, rows), 0.1),
        "c": c.dictionary_encode() if draw(st.booleans()) else c,
        "t": _masked(rng, time, 0.05),
        "e": draw(
            st.sampled_from(
                [
                    _masked(rng, rng.random(rows) < 0.5, 0.1),
                    _masked(rng, rng.integers(0, 3, rows), 0.1),
                    pa.array(np.where(rng.random(rows) < 0.1, np.nan, rng.integers(0, 2, rows).astype(float))),
                ]
            )
        ),
    }
    table = pa.table(columns)
    # Several record batches, as a dataset read file by file gives them.
    return pa.Table.from_batches(table.to_batches(max_chunksize=draw(st.integers(1, 80))))


def _bounds(draw: st.DrawFn) -> tuple[float, float, list[float]]:
    low = draw(st.integers(-100, 50))
    high = low + draw(st.integers(1, 150))
    inner = sorted(draw(st.sets(st.integers(low + 1, high - 1), max_size=5))) if high - low > 1 else []
    bins = [float(low), *map(float, inner), float(high)] if draw(st.booleans()) else []
    return float(low), float(high), bins


FILTERS = [
    {"column": "x", "op": "<", "value": 20},
    {"column": "y", "op": ">=", "value": 0},
    {"column": "y", "op": "in", "values": [1, 2, 3, 5, 8, 13]},
    {"column": "s1", "op": "==", "value": "a"},
    {"column": "s2", "op": "!=", "value": 1},
    {"column": "c", "op": "in", "values": ["p", "z"]},
    {"column": "t", "op": "not_null"},
    {"column": "b", "op": "==", "value": True},
    {"column": "x", "op": "!=", "value": 0},
]


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    strata_options = {
        "s1": ["a", "b", "c", "zz"],
        "s2": [0, 1, 2, 7],
        "b": [True, False],
    }
    strata = []
    for column in draw(st.lists(st.sampled_from(sorted(strata_options)), unique=True, max_size=2)):
        options = strata_options[column]
        categories = draw(st.lists(st.sampled_from(options), unique=True, min_size=1, max_size=len(options)))
        strata.append({"column": column, "categories": categories})
    taken = {s["column"] for s in strata}
    variables: list[dict[str, Any]] = []
    for column in ("x", "y"):
        if draw(st.booleans()):
            low, high, bins = _bounds(draw)
            variable: dict[str, Any] = {"column": column, "kind": "numeric", "bounds": [low, high]}
            if bins:
                variable["bins"] = bins
            variables.append(variable)
    if draw(st.booleans()):
        variables.append({"column": "c", "kind": "categorical", "categories": ["p", "q"]})
    if "b" not in taken and draw(st.booleans()):
        variables.append({"column": "b", "kind": "categorical", "categories": [True]})
    plan: dict[str, Any] = {
        "cohort": draw(st.lists(st.sampled_from(FILTERS), max_size=3)),
        "strata": strata,
        "variables": variables,
    }
    if draw(st.booleans()) or not (variables or strata):
        grid = sorted(draw(st.sets(st.floats(0.5, 35.0, allow_nan=False), min_size=1, max_size=8)))
        plan["survival"] = {"time_column": "t", "event_column": "e", "grid": grid}
    return plan


@SETTINGS
@given(table=tables(), plan_json=plans(), data=st.data())
def test_removing_one_patient_moves_each_block_by_at_most_its_sensitivity(
    table: pa.Table, plan_json: dict[str, Any], data: st.DataObject
) -> None:
    plan = plan_of(plan_json)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    keys = rng.permutation(table.num_rows)
    units = table.column("u").to_pylist()
    removed = data.draw(st.sampled_from(sorted(set(units), key=str)))
    stays = np.array([u != removed for u in units])

    full = patient_table_keyed(plan, table, unit_column="u", keys=keys)
    neighbour = patient_table_keyed(plan, table.filter(pa.array(stays)), unit_column="u", keys=keys[stays])

    # Every other unit keeps the very same row: the keys of its rows did not change.
    kept_full = {int(r) for r in full.rows if units[r] != removed}
    kept_neighbour = {int(r) for r in np.flatnonzero(stays)[neighbour.rows]}
    assert kept_neighbour == kept_full
    assert len({units[r] for r in full.rows}) == full.size  # one row per unit
    assert full.size - neighbour.size in (0, 1)

    # What the removed unit adds: its one kept row, if any, on its own.
    own = [int(r) for r in full.rows if units[r] == removed]
    alone = patient_table_keyed(plan, table.take(pa.array(own, pa.int64())), unit_column=None, keys=None)
    for kind in TABLE_KINDS:
        if plan_lacks(plan, kind) is not None:
            continue
        release = layout(plan, kind)
        before = exact_release(plan, release, full)
        after = exact_release(plan, release, neighbour)
        added = exact_release(plan, release, alone)
        for block in release.blocks:
            np.testing.assert_allclose(before[block.name] - after[block.name], added[block.name], atol=1e-6)
            moved = float(np.linalg.norm(before[block.name] - after[block.name]))
            assert moved <= block.sensitivity * (1 + 1e-9) + 1e-9, (block.name, moved, block.sensitivity)
            # And the patient is in one stratum at most: the other strata do not move.
            assert np.count_nonzero(np.any(before[block.name] != after[block.name], axis=1)) <= 1


@SETTINGS
@given(table=tables(), plan_json=plans())
def test_a_table_with_one_row_per_unit_is_the_same_with_or_without_the_unit_column(
    table: pa.Table, plan_json: dict[str, Any]
) -> None:
    # Keep the first row of each unit: then the unit column changes nothing.
    units = table.column("u").to_pylist()
    first = sorted({u: i for i, u in reversed(list(enumerate(units)))}.values())
    single = table.take(pa.array(first))
    plan = plan_of(plan_json)
    with_unit = patient_table(plan, single, unit_column="u", rng=np.random.default_rng(0))
    without = patient_table(plan, single, unit_column=None, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(with_unit.rows, without.rows)
    np.testing.assert_array_equal(with_unit.stratum, without.stratum)


def test_the_kept_row_is_uniform_among_a_units_rows() -> None:
    # 1000 units of 3 rows holding 0, 1, 2: each value should be kept for about a third.
    units = np.repeat(np.arange(1000), 3)
    values = np.tile([0.0, 1.0, 2.0], 1000)
    order = np.random.default_rng(5).permutation(len(units))
    table = pa.table({"u": units[order], "v": values[order]})
    plan = plan_of({"variables": [{"column": "v", "kind": "numeric", "bounds": [0, 3]}]})
    rng = np.random.default_rng(11)
    counts = np.zeros(3)
    for _ in range(4):
        patients = patient_table(plan, table, unit_column="u", rng=rng)
        assert patients.size == 1000
        counts += np.bincount(patients.numbers["v"].astype(int), minlength=3)
    # 4000 draws: each count is 1333 ± 30 (sd); 5 sd of slack.
    assert np.all(np.abs(counts - 4000 / 3) < 150), counts


def test_keys_must_be_distinct_and_one_per_row() -> None:
    table = pa.table({"u": [1, 1, 2], "v": [1.0, 2.0, 3.0]})
    plan = plan_of({"variables": [{"column": "v", "kind": "numeric", "bounds": [0, 5]}]})
    for keys in (np.array([0, 0, 1]), np.array([0, 1]), None):
        try:
            patient_table_keyed(plan, table, unit_column="u", keys=keys)
        except ValueError:
            continue
        raise AssertionError(f"keys {keys} were accepted")
