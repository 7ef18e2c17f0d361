"""dp_glm's exact numbers: the design row, who is included, the score and the information.

Checked against independent constructions: the design with pandas (``clip``, dummies by
category), the sums with NumPy and SciPy's ``expit`` on lifelines' rossi, and statsmodels'
logistic regression (the score vanishes at its estimate and the inverse information is its
covariance). The sensitivities the release declares are property-tested: removing one
patient moves each block by at most its sensitivity, for random coefficients and random
data with values outside the bounds, categories not declared and nulls everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import statsmodels.api as sm
from hypothesis import given
from hypothesis import strategies as st
from lifelines.datasets import load_rossi
from scipy.special import expit

from agent.packages.manifest import ParameterDecl, TaskKind
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import GLM_COUNT, GLM_INFORMATION, GLM_SCORE, analysed, layout
from agent.runtime.errors import ParameterError
from agent.statistics import glm
from agent.statistics.design import design_rows
from agent.statistics.glm import exact_model_release, included, model_sums, upper_triangle
from agent.statistics.patients import PatientTable, patient_table, patient_table_keyed
from agent.statistics.tables import noisy_release
from agent.tasks.computation import checked_plan_parameters

from .helpers import plan_of
from .test_neighbours import SETTINGS, _bounds, tables

ROSSI_PLAN: dict[str, Any] = {
    "cohort": [{"column": "week", "op": ">=", "value": 2}],
    # Ignored by the regression (pooled); listed to show that it neither splits nor filters.
    "strata": [{"column": "mar", "categories": [1]}],
    "variables": [
        # rossi's ages are 17..44 and prior convictions 0..18: prio's bounds clamp.
        {"column": "age", "kind": "numeric", "bounds": [17, 45]},
        {"column": "prio", "kind": "numeric", "bounds": [0, 10]},
        {"column": "fin", "kind": "categorical", "categories": [0, 1]},
        # Reference level 1: the indicator is race == 0.
        {"column": "race", "kind": "categorical", "categories": [1, 0]},
        {"column": "wexp", "kind": "categorical", "categories": [0, 1]},
        {"column": "paro", "kind": "numeric", "bounds": [0, 1]},
    ],
    "model": {"family": "logistic", "outcome": "arrest", "covariates": ["age", "prio", "fin", "race", "wexp", "paro"]},
}


def glm_patients(plan: AnalysisPlan, table: pa.Table, unit_column: str | None = None) -> PatientTable:
    """The patients of a dp_glm task, as the worker builds them."""
    return patient_table(analysed(plan, TaskKind.DP_GLM), table, unit_column=unit_column, rng=np.random.default_rng(0))


def pandas_design(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROSSI_PLAN's design, inclusion and outcome with pandas, from the spec (not the agent's code)."""
    df = frame[frame.week >= 2]
    keep = (
        df.age.notna()
        & df.prio.notna()
        & df.paro.notna()
        & df.fin.isin([0, 1])
        & df.race.isin([0, 1])
        & df.wexp.isin([0, 1])
        & df.arrest.isin([0, 1])
    )
    design = pd.DataFrame(
        {
            "(intercept)": 1.0,
            "age": (df.age.clip(17, 45) - 31.0) / 14.0,
            "prio": (df.prio.clip(0, 10) - 5.0) / 5.0,
            "fin=1": (df.fin == 1).astype(float),
            "race=0": (df.race == 0).astype(float),
            "wexp=1": (df.wexp == 1).astype(float),
            "paro": (df.paro.clip(0, 1) - 0.5) / 0.5,
        }
    )
    return design.to_numpy(dtype=float), keep.to_numpy(dtype=bool), df.arrest.to_numpy(dtype=float)


def defective_rossi() -> pd.DataFrame:
    """rossi with what excludes a patient: missing covariates, a category not declared, outcomes not 0/1."""
    frame = load_rossi().astype(float)
    rng = np.random.default_rng(11)
    for column in ("age", "prio", "fin", "arrest"):
        frame.loc[rng.random(len(frame)) < 0.05, column] = np.nan
    frame.loc[rng.random(len(frame)) < 0.03, "race"] = 7.0  # not a declared category
    frame.loc[rng.random(len(frame)) < 0.03, "arrest"] = 2.0
    frame.loc[rng.random(len(frame)) < 0.02, "arrest"] = 0.5
    frame.loc[rng.random(len(frame)) < 0.02, "age"] = np.inf  # present: clamped to the upper bound
    return frame


def test_the_design_row_matches_pandas_on_rossi_with_defects() -> None:
    frame = defective_rossi()
    plan = plan_of(ROSSI_PLAN)
    assert plan.model is not None
    assert plan.model.design_names == ("(intercept)", "age", "prio", "fin=1", "race=0", "wexp=1", "paro")
    # Categories in integer columns with nulls (pandas' Int64), as a hospital's table holds them.
    categories = {column: "Int64" for column in ("fin", "race", "wexp")}
    table = pa.Table.from_pandas(frame.astype(categories), preserve_index=False)
    patients = glm_patients(plan, table)
    expected, keep, _ = pandas_design(frame)
    assert patients.size == len(expected)  # every patient of the cohort, whatever their stratum
    mask = included(plan.model, patients)
    np.testing.assert_array_equal(mask, keep)
    assert 0 < mask.sum() < len(mask) - 40  # the defects exclude some, not most
    ours = design_rows(plan.model, patients, np.flatnonzero(mask))
    np.testing.assert_allclose(ours, expected[keep], rtol=0, atol=1e-15)
    assert np.abs(ours).max() <= 1.0 and (ours[:, 1] == 1.0).any()  # an infinite age is clamped to 1


def test_score_and_information_match_numpy_on_rossi() -> None:
    frame = load_rossi()
    plan = plan_of(ROSSI_PLAN)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    x, keep, y = pandas_design(frame)
    assert keep.all() and len(x) == int((frame.week >= 2).sum())
    rng = np.random.default_rng(5)
    for beta in (np.zeros(7), rng.normal(0, 1.5, 7), rng.normal(0, 30, 7)):
        mu = expit(x @ beta)
        score = x.T @ (y - mu)
        information = (x * (mu * (1 - mu))[:, None]).T @ x
        sums = model_sums(plan.model, patients, beta)
        assert (sums.included, sums.excluded) == (len(x), 0)
        np.testing.assert_allclose(sums.score, score, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(sums.information, information, rtol=1e-10, atol=1e-9)
        blocks = exact_model_release(plan, patients, beta)
        rows, columns = np.triu_indices(7)
        np.testing.assert_allclose(blocks[GLM_INFORMATION][0], information[rows, columns], rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(blocks[GLM_SCORE][0], score, rtol=1e-10, atol=1e-9)
        assert blocks[GLM_COUNT].tolist() == [[len(x), 0]]


def test_at_statsmodels_estimate_the_score_vanishes_and_the_information_is_its_precision() -> None:
    frame = load_rossi()
    plan = plan_of(ROSSI_PLAN)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    x, _, y = pandas_design(frame)
    fit = sm.Logit(y, x).fit(disp=0, tol=1e-12, maxiter=100)
    sums = model_sums(plan.model, patients, fit.params)
    assert np.abs(sums.score).max() < 1e-7
    np.testing.assert_allclose(np.linalg.inv(sums.information), fit.cov_params(), rtol=1e-6)
    # Newton-Raphson on the agent's own sums reaches the same estimate (what the coordinator does).
    beta = np.zeros(7)
    for _ in range(8):
        step = model_sums(plan.model, patients, beta)
        beta = beta + np.linalg.solve(step.information, step.score)
    np.testing.assert_allclose(beta, fit.params, rtol=1e-8)


def test_who_is_included_and_excluded() -> None:
    plan = plan_of(
        {
            "cohort": [{"column": "keep", "op": "==", "value": True}],
            "variables": [
                {"column": "x", "kind": "numeric", "bounds": [0, 10]},
                {"column": "grade", "kind": "categorical", "categories": ["I", "II", "III"]},
            ],
            "model": {"family": "logistic", "outcome": "y", "covariates": ["x", "grade"]},
        }
    )
    assert plan.model is not None
    rows = [
        # x, grade, y, keep, included?
        (5.0, "I", True, True, True),
        (-3.0, "III", False, True, True),  # below the bounds: clamped, included
        (math.inf, "II", True, True, True),  # infinite: present, clamped
        (math.nan, "I", True, True, False),  # NaN is missing
        (None, "I", True, True, False),  # null is missing
        (5.0, "IV", True, True, False),  # a category not declared
        (5.0, None, True, True, False),  # a missing category
        (5.0, "I", None, True, False),  # a missing outcome
        (5.0, "I", True, False, None),  # not in the cohort: neither included nor excluded
    ]
    table = pa.table(
        {
            "x": pa.array([r[0] for r in rows], pa.float64()),
            "grade": pa.array([r[1] for r in rows], pa.string()),
            "y": pa.array([r[2] for r in rows], pa.bool_()),
            "keep": pa.array([r[3] for r in rows], pa.bool_()),
        }
    )
    patients = glm_patients(plan, table)
    assert included(plan.model, patients).tolist() == [r[4] for r in rows if r[4] is not None]
    sums = model_sums(plan.model, patients, np.zeros(4))
    assert (sums.included, sums.excluded) == (3, 5)
    x = design_rows(plan.model, patients, np.flatnonzero(included(plan.model, patients)))
    np.testing.assert_array_equal(x, [[1, 0, 0, 0], [1, -1, 0, 1], [1, 1, 1, 0]])
    # Numbers other than exactly 0 and 1 are not outcomes.
    numbers = table.set_column(2, "y", pa.array([1.0, 0.0, 0.5, 1.0, 1.0, 2.0, -1.0, 3.0, 1.0]))
    assert included(plan.model, glm_patients(plan, numbers)).tolist() == [True, True, False] + [False] * 5


def test_strata_neither_split_nor_filter_the_regression() -> None:
    plan = plan_of(
        {
            "strata": [{"column": "arm", "categories": ["a", "c"]}],
            "variables": [{"column": "x", "kind": "numeric", "bounds": [0, 1]}],
            "model": {"family": "logistic", "outcome": "y", "covariates": ["x"]},
        }
    )
    table = pa.table({"arm": ["a", "b", None], "x": [0.5, 0.5, 0.5], "y": [1, 0, 1]})
    assert patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0)).size == 1
    patients = glm_patients(plan, table)
    assert patients.size == 3 and patients.strata == 1
    with pytest.raises(ValueError, match="pools the strata"):
        exact_model_release(plan, patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0)), [0, 0])


def test_chunks_add_up_to_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = load_rossi()
    plan = plan_of(ROSSI_PLAN)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(frame, preserve_index=False))
    beta = np.linspace(-1, 1, 7)
    whole = model_sums(plan.model, patients, beta)
    monkeypatch.setattr(glm, "CHUNK_ROWS", 7)
    chunked = model_sums(plan.model, patients, beta)
    np.testing.assert_allclose(chunked.score, whole.score, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked.information, whole.information, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(chunked.information, chunked.information.T)


def test_bad_coefficients_are_refused_by_the_sums() -> None:
    plan = plan_of(ROSSI_PLAN)
    assert plan.model is not None
    patients = glm_patients(plan, pa.Table.from_pandas(load_rossi(), preserve_index=False))
    with pytest.raises(ValueError, match=r"shape \[7\]"):
        model_sums(plan.model, patients, np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        model_sums(plan.model, patients, [0, 0, 0, math.nan, 0, 0, 0])


def test_upper_triangle_is_row_major() -> None:
    matrix = np.arange(9.0).reshape(3, 3)
    assert upper_triangle(matrix).tolist() == [0, 1, 2, 4, 5, 8]


# -- the sensitivities -------------------------------------------------------------------


@st.composite
def model_plans(draw: st.DrawFn) -> dict[str, Any]:
    """Plans over test_neighbours' tables: covariates with random bounds and categories (values
    outside them, undeclared and null ones in the data), the event column ``e`` as the outcome
    (booleans, integers 0..2 or floats with NaN), strata sometimes (ignored)."""
    variables: list[dict[str, Any]] = []
    for column in ("x", "y"):
        if draw(st.booleans()):
            low, high, _ = _bounds(draw)
            variables.append({"column": column, "kind": "numeric", "bounds": [low, high]})
    options: dict[str, list[Any]] = {"c": ["p", "q", "r"], "s1": ["a", "b", "c", "zz"], "b": [True, False]}
    for column, categories in options.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(categories), unique=True, min_size=1))
            variables.append({"column": column, "kind": "categorical", "categories": chosen})
    if not variables:
        variables.append({"column": "x", "kind": "numeric", "bounds": [-10.0, 10.0]})
    covariates = draw(st.permutations([v["column"] for v in variables]))
    covariates = covariates[: draw(st.integers(1, len(covariates)))]
    plan: dict[str, Any] = {"variables": variables}
    plan["model"] = {"family": "logistic", "outcome": "e", "covariates": covariates}
    if draw(st.booleans()):
        plan["strata"] = [{"column": "s2", "categories": [0, 1]}]
    if draw(st.booleans()):
        plan["cohort"] = [{"column": "t", "op": "not_null"}]
    return plan


def coefficients(width: int) -> st.SearchStrategy[np.ndarray]:
    moderate = st.floats(-20, 20, allow_nan=False)
    extreme = st.sampled_from([-1e9, -1e4, 0.0, 1e4, 1e9])
    return st.lists(st.one_of(moderate, extreme), min_size=width, max_size=width).map(np.array)


@SETTINGS
@given(table=tables(), plan_json=model_plans(), data=st.data())
def test_removing_one_patient_moves_each_block_by_at_most_its_sensitivity(
    table: pa.Table, plan_json: dict[str, Any], data: st.DataObject
) -> None:
    plan = plan_of(plan_json)
    assert plan.model is not None
    check_one_patients_contribution(plan, table, data.draw(coefficients(plan.model.width)), data)


def check_one_patients_contribution(
    plan: AnalysisPlan, table: pa.Table, theta: np.ndarray, data: st.DataObject
) -> None:
    """Removing one unit (drawn from ``data``) of ``table`` moves each block of the plan's dp_glm
    release at ``theta`` by that patient's own contribution, within the block's sensitivity."""
    glm_plan = analysed(plan, TaskKind.DP_GLM)
    keys = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(table.num_rows)
    units = table.column("u").to_pylist()
    removed = data.draw(st.sampled_from(sorted(set(units), key=str)))
    stays = np.array([u != removed for u in units])
    full = patient_table_keyed(glm_plan, table, unit_column="u", keys=keys)
    neighbour = patient_table_keyed(glm_plan, table.filter(pa.array(stays)), unit_column="u", keys=keys[stays])
    own = [int(r) for r in full.rows if units[r] == removed]
    alone = patient_table_keyed(glm_plan, table.take(pa.array(own, pa.int64())), unit_column=None, keys=None)

    release = layout(plan, TaskKind.DP_GLM)
    before = exact_model_release(plan, full, theta)
    after = exact_model_release(plan, neighbour, theta)
    added = exact_model_release(plan, alone, theta)
    for block in release.blocks:
        moved = before[block.name] - after[block.name]
        # What moved is the removed patient's own contribution, computed on their row alone...
        scale = max(1.0, float(np.abs(before[block.name]).max()))
        np.testing.assert_allclose(moved, added[block.name], rtol=0, atol=1e-9 * scale)
        # ... and that is within the block's sensitivity, whatever the coefficients and the row hold.
        assert float(np.linalg.norm(added[block.name])) <= block.sensitivity * (1 + 1e-12), block.name
    count = added[GLM_COUNT][0]
    assert count.sum() in (0.0, 1.0) and set(count.tolist()) <= {0.0, 1.0}


def test_the_bounds_are_reached() -> None:
    """The sensitivities are tight: a patient at the bounds, with a far-off prediction, moves the
    score by nearly R and the information's diagonal... by R² / 4 at μ = 1/2."""
    plan = plan_of(
        {
            "variables": [
                {"column": "x", "kind": "numeric", "bounds": [0, 1]},
                {"column": "g", "kind": "categorical", "categories": ["a", "b"]},
            ],
            "model": {"family": "logistic", "outcome": "y", "covariates": ["x", "g"]},
        }
    )
    assert plan.model is not None
    release = layout(plan, TaskKind.DP_GLM)
    patients = glm_patients(plan, pa.table({"x": [5.0], "g": ["b"], "y": [0]}))  # row (1, 1, 1)
    far = exact_model_release(plan, patients, [20.0, 20.0, 20.0])  # μ ≈ 1, y = 0
    assert np.linalg.norm(far[GLM_SCORE]) == pytest.approx(release.block(GLM_SCORE).sensitivity, rel=1e-12)
    even = exact_model_release(plan, patients, [0.0, 0.0, 0.0])  # μ = 1/2: the full matrix's norm is R²/4
    full = np.full((3, 3), 0.25)
    assert np.linalg.norm(full) == pytest.approx(release.block(GLM_INFORMATION).sensitivity)
    np.testing.assert_allclose(even[GLM_INFORMATION][0], upper_triangle(full))


# -- noise and withholding ------------------------------------------------------------------


def glm_exact(included_count: float, excluded_count: float, width: int = 3) -> dict[str, np.ndarray]:
    cells = width * (width + 1) // 2
    return {
        GLM_COUNT: np.array([[included_count, excluded_count]]),
        GLM_SCORE: -np.arange(1.0, width + 1).reshape(1, -1),  # negative: not counts, never cell-withheld
        GLM_INFORMATION: np.arange(1.0, cells + 1).reshape(1, -1),
    }


def small_plan() -> AnalysisPlan:
    return plan_of(
        {
            "variables": [{"column": "x", "kind": "numeric", "bounds": [0, 1]}],
            "model": {"family": "logistic", "outcome": "y", "covariates": ["x"]},
        }
    )


def test_the_minimum_cell_size_withholds_counts_and_the_release_only_with_its_included_count() -> None:
    release = layout(small_plan(), TaskKind.DP_GLM)
    rng = np.random.default_rng(0)
    kept = noisy_release(glm_exact(50, 2, 2), release, noise_multiplier=0.0, min_cell_size=5, rng=rng)
    assert kept["glm.count[0][0]"] == 50 and math.isnan(kept["glm.count[0][1]"])  # few excluded: that cell only
    assert [kept[f"glm.score[0][{i}]"] for i in range(2)] == [-1.0, -2.0]
    assert [kept[f"glm.information[0][{i}]"] for i in range(3)] == [1.0, 2.0, 3.0]
    # Few included patients: their score and information would describe them; all withheld,
    # however many were excluded.
    few = noisy_release(glm_exact(4, 500, 2), release, noise_multiplier=0.0, min_cell_size=5, rng=rng)
    assert all(math.isnan(value) for value in few.values())


def test_the_cohort_minimum_reads_the_noisy_included_count() -> None:
    release = layout(small_plan(), TaskKind.DP_GLM)
    rng = np.random.default_rng(1)

    def released(included_count: float, excluded_count: float) -> bool:
        values = noisy_release(
            glm_exact(included_count, excluded_count, 2),
            release,
            noise_multiplier=0.0,
            min_cell_size=0,
            rng=rng,
            min_cohort_size=20,
        )
        return not any(math.isnan(v) for v in values.values())

    assert released(20, 0) and not released(19, 100)


# -- the coefficients a task sends ------------------------------------------------------------


def test_the_coefficients_are_checked_before_anything_is_read() -> None:
    declared = (ParameterDecl("coefficients", (3,), "float64"),)
    good = checked_plan_parameters(declared, {"coefficients": np.array([0.5, -1, 2], np.float32)})
    assert good["coefficients"].dtype == np.float64 and good["coefficients"].tolist() == [0.5, -1.0, 2.0]
    assert not good["coefficients"].flags.writeable
    for parameters, words in (
        ({}, "parameter 'coefficients': is missing"),
        ({"coefficients": np.zeros(4)}, "parameter 'coefficients': has shape [4], the package declares [3]"),
        ({"coefficients": np.zeros((3, 1))}, "parameter 'coefficients': has shape [3, 1]"),
        ({"coefficients": np.zeros(3, np.int64)}, "parameter 'coefficients': has dtype int64"),
        ({"coefficients": np.array([0, math.nan, 0])}, "parameter 'coefficients': holds NaN or infinite values"),
        ({"coefficients": np.array([0, 0, -math.inf])}, "parameter 'coefficients': holds NaN or infinite values"),
        ({"coefficients": np.array([0, 2e9, 0])}, "parameter 'coefficients': holds values beyond ±1e+09"),
        ({"coefficients": np.zeros(3), "w": np.zeros(1)}, "parameter 'w': is not a parameter of this task kind"),
    ):
        with pytest.raises(ParameterError) as caught:
            checked_plan_parameters(declared, parameters)
        assert words in str(caught.value)
    assert checked_plan_parameters((), {}) == {}
