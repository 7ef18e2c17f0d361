"""dp_glm's Cox model (agent.statistics.glm.cox_sums): the plan, the sums against an
independent person-period expansion and statsmodels' Poisson GLM, the cap on each patient's
hazard, and what one patient can move (agent.packages.release_layout.cox_blocks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import statsmodels.api as sm
from hypothesis import given
from hypothesis import strategies as st
from lifelines.datasets import load_rossi

from agent.packages.errors import PackageRejected
from agent.packages.manifest import TaskKind, served_kinds
from agent.packages.plan import ModelFamily, parse_plan
from agent.packages.release_layout import (
    GLM_BASELINE_CROSS,
    GLM_BASELINE_INFORMATION,
    GLM_BASELINE_SCORE,
    GLM_COUNT,
    GLM_INFORMATION,
    GLM_SCORE,
    layout,
)
from agent.statistics.glm import cox_sums, exact_model_release, included, upper_triangle

from .helpers import plan_of
from .test_glm import check_one_patients_contribution, coefficients, glm_patients
from .test_neighbours import SETTINGS, _bounds, tables

GRID = [8, 16, 24, 32, 40, 52]
ROSSI_COX: dict[str, Any] = {
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [17, 45]},
        {"column": "prio", "kind": "numeric", "bounds": [0, 20]},
        {"column": "fin", "kind": "categorical", "categories": [0, 1]},
        {"column": "wexp", "kind": "categorical", "categories": [0, 1]},
    ],
    "survival": {"time_column": "week", "event_column": "arrest", "grid": GRID},
    "model": {"family": "cox", "covariates": ["fin", "age", "prio", "wexp"], "max_cumulative_hazard": 1000},
}


def rossi_cox(**model: Any) -> dict[str, Any]:
    plan = {**ROSSI_COX, "model": {**ROSSI_COX["model"], **model}}
    return plan


# -- the plan ----------------------------------------------------------------------------


def test_a_cox_plan_names_its_baseline_then_its_covariates_and_round_trips() -> None:
    plan = plan_of(ROSSI_COX)
    model = plan.model
    assert model is not None and model.family is ModelFamily.COX and model.outcome is None
    assert model.design_names == (
        "(baseline) [0, 8]",
        "(baseline) (8, 16]",
        "(baseline) (16, 24]",
        "(baseline) (24, 32]",
        "(baseline) (32, 40]",
        "(baseline) (40, 52]",
        "fin=1",
        "age",
        "prio",
        "wexp=1",
    )
    assert model.width == 10 and model.max_covariate_norm_squared == 4.0
    assert parse_plan(plan.to_json()) == plan
    assert plan_of({**ROSSI_COX, "model": {"family": "cox", "covariates": ["age"]}}).model.max_cumulative_hazard == 2.0  # type: ignore[union-attr]
    # It reads the survival columns and no outcome of its own; it serves all three plan kinds.
    assert plan.outcome_columns == ("week", "arrest")
    assert served_kinds(plan) == (TaskKind.DP_DESCRIBE, TaskKind.DP_SURVIVAL, TaskKind.DP_GLM)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"model": {"family": "cox", "outcome": "arrest", "covariates": ["age"]}}, "plan.model.outcome", "remove it"),
        ({"survival": None}, "plan.model.family", "declare plan.survival"),
        (
            {"model": {"family": "cox", "covariates": ["age"], "max_cumulative_hazard": 0}},
            "plan.model.max_cumulative_hazard",
            "at least 0.001",
        ),
        (
            {"model": {"family": "cox", "covariates": ["age"], "max_cumulative_hazard": 1e6}},
            "plan.model.max_cumulative_hazard",
            "at most 1000",
        ),
        (
            {"model": {"family": "cox", "covariates": ["age"], "max_cumulative_hazard": "2"}},
            "plan.model.max_cumulative_hazard",
            "must be a number",
        ),
        (
            {"model": {"family": "logistic", "outcome": "arrest", "covariates": ["age"], "max_cumulative_hazard": 2}},
            "plan.model",
            "max_cumulative_hazard",
        ),
        (
            {
                "variables": [{"column": "fin", "kind": "categorical", "categories": [1]}],
                "model": {"family": "cox", "covariates": ["fin"]},
            },
            "plan.model.covariates",
            "two or more categories",
        ),
        (
            {"survival": {"time_column": "week", "event_column": "arrest", "grid": list(range(1, 62))}},
            "plan.model.covariates",
            "or survival grid times",
        ),
        ({"model": {"family": "cox", "covariates": ["week"]}}, "plan.model.covariates[0]", "not a variable"),
    ],
)
def test_a_bad_cox_model_is_refused_naming_the_field(change: dict[str, Any], field: str, words: str) -> None:
    value = {**ROSSI_COX, **{key: item for key, item in change.items() if item is not None}}
    for key, item in change.items():
        if item is None:
            del value[key]
    with pytest.raises(PackageRejected) as caught:
        plan_of(value)
    assert field in str(caught.value) and words in str(caught.value)


# -- the sums against an independent computation -----------------------------------------------


def person_periods(frame: pd.DataFrame) -> pd.DataFrame:
    """rossi expanded to one row per patient and interval at risk, by plain pandas from the
    definitions (not the agent's code): the exposure, whether the event fell in it, the
    covariate columns on the design's scale."""
    rows = []
    edges = [0.0, *map(float, GRID)]
    for index, patient in frame.iterrows():
        for j in range(len(GRID)):
            start, end = edges[j], edges[j + 1]
            if patient.week <= start and not (j == 0 and patient.week == 0):
                break
            exposure = min(patient.week, end) - start
            event = float(patient.arrest == 1 and start < patient.week <= end)
            rows.append({"patient": index, "interval": j, "exposure": exposure, "event": event})
    periods = pd.DataFrame(rows)
    covariates = pd.DataFrame(
        {
            "fin=1": (frame.fin == 1).astype(float),
            "age": (frame.age.clip(17, 45) - 31.0) / 14.0,
            "prio": (frame.prio.clip(0, 20) - 10.0) / 10.0,
            "wexp=1": (frame.wexp == 1).astype(float),
        }
    )
    return periods.join(covariates, on="patient")


COVARIATES = ["fin=1", "age", "prio", "wexp=1"]


def reference_sums(periods: pd.DataFrame, theta: np.ndarray) -> dict[str, np.ndarray]:
    """The Poisson score and information from the person-period rows."""
    alpha, beta = theta[: len(GRID)], theta[len(GRID) :]
    x = periods[COVARIATES].to_numpy()
    mu = periods.exposure.to_numpy() * np.exp(alpha[periods.interval.to_numpy()] + x @ beta)
    residual = periods.event.to_numpy() - mu
    onehot = np.eye(len(GRID))[periods.interval.to_numpy()]
    return {
        GLM_BASELINE_SCORE: onehot.T @ residual,
        GLM_SCORE: x.T @ residual,
        GLM_BASELINE_INFORMATION: onehot.T @ mu,
        GLM_BASELINE_CROSS: (onehot * mu[:, None]).T @ x,
        GLM_INFORMATION: (x * mu[:, None]).T @ x,
    }


def test_the_sums_match_a_person_period_expansion_on_rossi() -> None:
    frame = load_rossi()
    plan = plan_of(ROSSI_COX)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    periods = person_periods(frame)
    rng = np.random.default_rng(3)
    for theta in (
        np.full(10, -np.log(52.0)) * (np.arange(10) < 6),
        np.append(rng.normal(-4, 1, 6), rng.normal(0, 1, 4)),
    ):
        sums = cox_sums(plan.model, patients, theta)
        expected = reference_sums(periods, theta)
        assert (sums.included, sums.clamped, sums.excluded) == (len(frame), 0, 0)
        np.testing.assert_allclose(sums.baseline_score, expected[GLM_BASELINE_SCORE], rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(sums.score, expected[GLM_SCORE], rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(sums.baseline_information, expected[GLM_BASELINE_INFORMATION], rtol=1e-10)
        np.testing.assert_allclose(sums.cross, expected[GLM_BASELINE_CROSS], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sums.information, expected[GLM_INFORMATION], rtol=1e-10, atol=1e-12)
        blocks = exact_model_release(plan, patients, theta)
        assert blocks[GLM_COUNT].tolist() == [[len(frame), 0, 0]]
        np.testing.assert_allclose(blocks[GLM_INFORMATION][0], upper_triangle(expected[GLM_INFORMATION]), rtol=1e-10)
        np.testing.assert_allclose(blocks[GLM_BASELINE_CROSS][0], expected[GLM_BASELINE_CROSS].ravel(), rtol=1e-10)
        assert [name for name in blocks] == [block.name for block in layout(plan, TaskKind.DP_GLM).blocks]


def test_at_statsmodels_poisson_estimate_the_score_vanishes_and_the_information_is_its_precision() -> None:
    """statsmodels' Poisson GLM with offset log(exposure) on the person-period rows is the same
    likelihood: at its estimate the agent's score is 0 and its information inverts to the
    estimate's covariance; Newton-Raphson on the agent's sums reaches it."""
    frame = load_rossi()
    plan = plan_of(ROSSI_COX)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    periods = person_periods(frame)
    design = np.hstack([np.eye(len(GRID))[periods.interval.to_numpy()], periods[COVARIATES].to_numpy()])
    fit = sm.GLM(
        periods.event.to_numpy(), design, family=sm.families.Poisson(), offset=np.log(periods.exposure.to_numpy())
    ).fit(tol=1e-12)
    sums = cox_sums(plan.model, patients, fit.params)
    assert np.abs(np.concatenate([sums.baseline_score, sums.score])).max() < 1e-7
    information = np.block([[np.diag(sums.baseline_information), sums.cross], [sums.cross.T, sums.information]])
    np.testing.assert_allclose(np.linalg.inv(information), fit.cov_params(), rtol=1e-6)
    theta = np.concatenate([np.full(len(GRID), -np.log(52.0)), np.zeros(4)])
    for _ in range(10):
        step = cox_sums(plan.model, patients, theta)
        matrix = np.block([[np.diag(step.baseline_information), step.cross], [step.cross.T, step.information]])
        theta = theta + np.linalg.solve(matrix, np.concatenate([step.baseline_score, step.score]))
    np.testing.assert_allclose(theta, fit.params, rtol=1e-8)


def test_who_is_included_follow_up_ends_at_the_grid_and_events_at_time_zero_count() -> None:
    plan = plan_of(rossi_cox())
    assert plan.model is not None
    table = pa.table(
        {
            "week": [0.0, 8.0, 8.5, 60.0, np.inf, -1.0, np.nan, 10.0, 10.0, 10.0],
            "arrest": [1, 1, 1, 1, 0, 1, 1, None, 0, 1],
            "age": [20.0, 30.0, 30.0, 40.0, 30.0, 30.0, 30.0, 30.0, None, 30.0],
            "prio": [1.0] * 10,
            "fin": [0, 1, 0, 1, 0, 0, 0, 0, 0, 5],
            "wexp": [0] * 10,
        }
    )
    patients = glm_patients(plan, table)
    # A negative or missing time, an unknown event, a missing covariate, an undeclared category exclude.
    assert included(plan.model, patients).tolist() == [True, True, True, True, True] + [False] * 5
    zero = np.zeros(10)
    sums = cox_sums(plan.model, patients, zero)  # hazard 1 per week: the cap of 1000 holds
    assert (sums.included, sums.clamped, sums.excluded) == (5, 0, 5)
    # Events: at 0 and 8 in [0, 8], at 8.5 in (8, 16]; at 60 (after the grid) none; inf censored.
    np.testing.assert_allclose(sums.baseline_score + sums.baseline_information, [2, 1, 0, 0, 0, 0])
    # Exposure: 0, 8, 8 + 0.5, then everyone else whole intervals up to 52.
    np.testing.assert_allclose(sums.baseline_information, [8 + 8 + 8 + 8, 0.5 + 8 + 8, 16, 16, 16, 24])


def test_the_cap_scales_a_patients_hazard_down_and_counts_them() -> None:
    plan = plan_of(rossi_cox(max_cumulative_hazard=2.0))
    assert plan.model is not None
    frame = load_rossi()
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    theta = np.zeros(10)  # a hazard of 1 per week: everyone followed for 2 weeks or more reaches the cap
    sums = cox_sums(plan.model, patients, theta)
    assert sums.clamped == int((frame.week >= 2).sum()) and sums.included + sums.clamped == len(frame)
    assert sums.baseline_information.sum() == pytest.approx(2.0 * sums.clamped + frame.week[frame.week < 2].sum())
    # Coefficients as far out as a task may send: every number finite, every cap held.
    for extreme in (1e9, -1e9):
        far = cox_sums(plan.model, patients, np.full(10, extreme))
        blocks = [far.baseline_score, far.score, far.baseline_information, far.cross, far.information]
        assert all(np.isfinite(block).all() for block in blocks)
        assert far.baseline_information.sum() <= 2.0 * len(frame)
    assert cox_sums(plan.model, patients, np.append(np.full(6, -1e9), np.zeros(4))).clamped == 0


def test_bad_coefficients_are_refused_by_the_sums() -> None:
    plan = plan_of(ROSSI_COX)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(load_rossi(), preserve_index=False))
    for theta, words in ((np.zeros(9), "shape [10]"), (np.full(10, np.nan), "finite")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            cox_sums(plan.model, patients, theta)


# -- what one patient can move ---------------------------------------------------------------


@st.composite
def cox_plans(draw: st.DrawFn) -> dict[str, Any]:
    """Cox plans over test_neighbours' tables: time ``t`` (negative, NaN, null ones among them),
    event ``e`` (booleans, 0..2, floats with NaN), covariates with random bounds and categories,
    a random grid and cap."""
    variables: list[dict[str, Any]] = []
    for column in ("x", "y"):
        if draw(st.booleans()):
            low, high, _ = _bounds(draw)
            variables.append({"column": column, "kind": "numeric", "bounds": [low, high]})
    if draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(["p", "q", "r"]), unique=True, min_size=2))
        variables.append({"column": "c", "kind": "categorical", "categories": chosen})
    if not variables:
        variables.append({"column": "x", "kind": "numeric", "bounds": [-10.0, 10.0]})
    covariates = draw(st.permutations([v["column"] for v in variables]))
    grid = sorted(draw(st.sets(st.floats(0.5, 40.0), min_size=1, max_size=8)))
    hazard = draw(st.sampled_from([0.01, 0.5, 1.0, 2.0, 7.5, 1000.0]))
    plan: dict[str, Any] = {
        "variables": variables,
        "survival": {"time_column": "t", "event_column": "e", "grid": grid},
        "model": {"family": "cox", "covariates": covariates, "max_cumulative_hazard": hazard},
    }
    if draw(st.booleans()):
        plan["strata"] = [{"column": "s2", "categories": [0, 1]}]
    return plan


@SETTINGS
@given(table=tables(), plan_json=cox_plans(), data=st.data())
def test_removing_one_patient_moves_each_cox_block_by_at_most_its_sensitivity(
    table: pa.Table, plan_json: dict[str, Any], data: st.DataObject
) -> None:
    plan = plan_of(plan_json)
    assert plan.model is not None
    check_one_patients_contribution(plan, table, data.draw(coefficients(plan.model.width)), data)


def test_the_cox_sensitivities_are_reached() -> None:
    """A patient with an event in the first interval, hazard at the cap spread to the last one
    and covariates at their bounds moves the covariates' blocks by their full sensitivities."""
    plan = plan_of(
        {
            "variables": [
                {"column": "x", "kind": "numeric", "bounds": [0, 1]},
                {"column": "g", "kind": "categorical", "categories": ["a", "b"]},
            ],
            "survival": {"time_column": "t", "event_column": "e", "grid": [1, 2]},
            "model": {"family": "cox", "covariates": ["x", "g"], "max_cumulative_hazard": 3.0},
        }
    )
    assert plan.model is not None
    release = layout(plan, TaskKind.DP_GLM)
    patients = glm_patients(plan, pa.table({"x": [5.0], "g": ["b"], "t": [2.0], "e": [0]}))  # x = (1, 1)
    far = exact_model_release(plan, patients, [-50.0, 50.0, 0.0, 0.0])  # all of the hazard in (1, 2]
    assert far[GLM_COUNT].tolist() == [[0, 1, 0]]
    for name in (GLM_SCORE, GLM_BASELINE_INFORMATION, GLM_BASELINE_CROSS):
        assert np.linalg.norm(far[name]) == pytest.approx(release.block(name).sensitivity, rel=1e-9), name
    # The covariates' information: the whole matrix 3 x xᵀ has the block's norm (the triangle is part of it).
    np.testing.assert_allclose(far[GLM_INFORMATION][0], [3.0, 3.0, 3.0], rtol=1e-9)
    assert np.linalg.norm(np.full((2, 2), 3.0)) == pytest.approx(release.block(GLM_INFORMATION).sensitivity)
    # The baseline score: an event in (1, 2] with the hazard, at the cap, all in [0, 1]: (-3, 1).
    event = glm_patients(plan, pa.table({"x": [5.0], "g": ["b"], "t": [2.0], "e": [1]}))
    early = exact_model_release(plan, event, [50.0, -50.0, 0.0, 0.0])
    np.testing.assert_allclose(early[GLM_BASELINE_SCORE][0], [-3.0, 1.0], atol=1e-12)
    assert np.linalg.norm(early[GLM_BASELINE_SCORE]) == pytest.approx(release.block(GLM_BASELINE_SCORE).sensitivity)
