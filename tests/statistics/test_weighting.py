"""Propensity weighting (agent.statistics.weighting): the plan's ``weighting``, the propensity
model against statsmodels, each patient's weight against a pandas computation from the
estimand's formula, and the weighted blocks of dp_describe, dp_survival and dp_glm (Cox)
against pandas, statsmodels' weighted Poisson GLM and lifelines' weighted Cox model, on
gbsg2 (an observational breast cancer cohort whose treatment, hormone therapy, was not
randomised). What one patient can move is attacked in test_weighting_attacks.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2
from scipy.special import expit

from agent.packages.errors import PackageRejected
from agent.packages.manifest import COEFFICIENTS, PROPENSITY, TaskKind, parse_manifest, served_kinds
from agent.packages.plan import Estimand, parse_plan
from agent.packages.plan_summary import plan_lines
from agent.packages.release_layout import (
    GLM_COUNT,
    GLM_INFORMATION,
    GLM_SCORE,
    SURVIVAL_EXITS,
    WEIGHT_COUNT,
    WEIGHT_SUM,
    WEIGHT_SUMSQ,
    WEIGHTED_EXITS,
    analysed,
    layout,
)
from agent.statistics.glm import cox_sums, exact_model_release, exact_propensity_release
from agent.statistics.patients import PatientTable, patient_table
from agent.statistics.tables import exact_release
from agent.statistics.weighting import plan_weights, propensity_weights
from tests.plans.test_plan_format import manifest

from .helpers import plan_of

GRID = [365, 730, 1095, 1460, 1825, 2190, 2555]
CONFOUNDERS = ["age", "menostat", "tsize", "tgrade", "pnodes"]
GBSG2_IPTW: dict[str, Any] = {
    "variables": [
        {"column": "horTh", "kind": "categorical", "categories": ["no", "yes"]},
        {"column": "age", "kind": "numeric", "bounds": [20, 80]},
        {"column": "menostat", "kind": "categorical", "categories": ["Pre", "Post"]},
        {"column": "tsize", "kind": "numeric", "bounds": [0, 120]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
        {"column": "pnodes", "kind": "numeric", "bounds": [0, 60]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": GRID},
    "model": {"family": "cox", "covariates": ["horTh"], "max_cumulative_hazard": 1000},
    "weighting": {"treatment": "horTh", "covariates": CONFOUNDERS, "estimand": "ate", "max_weight": 20},
}


def gbsg2_plan(**weighting: Any) -> dict[str, Any]:
    return {**GBSG2_IPTW, "weighting": {**GBSG2_IPTW["weighting"], **weighting}}


def gbsg2() -> tuple[pd.DataFrame, pa.Table]:
    frame = load_gbsg2()
    return frame, pa.Table.from_pandas(frame, preserve_index=False)


def patients_for(plan_json: dict[str, Any], kind: TaskKind, table: pa.Table) -> PatientTable:
    plan = plan_of(plan_json)
    return patient_table(analysed(plan, kind), table, unit_column=None, rng=np.random.default_rng(0))


# -- the plan ----------------------------------------------------------------------------------


def test_a_weighted_plan_names_its_propensity_model_serves_four_kinds_and_round_trips() -> None:
    plan = plan_of(GBSG2_IPTW)
    weighting = plan.weighting
    assert weighting is not None and weighting.estimand is Estimand.ATE and weighting.max_weight == 20.0
    propensity = weighting.propensity_model
    assert propensity.outcome == "horTh"
    assert propensity.design_names == (
        "(intercept)",
        "age",
        "menostat=Post",
        "tsize",
        "tgrade=II",
        "tgrade=III",
        "pnodes",
    )
    assert parse_plan(plan.to_json()) == plan
    defaulted = {key: value for key, value in GBSG2_IPTW["weighting"].items() if key != "max_weight"}
    assert plan_of({**GBSG2_IPTW, "weighting": defaulted}).weighting == dataclasses.replace(weighting, max_weight=10.0)
    assert served_kinds(plan) == (TaskKind.DP_DESCRIBE, TaskKind.DP_SURVIVAL, TaskKind.DP_GLM, TaskKind.DP_PROPENSITY)
    # Per arm: the treatment is the last stratum, no longer a variable.
    described = analysed(plan, TaskKind.DP_DESCRIBE)
    assert described.stratum_labels() == ("horTh=no", "horTh=yes")
    assert [v.column for v in described.variables] == CONFOUNDERS
    assert analysed(plan, TaskKind.DP_GLM).strata == () and analysed(plan, TaskKind.DP_PROPENSITY).model is None
    # Every task on the plan sends the propensity coefficients; dp_propensity sends them as its own.
    package = parse_manifest(manifest(plan=plan.to_json(), task_kinds=[k.value for k in served_kinds(plan)]))
    shapes = {kind: [(p.name, p.shape) for p in package.task_parameters(kind)] for kind in served_kinds(plan)}
    assert shapes == {
        TaskKind.DP_DESCRIBE: [(PROPENSITY, (7,))],
        TaskKind.DP_SURVIVAL: [(PROPENSITY, (7,))],
        TaskKind.DP_GLM: [(COEFFICIENTS, (8,)), (PROPENSITY, (7,))],
        TaskKind.DP_PROPENSITY: [(COEFFICIENTS, (7,))],
    }


def test_the_weighted_releases_sensitivities_are_the_unweighted_ones_times_the_cap() -> None:
    weighted = plan_of(GBSG2_IPTW)
    plain = plan_of({key: value for key, value in GBSG2_IPTW.items() if key != "weighting"})
    glm = {b.name: b.sensitivity for b in layout(weighted, TaskKind.DP_GLM).blocks}
    # Times the cap, rounded up where the float product would fall below the exact one.
    assert glm == pytest.approx(
        {b.name: b.sensitivity * (1 if b.name == GLM_COUNT else 20) for b in layout(plain, TaskKind.DP_GLM).blocks},
        rel=1e-15,
    )
    survival = layout(weighted, TaskKind.DP_SURVIVAL)
    assert [(b.name, b.sensitivity) for b in survival.blocks] == [
        (SURVIVAL_EXITS, 1.0),
        (WEIGHTED_EXITS, 20.0),
        (WEIGHT_SUMSQ, 400.0),
    ]
    assert survival.strata == 2
    describe = {b.name: b.sensitivity for b in layout(weighted, TaskKind.DP_DESCRIBE).blocks}
    assert describe[WEIGHT_COUNT] == 1.0 and describe[WEIGHT_SUM] == 20.0 and describe[WEIGHT_SUMSQ] == 400.0
    assert describe["age.sum"] == 30.0 and describe["age.weighted.sum"] == 600.0
    assert "age.weighted.sumsq" not in describe and describe["tgrade.weighted.counts"] == 20.0
    assert "horTh.counts" not in describe
    propensity = layout(weighted, TaskKind.DP_PROPENSITY)
    assert [b.sensitivity for b in propensity.blocks] == pytest.approx([1.0, np.sqrt(6.0), 6.0 / 4], rel=1e-15)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"treatment": "age"}, "plan.weighting.treatment", "'age' is not binary"),
        ({"treatment": "tgrade", "covariates": ["age"]}, "plan.weighting.treatment", "'tgrade' is not binary"),
        ({"treatment": "time"}, "plan.weighting.treatment", "not a variable of the plan"),
        ({"covariates": ["age", "horTh"]}, "plan.weighting.covariates[1]", "is the model's outcome"),
        ({"covariates": ["age", "cens"]}, "plan.weighting.covariates[1]", "not a variable of the plan"),
        ({"covariates": ["age", "age"]}, "plan.weighting.covariates[1]", "listed twice"),
        ({"covariates": []}, "plan.weighting.covariates", "must have 1 to 32 items"),
        ({"estimand": "atc"}, "plan.weighting.estimand", "ate"),
        ({"max_weight": 0.5}, "plan.weighting.max_weight", "at least 1"),
        ({"max_weight": 1e6}, "plan.weighting.max_weight", "at most 1000"),
        ({"max_weight": "10"}, "plan.weighting.max_weight", "must be a number"),
        ({"trim": 0.01}, "plan.weighting", "trim"),
    ],
)
def test_a_bad_weighting_is_refused_naming_the_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(PackageRejected) as caught:
        plan_of(gbsg2_plan(**change))
    assert field in str(caught.value) and words in str(caught.value), str(caught.value)


# -- the propensity model and the weights --------------------------------------------------------


def propensity_design(frame: pd.DataFrame) -> np.ndarray:
    """The propensity model's design rows with pandas, from the plan's spec (bounds, reference
    categories), not the agent's code."""

    def scaled(column: str, low: float, high: float) -> pd.Series:
        return (frame[column].clip(low, high) - (low + high) / 2) / ((high - low) / 2)

    return np.column_stack(
        [
            np.ones(len(frame)),
            scaled("age", 20, 80),
            frame.menostat == "Post",
            scaled("tsize", 0, 120),
            frame.tgrade == "II",
            frame.tgrade == "III",
            scaled("pnodes", 0, 60),
        ]
    ).astype(float)


def test_at_statsmodels_logit_estimate_the_propensity_score_vanishes_and_newton_reaches_it() -> None:
    frame, table = gbsg2()
    plan = plan_of(GBSG2_IPTW)
    patients = patients_for(GBSG2_IPTW, TaskKind.DP_PROPENSITY, table)
    treated = (frame.horTh == "yes").to_numpy(float)
    fit = sm.Logit(treated, propensity_design(frame)).fit(disp=0, tol=1e-12)
    at_fit = exact_propensity_release(plan, patients, fit.params)
    assert at_fit[GLM_COUNT].tolist() == [[len(frame), 0]]
    assert np.abs(at_fit[GLM_SCORE]).max() < 1e-7
    gamma = np.zeros(7)
    for _ in range(12):
        step = exact_propensity_release(plan, patients, gamma)
        information = np.zeros((7, 7))
        information[np.triu_indices(7)] = step[GLM_INFORMATION][0]
        information = information + np.triu(information, 1).T
        gamma = gamma + np.linalg.solve(information, step[GLM_SCORE][0])
    np.testing.assert_allclose(gamma, fit.params, rtol=1e-8)
    np.testing.assert_allclose(np.linalg.inv(information), fit.cov_params(), rtol=1e-6)


@pytest.mark.parametrize("estimand", ["ate", "att"])
def test_each_weight_is_the_estimands_formula_cut_at_the_cap(estimand: str) -> None:
    frame, table = gbsg2()
    plan = plan_of(gbsg2_plan(estimand=estimand, max_weight=4))
    assert plan.weighting is not None
    gamma = np.array([-1.2, 1.6, 0.8, -0.3, 0.2, 0.1, 0.4])
    e = expit(propensity_design(frame) @ gamma)
    treated = frame.horTh == "yes"
    # ATE: 1/e treated, 1/(1 - e) controls; ATT: 1 treated, e/(1 - e) controls.
    ate = estimand == "ate"
    expected = np.where(treated, 1 / e if ate else 1.0, 1 / (1 - e) if ate else e / (1 - e))
    assert (expected > 4).any()  # the cap cuts some
    for kind in (TaskKind.DP_GLM, TaskKind.DP_PROPENSITY, TaskKind.DP_DESCRIBE):
        patients = patients_for(plan.to_json(), kind, table)
        weights = propensity_weights(plan.weighting, patients, gamma)
        np.testing.assert_allclose(weights, np.minimum(expected, 4)[patients.rows], rtol=1e-12)


def test_a_patient_without_a_usable_treatment_or_covariate_has_no_weight() -> None:
    frame, _ = gbsg2()
    frame = frame.head(6).copy()
    frame["horTh"] = pd.array(["no", "yes", None, "maybe", "yes", "no"], dtype=object)
    frame.loc[4, "tsize"] = np.nan
    table = pa.Table.from_pandas(frame, preserve_index=False)
    plan = plan_of(GBSG2_IPTW)
    glm = patients_for(GBSG2_IPTW, TaskKind.DP_GLM, table)
    weights = plan_weights(plan, glm, np.zeros(7))
    assert weights is not None
    np.testing.assert_array_equal(np.isnan(weights), [False, False, True, True, True, False])
    assert weights[~np.isnan(weights)].tolist() == [2.0, 2.0, 2.0]  # e = 1/2 at 0: 1/e = 1/(1 - e) = 2
    # Per arm, a treatment that is missing or neither category is in no stratum at all.
    described = patients_for(GBSG2_IPTW, TaskKind.DP_DESCRIBE, table)
    assert described.rows.tolist() == [0, 1, 4, 5]
    blocks = exact_release(
        plan, layout(plan, TaskKind.DP_DESCRIBE), described, plan_weights(plan, described, np.zeros(7))
    )
    assert blocks[WEIGHT_COUNT].tolist() == [[2, 0], [1, 1]]
    assert blocks[WEIGHT_SUM].tolist() == [[4.0], [2.0]]


# -- the weighted blocks against pandas, statsmodels and lifelines ---------------------------------


GAMMA = np.array([-1.1, 1.7, 0.6, -0.2, 0.3, 0.2, 0.3])


def pandas_weights(frame: pd.DataFrame, cap: float = 20.0) -> np.ndarray:
    e = expit(propensity_design(frame) @ GAMMA)
    return np.minimum(np.where(frame.horTh == "yes", 1 / e, 1 / (1 - e)), cap)


def test_the_weighted_description_is_pandas_weighted_sums_per_arm() -> None:
    frame, table = gbsg2()
    plan = plan_of(GBSG2_IPTW)
    patients = patients_for(GBSG2_IPTW, TaskKind.DP_DESCRIBE, table)
    blocks = exact_release(plan, layout(plan, TaskKind.DP_DESCRIBE), patients, plan_weights(plan, patients, GAMMA))
    frame = frame.assign(w=pandas_weights(frame), arm=frame.horTh.map({"no": 0, "yes": 1}))
    by_arm = frame.groupby("arm")
    np.testing.assert_allclose(blocks[WEIGHT_SUM][:, 0], by_arm.w.sum(), rtol=1e-12)
    for column, low, high in (("age", 20, 80), ("tsize", 0, 120), ("pnodes", 0, 60)):
        centred = frame[column].clip(low, high) - (low + high) / 2
        np.testing.assert_allclose(blocks[f"{column}.weighted.sum"][:, 0], (centred * frame.w).groupby(frame.arm).sum())
        np.testing.assert_allclose(blocks[f"{column}.weighted.n"][:, 0], by_arm.w.sum(), rtol=1e-12)
    counts = frame.pivot_table(index="arm", columns="tgrade", values="w", aggfunc="sum", observed=False)
    np.testing.assert_allclose(blocks["tgrade.weighted.counts"][:, :3], counts[["I", "II", "III"]].to_numpy())


def test_the_weighted_exits_are_pandas_weighted_counts_per_interval_and_arm() -> None:
    frame, table = gbsg2()
    plan = plan_of(GBSG2_IPTW)
    patients = patients_for(GBSG2_IPTW, TaskKind.DP_SURVIVAL, table)
    blocks = exact_release(plan, layout(plan, TaskKind.DP_SURVIVAL), patients, plan_weights(plan, patients, GAMMA))
    interval = np.searchsorted(GRID, frame.time, side="left")
    cell = 2 * interval + (frame.cens == 0)
    expected = np.zeros((2, 2 * (len(GRID) + 1) + 1))
    np.add.at(expected, ((frame.horTh == "yes").to_numpy(int), cell.to_numpy()), pandas_weights(frame))
    np.testing.assert_allclose(blocks[WEIGHTED_EXITS], expected, rtol=1e-12)
    assert blocks[SURVIVAL_EXITS].sum() == len(frame)


def person_periods(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per patient and grid interval they spent time in, with pandas (test_cox's recipe)."""
    rows = []
    starts = [0, *GRID[:-1]]
    for index, patient in frame.iterrows():
        for j, (start, end) in enumerate(zip(starts, GRID, strict=True)):
            if patient.time <= start:
                break
            exposure = min(patient.time, end) - start
            event = float(patient.cens == 1 and patient.time <= end)
            rows.append((index, j, exposure, event, float(patient.horTh == "yes"), patient.w))
    return pd.DataFrame(rows, columns=["patient", "interval", "exposure", "event", "treated", "w"])


def test_the_weighted_cox_model_is_statsmodels_weighted_poisson_and_near_lifelines_weighted_cox() -> None:
    """At statsmodels' Poisson GLM with the weights as var_weights (the weighted log-likelihood)
    the agent's weighted score vanishes; the hazard ratio is lifelines' weighted Cox model's to
    within what the grid's piecewise-constant baseline changes (0.02 in the log)."""
    frame, table = gbsg2()
    frame = frame.assign(w=pandas_weights(frame))
    plan = plan_of(GBSG2_IPTW)
    assert plan.model is not None
    patients = patients_for(GBSG2_IPTW, TaskKind.DP_GLM, table)
    weights = plan_weights(plan, patients, GAMMA)
    periods = person_periods(frame)
    design = np.column_stack([np.eye(len(GRID))[periods.interval.to_numpy()], periods.treated.to_numpy()])
    fit = sm.GLM(
        periods.event.to_numpy(),
        design,
        family=sm.families.Poisson(),
        offset=np.log(periods.exposure.to_numpy()),
        var_weights=periods.w.to_numpy(),
    ).fit(tol=1e-12)
    sums = cox_sums(plan.model, patients, fit.params, weights=weights)
    assert np.abs(np.concatenate([sums.baseline_score, sums.score])).max() < 1e-6
    blocks = exact_model_release(plan, patients, fit.params, weights)
    assert blocks[GLM_COUNT].tolist() == [[len(frame), 0, 0]]
    cox = CoxPHFitter().fit(
        frame.assign(treated=(frame.horTh == "yes").astype(float))[["time", "cens", "treated", "w"]],
        "time",
        "cens",
        weights_col="w",
        robust=True,
    )
    assert abs(fit.params[-1] - cox.params_["treated"]) < 0.02


def test_the_reviewer_reads_the_weighting_its_cap_and_the_propensity_tasks() -> None:
    plan = plan_of(GBSG2_IPTW)
    package = parse_manifest(manifest(plan=plan.to_json(), task_kinds=[k.value for k in served_kinds(plan)]))
    lines = plan_lines(package)
    assert (
        "  weighting:   by horTh (control no, treated yes); propensity: logistic regression on age, menostat, "
        "tsize, tgrade, pnodes; estimand ATE; each weight cut at 20, so a patient moves a weighted number at most "
        "that many times an unweighted one; describe and survival are per arm"
    ) in lines
    assert any(line.startswith("  releases:    dp_propensity: 37 numbers in 3 blocks") for line in lines)
    assert (
        "               dp_propensity: the propensity model's score and information at coefficients the "
        "coordinator sends; one task per Newton-Raphson step, each charged"
    ) in lines
