"""Attacks on dp_glm's Cox release (agent.statistics.glm.cox_sums, release_layout.cox_blocks):
what one patient can move for hostile coefficients, caps, grids and data values, and the plan
parser's Cox fields. The first three reproduce problems a review found (a cap rounded in log
space at large predictors, a subnormal cap, a clip of the predictor that changed releases)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import agent.statistics.glm as glm
from agent.packages.errors import PackageRejected
from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import GLM_BASELINE_INFORMATION, GLM_COUNT, analysed, layout
from agent.statistics.glm import exact_model_release
from agent.statistics.patients import patient_table_keyed

from .helpers import plan_of


def cox_plan(grid: list[float], hazard: float | None = None, covariates: int = 1) -> AnalysisPlan:
    model: dict[str, Any] = {"family": "cox", "covariates": [f"x{i}" for i in range(covariates)]}
    if hazard is not None:
        model["max_cumulative_hazard"] = hazard
    return plan_of(
        {
            "variables": [{"column": f"x{i}", "kind": "numeric", "bounds": [0, 1]} for i in range(covariates)],
            "survival": {"time_column": "t", "event_column": "e", "grid": grid},
            "model": model,
        }
    )


def one_patient(plan: AnalysisPlan, theta: Any, t: float = np.inf, e: Any = 0, x: float = 1.0) -> dict[str, np.ndarray]:
    """The dp_glm blocks of a one-patient table (covariates x0.. all ``x``)."""
    assert plan.model is not None
    columns: dict[str, Any] = {"t": [t], "e": [e]}
    for variable in plan.model.covariates:
        columns[variable.column] = [x]
    patients = patient_table_keyed(analysed(plan, TaskKind.DP_GLM), pa.table(columns), unit_column=None, keys=None)
    return exact_model_release(plan, patients, np.asarray(theta, dtype=np.float64))


def ratios(plan: AnalysisPlan, blocks: dict[str, np.ndarray]) -> dict[str, float]:
    """Each block's L2 norm over its sensitivity (scaled first: a subnormal block's squares underflow)."""
    release = layout(plan, TaskKind.DP_GLM)
    out = {}
    for block in release.blocks:
        values = blocks[block.name]
        assert np.isfinite(values).all(), block.name
        out[block.name] = float(np.linalg.norm(values / block.sensitivity))
    return out


# -- problems found ---------------------------------------------------------------------------


def test_one_patient_stays_within_every_sensitivity_near_the_log_hazard_clip() -> None:
    plan = cox_plan([1.0, 2.0, 3.0], hazard=3.0)
    # Found by a search over α near the ±1e4 clip: glm.score and glm.information reach 3 + 1.5e-12.
    found = one_patient(plan, [9999.473033138192, 9997.41046323295, 9998.375616339254, 0.0])
    assert all(ratio <= 1.0 for ratio in ratios(plan, found).values()), ratios(plan, found)
    rng = np.random.default_rng(0)
    for hazard in (0.001, 0.5, 3.0):
        swept = cox_plan([1.0, 2.0, 3.0], hazard=hazard)
        for _ in range(300):
            blocks = one_patient(swept, np.append(1e4 - rng.uniform(0, 3, 3), 0.0))
            assert all(ratio <= 1.0 for ratio in ratios(swept, blocks).values()), (hazard, ratios(swept, blocks))


@pytest.mark.parametrize(("hazard", "intervals"), [(1e-323, 3), (1e-322, 39)])
def test_a_subnormal_cap_is_refused_or_holds(hazard: float, intervals: int) -> None:
    # Λ of 2 (or 20) subnormal ulps over 3 (or 39) equal intervals: 0.67 (or 0.51) ulp each, rounded up.
    try:
        plan = cox_plan([float(j + 1) for j in range(intervals)], hazard=hazard)
    except PackageRejected:
        return
    blocks = one_patient(plan, np.zeros(intervals + 1))  # a hazard of 1 per unit of time: clamped, spread evenly
    assert blocks[GLM_COUNT].tolist() == [[0.0, 1.0, 0.0]]
    assert all(ratio <= 1.0 for ratio in ratios(plan, blocks).values()), ratios(plan, blocks)


def test_shifting_every_baseline_of_a_clamped_patient_changes_nothing() -> None:
    """A clamped patient's μ is scaled to Λ: it depends on the α_j's differences alone."""
    plan = cox_plan([1.0, 2.0], hazard=2.0)
    near = one_patient(plan, [30.0, 0.0, 0.0], x=0.5)
    far = one_patient(plan, [1e4 + 30.0, 1e4, 0.0], x=0.5)
    np.testing.assert_allclose(far[GLM_BASELINE_INFORMATION], near[GLM_BASELINE_INFORMATION], rtol=1e-9, atol=1e-12)


# -- attacks that held ------------------------------------------------------------------------

TIMES = [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf, 1e308, 5e-324, 2.2e-308, 1e9, 0.5, 3.0, 52.0]
EVENTS: list[Any] = [0.0, 1.0, np.nan, np.inf, -np.inf, 5e-324, -1.0, 0.5]
COEFFICIENTS = [1e9, -1e9, 0.0, 1e4, -1e4, 700.0, -745.0, 3.0]


@pytest.mark.parametrize("hazard", [0.001, 2.0, 1000.0])
@pytest.mark.parametrize("grid", [[1.0], [5e-324, 1e-300, 1.0, 1e9], [float(j + 1) for j in range(63)]])
def test_hostile_values_and_coefficients_give_finite_blocks_within_their_sensitivities(
    hazard: float, grid: list[float]
) -> None:
    plan = cox_plan(grid, hazard=hazard, covariates=1)
    assert plan.model is not None
    rng = np.random.default_rng(len(grid))
    for t in TIMES:
        for e in EVENTS:
            theta = rng.choice(COEFFICIENTS, plan.model.width) + rng.normal(0, 1e-3, plan.model.width)
            blocks = one_patient(plan, theta, t=t, e=e, x=float(rng.choice([np.nan, -1e300, 1e300, 0.5])))
            # 1e-11: the log-space rounding of test_one_patient_stays_within_every_sensitivity_near_the_log_hazard_clip.
            assert all(ratio <= 1.0 + 1e-11 for ratio in ratios(plan, blocks).values()), (t, e, theta)
            count = blocks[GLM_COUNT][0]
            assert count.sum() == 1.0 and set(count.tolist()) <= {0.0, 1.0}


def test_removing_one_patient_moves_each_block_by_their_own_contribution_across_chunks_and_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_of(
        {
            "variables": [
                {"column": "x", "kind": "numeric", "bounds": [-3, 7]},
                {"column": "c", "kind": "categorical", "categories": ["a", "b", "c"]},
            ],
            "survival": {"time_column": "t", "event_column": "e", "grid": [0.5, 1.0, 2.5, 9.0]},
            "model": {"family": "cox", "covariates": ["c", "x"], "max_cumulative_hazard": 1.5},
        }
    )
    glm_plan = analysed(plan, TaskKind.DP_GLM)
    release = layout(plan, TaskKind.DP_GLM)
    rng = np.random.default_rng(5)

    def batch(size: int) -> pa.RecordBatch:
        return pa.record_batch(
            {
                "u": pa.array([f"u{int(i)}" for i in rng.integers(0, 60, size)]),
                "t": pa.array(rng.choice([0.0, -1.0, np.nan, np.inf, 1e300, 5e-324, 0.5, 9.0, 3.3, 12.0], size)),
                "e": pa.array(rng.choice([0.0, 1.0, np.nan, 2.0, -0.0, np.inf], size)),
                "x": pa.array(rng.choice([np.nan, -1e300, 1e300, 2.0, -3.0, 7.0, 0.1], size)),
                "c": pa.array(rng.choice(np.array(["a", "b", "c", "z", None], dtype=object), size).tolist()),
            }
        )

    table = pa.Table.from_batches([batch(40), batch(70), batch(50)])
    units = table.column("u").to_pylist()
    for chunk in (3, 7, glm.CHUNK_ROWS):
        monkeypatch.setattr(glm, "CHUNK_ROWS", chunk)
        for _ in range(10):
            theta = rng.choice(COEFFICIENTS, 7) + rng.normal(0, 1, 7)
            keys = rng.permutation(table.num_rows)
            removed = units[int(rng.integers(0, len(units)))]
            stays = np.array([u != removed for u in units])
            full = patient_table_keyed(glm_plan, table, unit_column="u", keys=keys)
            neighbour = patient_table_keyed(glm_plan, table.filter(pa.array(stays)), unit_column="u", keys=keys[stays])
            own = [int(r) for r in full.rows if units[r] == removed]
            alone = patient_table_keyed(glm_plan, table.take(pa.array(own, pa.int64())), unit_column=None, keys=None)
            before, after, added = (exact_model_release(plan, p, theta) for p in (full, neighbour, alone))
            for block in release.blocks:
                assert np.isfinite(before[block.name]).all()
                scale = max(1.0, float(np.abs(before[block.name]).max()))
                moved = before[block.name] - after[block.name]
                np.testing.assert_allclose(moved, added[block.name], rtol=0, atol=1e-9 * scale)


BASE: dict[str, Any] = {
    "variables": [
        {"column": "x", "kind": "numeric", "bounds": [0, 1]},
        {"column": "g", "kind": "categorical", "categories": ["a", "b"]},
    ],
    "survival": {"time_column": "t", "event_column": "e", "grid": [1, 2]},
}


NOT_NUMBERS: tuple[Any, ...] = (True, False, "2", None, [2], {})


@pytest.mark.parametrize(
    ("model", "change", "words"),
    [
        *(({"max_cumulative_hazard": value}, {}, "must be a number") for value in NOT_NUMBERS),
        *(
            ({"max_cumulative_hazard": value}, {}, "must be finite")
            for value in (float("nan"), float("inf"), float("-inf"))
        ),
        *(
            ({"max_cumulative_hazard": value}, {}, "at least 0.001 and at most 1000")
            for value in (0, -0.0, -1, 1000.0000000000002, 1e300)
        ),
        ({"outcome": None}, {}, "remove it"),
        ({"outcome": "e"}, {}, "remove it"),
        ({"family": "COX"}, {}, "must be one of"),
        ({"extra": 1}, {}, "is not part of the format"),
        ({"covariates": ["x", "x"]}, {}, "listed twice"),
        ({"covariates": ["t"]}, {}, "not a variable of the plan"),
        ({}, {"survival": {"time_column": "t", "event_column": "e", "grid": list(range(1, 64))}}, None),
        (
            {"covariates": ["x", "g"]},
            {"survival": {"time_column": "t", "event_column": "e", "grid": list(range(1, 64))}},
            "more than 64",
        ),
        ({}, {"survival": {"time_column": "t", "event_column": "e", "grid": list(range(1, 1001))}}, "more than 64"),
        (
            {"covariates": ["(baseline) [0, 1]"]},
            {"variables": [{"column": "(baseline) [0, 1]", "kind": "numeric", "bounds": [0, 1]}]},
            "make two design columns named",
        ),
    ],
)
def test_hostile_cox_model_fields_are_refused(model: dict[str, Any], change: dict[str, Any], words: str | None) -> None:
    value = {**BASE, **change, "model": {"family": "cox", "covariates": ["x"], **model}}
    if words is None:  # 63 intervals and one covariate: 64 coefficients, the most allowed
        assert plan_of(value).model.width == 64  # type: ignore[union-attr]
        return
    with pytest.raises(PackageRejected, match="manifest field plan") as caught:
        plan_of(value)
    assert words in str(caught.value)
