"""Balance and adjusted survival of a weighted plan (edge_sponsor.statistics.iptw) on gbsg2, an
observational breast cancer cohort whose treatment (hormone therapy) was not randomised.

The releases are the agent's own (agent.statistics.tables), exact (σ = 0) or noisy, from gbsg2
split into 3 sites and weighted at a propensity model fitted with statsmodels' Logit. The
oracles are independent: means, proportions, SMDs and effective sample sizes with pandas on
the pooled patients, the weights from the estimand's formula cut at the cap, and lifelines'
weighted Kaplan-Meier fit."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import statsmodels.api as sm
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from scipy.special import expit

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, SurvivalSpec
from agent.packages.release_layout import analysed, layout
from agent.statistics.patients import patient_table
from agent.statistics.tables import exact_release, noisy_release
from agent.statistics.weighting import plan_weights
from edge_sponsor.statistics.iptw import Balance, balance, effective_scale, weighted_survival
from edge_sponsor.statistics.releases import SiteRelease
from edge_sponsor.statistics.survival import KmMethod
from tests.statistics.helpers import plan_of
from tests.statistics.test_weighting import GBSG2_IPTW, GRID, propensity_design

SITES = 3
NUMERIC = {"age": (20, 80), "tsize": (0, 120), "pnodes": (0, 60), "progrec": (0, 1000)}
CATEGORICAL = {"menostat": ("Pre", "Post"), "tgrade": ("I", "II", "III")}
# progrec is described but not in the propensity model.
PLAN: dict[str, Any] = {
    **{key: value for key, value in GBSG2_IPTW.items() if key != "model"},
    "variables": [*GBSG2_IPTW["variables"], {"column": "progrec", "kind": "numeric", "bounds": [0, 1000]}],
}


def weighted_plan(estimand: str = "ate", max_weight: float = 20.0) -> AnalysisPlan:
    return plan_of({**PLAN, "weighting": {**PLAN["weighting"], "estimand": estimand, "max_weight": max_weight}})


class Cohort:
    """gbsg2 in 3 sites, the agent's exact blocks of each (describe and survival), and the
    pandas weights at statsmodels' propensity fit."""

    def __init__(self, plan: AnalysisPlan) -> None:
        assert plan.weighting is not None
        # A ward, for a plan stratum that is none of the variables: every third patient in "b".
        frame = load_gbsg2().assign(ward=lambda rows: np.where(np.arange(len(rows)) % 3 == 0, "b", "a"))
        treated = (frame.horTh == "yes").to_numpy(float)
        design = propensity_design(frame)
        self.gamma = np.asarray(sm.Logit(treated, design).fit(disp=0, tol=1e-12).params)
        e = expit(design @ self.gamma)
        cap = plan.weighting.max_weight
        if plan.weighting.estimand.value == "ate":
            raw = np.where(treated == 1, 1 / e, 1 / (1 - e))
        else:
            raw = np.where(treated == 1, 1.0, e / (1 - e))
        self.frame = frame.assign(treated=treated, w=np.minimum(raw, cap), site=0)
        self.plan = plan
        order = np.random.default_rng(20261208).permutation(len(frame))
        self.parts = []
        for index, rows in enumerate(np.array_split(order, SITES)):
            self.frame.loc[rows, "site"] = index
            self.parts.append(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False))
        self.describe = self.exact(plan, TaskKind.DP_DESCRIBE)
        self.survival = self.exact(plan, TaskKind.DP_SURVIVAL)

    def exact(self, plan: AnalysisPlan, kind: TaskKind) -> list[dict[str, np.ndarray]]:
        shape = layout(plan, kind)
        blocks = []
        for table in self.parts:
            patients = patient_table(analysed(plan, kind), table, unit_column=None, rng=np.random.default_rng(0))
            blocks.append(exact_release(plan, shape, patients, plan_weights(plan, patients, self.gamma)))
        return blocks

    def releases(
        self, exact: list[dict[str, np.ndarray]], kind: TaskKind, sigma: float, rng: np.random.Generator
    ) -> list[SiteRelease]:
        shape = layout(self.plan, kind)
        return [
            SiteRelease(
                f"site-{i}",
                noisy_release(blocks, shape, noise_multiplier=sigma, min_cell_size=0, rng=rng),
                sigma,
            )
            for i, blocks in enumerate(exact)
        ]


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return Cohort(weighted_plan())


# -- balance -----------------------------------------------------------------------------------------


def pandas_rows(
    frame: pd.DataFrame, *, att: bool = False
) -> dict[str, tuple[float, float, float, float, float, float]]:
    """Per row name: control and treated means before, after, and the SMDs before and after (each
    divided by the unweighted arms' pooled SD, or the treated arm's for the ATT), with pandas."""
    arms = [frame[frame.treated == a] for a in (0, 1)]
    rows = {}
    values: list[tuple[str, list[pd.Series]]] = [
        (column, [arm[column].clip(low, high) for arm in arms]) for column, (low, high) in NUMERIC.items()
    ]
    values += [
        (f"{column}={category}", [(arm[column] == category).astype(float) for arm in arms])
        for column, categories in CATEGORICAL.items()
        for category in categories
    ]
    for name, (x0, x1) in values:
        before = [x0.mean(), x1.mean()]
        after = [np.average(x0, weights=arms[0].w), np.average(x1, weights=arms[1].w)]
        if "=" in name:  # a share's variance p (1 - p)
            variances = [before[0] * (1 - before[0]), before[1] * (1 - before[1])]
        else:  # the sample variance
            variances = [x0.var(ddof=1), x1.var(ddof=1)]
        scale = np.sqrt(variances[1] if att else (variances[0] + variances[1]) / 2)
        rows[name] = (*before, *after, (before[1] - before[0]) / scale, (after[1] - after[0]) / scale)
    return rows


@pytest.mark.parametrize(("estimand", "cap"), [("ate", 20.0), ("att", 1.2)])
def test_balance_at_sigma_zero_is_pandas_on_the_pooled_patients(estimand: str, cap: float) -> None:
    data = Cohort(weighted_plan(estimand, cap))
    if estimand == "att":
        assert (data.frame.w == cap).any()  # the cap cuts some controls' weights
    result = balance(data.plan, data.releases(data.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0)))
    expected = pandas_rows(data.frame, att=estimand == "att")
    assert [row.name for row in result.rows] == [
        "age",
        "menostat=Pre",
        "menostat=Post",
        "tsize",
        "tgrade=I",
        "tgrade=II",
        "tgrade=III",
        "pnodes",
        "progrec",
    ]
    for row in result.rows:
        got = (row.control_before, row.treated_before, row.control_after, row.treated_after)
        np.testing.assert_allclose((*got, row.smd_before, row.smd_after), expected[row.name], rtol=1e-9, atol=1e-12)
        assert row.smd_before_noise_sd == 0.0 and row.smd_after_noise_sd == 0.0
        assert row.in_propensity_model == (row.column != "progrec")
        assert row.category == (row.name.split("=")[1] if "=" in row.name else None)
        assert row.sites_left_out == ()
    for arm, weights in enumerate(result.arms):
        w = data.frame.w[data.frame.treated == arm]
        assert weights.label == ("no", "yes")[arm]
        assert weights.count == len(w) and weights.with_weight == len(w) and weights.without_weight == 0
        assert weights.weight_sum == pytest.approx(w.sum(), rel=1e-12)
        assert weights.weight_sumsq == pytest.approx((w**2).sum(), rel=1e-12)
        assert weights.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
        assert weights.effective_sample_size <= len(w)  # equal weights (ATT's treated) give len(w)
        assert weights.effective_sample_size_noise_sd == 0.0
    assert result.sites == ("site-0", "site-1", "site-2") and result.sites_left_out == ()


def test_weighting_at_the_fitted_propensity_balances_gbsg2(cohort: Cohort) -> None:
    """Before weighting the treated are older and more often post-menopausal (SMD about 0.6);
    after, every |SMD| is under 0.01 on the model's covariates (progrec, not in the model, 0.05)."""
    result = balance(cohort.plan, cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0)))
    smd = {row.name: (row.smd_before, row.smd_after) for row in result.rows}
    assert smd["age"][0] > 0.5 and smd["menostat=Post"][0] > 0.5 and smd["menostat=Pre"][0] < -0.5
    assert abs(smd["tgrade=III"][0]) > 0.1
    assert max(abs(after) for _, after in smd.values()) < 0.1
    assert max(abs(after) for name, (_, after) in smd.items() if name != "progrec") < 0.02
    assert sum(abs(before) > 0.1 for before, _ in smd.values()) == 4
    assert not any(row.imbalanced_after for row in result.rows)
    strict = balance(
        cohort.plan,
        cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0)),
        threshold=0.03,
    )
    assert [row.name for row in strict.rows if row.imbalanced_after] == ["progrec"]


def test_a_withheld_number_leaves_its_contributor_out_of_the_rows_that_need_it(cohort: Cohort) -> None:
    """site-1 withheld its treated arm's age (present count and what goes with it) and its
    controls' tgrade II cell: it is left out of those rows and named; a withheld 'other' or
    missing cell, which no share needs (often a true 0 below the minimum cell size), leaves
    nobody out."""
    releases = cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0))
    scalars = dict(releases[1].scalars)
    for name in list(scalars):
        if name.startswith("age.") and "[1][" in name:
            scalars[name] = math.nan
    scalars["tgrade.counts[0][1]"] = math.nan  # control arm, grade II
    scalars["tgrade.weighted.counts[0][1]"] = math.nan
    scalars["tgrade.counts[1][3]"] = math.nan  # treated arm, "other"
    scalars["menostat.counts[1][3]"] = math.nan  # treated arm, "missing"
    scalars["menostat.weighted.counts[1][3]"] = math.nan
    releases[1] = dataclasses.replace(releases[1], scalars=scalars)
    result = balance(cohort.plan, releases)
    rows = {row.name: row for row in result.rows}
    assert rows["age"].sites_left_out == ("site-1",)
    assert rows["tgrade=II"].sites_left_out == ("site-1",)
    assert rows["menostat=Post"].sites_left_out == () and rows["tsize"].sites_left_out == ()
    assert result.sites_left_out == ("site-1",) and result.sites == ("site-0", "site-1", "site-2")
    frame = cohort.frame
    kept = frame[~((frame.site == 1) & (frame.treated == 1))]
    np.testing.assert_allclose(
        (rows["age"].control_before, rows["age"].treated_before, rows["age"].smd_before, rows["age"].smd_after),
        [*(pandas_rows(kept)["age"][i] for i in (0, 1, 4, 5))],
        rtol=1e-9,
    )
    kept = frame[~((frame.site == 1) & (frame.treated == 0))]
    np.testing.assert_allclose(
        [getattr(rows["tgrade=II"], field) for field in ("control_before", "treated_after", "smd_after")],
        [pandas_rows(kept)["tgrade=II"][i] for i in (0, 3, 5)],
        rtol=1e-9,
    )


def test_noisy_counts_give_nan_not_an_exception(cohort: Cohort) -> None:
    releases = cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0))
    broken = []
    for release in releases:
        scalars = dict(release.scalars)
        for arm in (0, 1):
            scalars[f"age.n[{arm}][0]"] = -3.0 if arm == 0 else 0.4  # negative; under 2
            scalars[f"weights.sumsq[{arm}][0]"] = -1.0
            for cell in range(3):
                scalars[f"menostat.counts[{arm}][{cell}]"] = -2.0
                scalars[f"menostat.weighted.counts[{arm}][{cell}]"] = -2.0
        broken.append(dataclasses.replace(release, scalars=scalars))
    result = balance(cohort.plan, broken)
    rows = {row.name: row for row in result.rows}
    for name in ("age", "menostat=Pre", "menostat=Post"):
        assert math.isnan(rows[name].smd_before) and math.isnan(rows[name].smd_after), name
        assert math.isnan(rows[name].smd_before_noise_sd) and not rows[name].imbalanced_after
    assert math.isnan(rows["age"].control_before) and math.isnan(rows["menostat=Pre"].treated_after)
    assert math.isfinite(rows["tsize"].smd_after)
    assert all(math.isnan(arm.effective_sample_size) for arm in result.arms)


def smd_draws(cohort: Cohort, sigma: float, repeats: int, seed: int) -> tuple[Balance, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = balance(cohort.plan, cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, rng))
    values, predicted = [], []
    for _ in range(repeats):
        result = balance(cohort.plan, cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, sigma, rng))
        values.append([(row.smd_before, row.smd_after) for row in result.rows])
        predicted.append([(row.smd_before_noise_sd, row.smd_after_noise_sd) for row in result.rows])
    return truth, np.asarray(values), np.asarray(predicted)


def test_the_smd_noise_sd_is_the_spread_over_repeated_noise(cohort: Cohort) -> None:
    """At σ = 0.1 (weighted sums' noise a few % of the arm's Σ w) the delta method's noise SD of
    every SMD, before and after, is its spread over 400 draws within 15 %; the noisy SMDs
    centre on the exact ones."""
    truth, values, predicted = smd_draws(cohort, 0.1, 400, 5)
    spread = values.std(axis=0)
    model = np.sqrt((predicted**2).mean(axis=0))
    ratio = model / spread
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio
    assert spread[:, 1].min() > 0.01  # the noise is not negligible
    exact = np.asarray([(row.smd_before, row.smd_after) for row in truth.rows])
    assert np.all(np.abs(values.mean(axis=0) - exact) < 4 * spread / np.sqrt(len(values)) + 0.01 * spread)


# -- survival ----------------------------------------------------------------------------------------


def lifelines_curve(frame: pd.DataFrame, times: list[float], *, weighted: bool) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines warns that non-integer weights make its CI approximate
        fitted = KaplanMeierFitter().fit(frame.time, frame.cens, weights=frame.w if weighted else None)
    return fitted.survival_function_at_times(times).to_numpy()


def test_the_adjusted_curve_on_a_grid_of_every_time_is_lifelines_weighted_kaplan_meier(cohort: Cohort) -> None:
    """On a grid of every distinct time the product-limit form is exact: per arm, the unweighted
    curve is lifelines' and the weighted one lifelines' fit with the weights, to 1e-9; its
    Greenwood variance is Greenwood's on effective numbers c·d_w, c·N_w (c = Σ w / Σ w²)."""
    frame = cohort.frame
    times = sorted(float(t) for t in frame.time.unique())
    plan = dataclasses.replace(cohort.plan, survival=SurvivalSpec("time", "cens", tuple(times)))
    exact = cohort.exact(plan, TaskKind.DP_SURVIVAL)
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    releases = [
        SiteRelease(
            f"site-{i}",
            noisy_release(blocks, shape, noise_multiplier=0.0, min_cell_size=0, rng=np.random.default_rng(0)),
            0.0,
        )
        for i, blocks in enumerate(exact)
    ]
    result = weighted_survival(plan, releases, method=KmMethod.PRODUCT_LIMIT)
    assert result.grid == tuple(times) and result.method is KmMethod.PRODUCT_LIMIT
    assert result.sites == ("site-0", "site-1", "site-2") and result.sites_left_out == ()
    for arm, curves in enumerate(result.arms):
        rows = frame[frame.treated == arm]
        assert curves.label == ("no", "yes")[arm]
        assert curves.unweighted.label == f"horTh={curves.label}"
        # Estimable up to the arm's last time; beyond it nobody is at risk (NaN).
        inside = np.asarray(times) <= rows.time.max()
        for curve, weighted in ((curves.unweighted.curve, False), (curves.weighted.curve, True)):
            got = np.asarray(curve.survival[1:])
            assert np.array_equal(np.isfinite(got), inside)
            expected = lifelines_curve(rows, times, weighted=weighted)
            np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-9, atol=1e-12)
        w = rows.w.to_numpy()
        assert curves.weight_sum == pytest.approx(w.sum(), rel=1e-12)
        assert curves.weight_sumsq == pytest.approx((w**2).sum(), rel=1e-12)
        assert curves.scale == pytest.approx(w.sum() / (w**2).sum(), rel=1e-12)
        assert curves.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
        assert curves.weighted.patients == pytest.approx(curves.effective_sample_size, rel=1e-12)
        # Greenwood with effective numbers, in pandas: Σ c d / (c N (c N - c d)) over times ≤ t.
        c = curves.scale
        deaths = np.array([w[(rows.time == t) & (rows.cens == 1)].sum() for t in times])
        at_risk = np.array([w[rows.time >= t].sum() for t in times])
        alive = at_risk - deaths
        terms = np.where(alive > 0, c * deaths / np.where(alive > 0, c * at_risk * c * alive, 1.0), 0.0)
        greenwood = np.cumsum(terms)
        variance = np.asarray(curves.weighted.curve.variance_sampling[1:])
        finite = np.isfinite(variance)
        assert finite.mean() > 0.9
        np.testing.assert_allclose(variance[finite], greenwood[finite], rtol=1e-9, atol=1e-15)
        # Effective numbers: fewer than the arm's patients, so a wider band than the unweighted one's would be.
        assert curves.effective_sample_size < len(rows)


def test_the_adjusted_band_covers_lifelines_weighted_estimate_under_noise(cohort: Cohort) -> None:
    """On the plan's yearly grid (actuarial, the default) with noise, the weighted curve's band
    covers lifelines' weighted estimate in nearly every draw wherever the curve is informative
    (at least 60 effective patients still at risk: in the last interval, with about 15, the
    actuarial risk set is off lifelines' by more than the band, as it is without weights); the
    noise term of Var(log S) matches the spread of log S over the draws where the delta method
    holds (at least 100 at risk, the risk set's noise a fifth of it or less), within 0.8 to 1.3
    as the unweighted curve's test allows."""
    rng = np.random.default_rng(7)
    exact = weighted_survival(cohort.plan, cohort.releases(cohort.survival, TaskKind.DP_SURVIVAL, 0.0, rng))
    sigma, repeats = 0.25, 150
    expected, interior = [], []
    for arm, curves in enumerate(exact.arms):
        expected.append(lifelines_curve(cohort.frame[cohort.frame.treated == arm], GRID, weighted=True))
        at_risk = np.asarray(curves.weighted.curve.at_risk[1:])  # effective numbers after each grid time
        interior.append((at_risk >= 60) & (np.asarray(curves.weighted.curve.survival[1:]) < 0.95))
    assert [int(inside.sum()) for inside in interior] == [5, 4]
    linear = interior[0] & (np.asarray(exact.arms[0].weighted.curve.at_risk[1:]) >= 100)
    assert linear.sum() == 4
    covered, logs, noise = [], [], []
    for _ in range(repeats):
        result = weighted_survival(cohort.plan, cohort.releases(cohort.survival, TaskKind.DP_SURVIVAL, sigma, rng))
        for arm, curves in enumerate(result.arms):
            curve = curves.weighted.curve
            lower, upper = np.asarray(curve.lower[1:]), np.asarray(curve.upper[1:])
            covered += list(((lower <= expected[arm]) & (expected[arm] <= upper))[interior[arm]])
            if arm == 0:
                logs.append(np.log(np.asarray(curve.survival[1:])[linear]))
                noise.append(np.asarray(curve.variance_noise[1:])[linear])
    rate = np.mean(covered)
    assert rate >= 0.9, rate
    spread = np.std(np.asarray(logs), axis=0)
    predicted = np.sqrt(np.mean(np.asarray(noise), axis=0))
    assert spread.min() > 0.01  # the noise is visible
    assert np.all((predicted / spread > 0.8) & (predicted / spread < 1.3)), predicted / spread


def test_a_withheld_survival_stratum_is_left_out_and_named(cohort: Cohort) -> None:
    releases = cohort.releases(cohort.survival, TaskKind.DP_SURVIVAL, 0.0, np.random.default_rng(0))
    scalars = {
        name: (math.nan if "[1][" in name else value) for name, value in releases[2].scalars.items()
    }  # site-2's treated arm, every block
    releases[2] = dataclasses.replace(releases[2], scalars=scalars)
    result = weighted_survival(cohort.plan, releases, method=KmMethod.PRODUCT_LIMIT)
    control, treated = result.arms
    assert control.weighted.sites == ("site-0", "site-1", "site-2") and control.weighted.sites_left_out == ()
    assert treated.weighted.sites == ("site-0", "site-1") and treated.weighted.sites_left_out == ("site-2",)
    assert treated.unweighted.sites_left_out == ("site-2",)
    assert result.sites_left_out == ("site-2",)
    kept = cohort.frame[(cohort.frame.treated == 1) & (cohort.frame.site != 2)]
    assert treated.weight_sum == pytest.approx(kept.w.sum(), rel=1e-12)
    # Every site withheld the treated arm: its curves are NaN, not an exception.
    nothing = [
        dataclasses.replace(r, scalars={k: (math.nan if "[1][" in k else v) for k, v in r.scalars.items()})
        for r in releases
    ]
    empty = weighted_survival(cohort.plan, nothing).arms[1]
    assert all(math.isnan(s) for s in empty.weighted.curve.survival) and math.isnan(empty.scale)
    assert empty.weighted.sites == () and empty.weighted.sites_left_out == ("site-0", "site-1", "site-2")


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message(cohort: Cohort) -> None:
    describe = cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, np.random.default_rng(0))
    survival = cohort.releases(cohort.survival, TaskKind.DP_SURVIVAL, 0.0, np.random.default_rng(0))
    unweighted = dataclasses.replace(cohort.plan, weighting=None)
    with pytest.raises(ValueError, match="declares no weighting"):
        balance(unweighted, describe)
    with pytest.raises(ValueError, match="declares no weighting"):
        weighted_survival(unweighted, survival)
    for function, releases in ((balance, describe), (weighted_survival, survival)):
        with pytest.raises(ValueError, match="no site releases"):
            function(cohort.plan, [])
        with pytest.raises(ValueError, match="share a site name"):
            function(cohort.plan, [releases[0], releases[0]])
        lacking = dict(releases[0].scalars)
        lacking.pop(next(iter(lacking)))
        with pytest.raises(KeyError, match="site-0: release lacks"):
            function(cohort.plan, [dataclasses.replace(releases[0], scalars=lacking)])
    with pytest.raises(ValueError, match="threshold"):
        balance(cohort.plan, describe, threshold=0.0)
    with pytest.raises(ValueError, match="confidence"):
        weighted_survival(cohort.plan, survival, confidence=1.0)
    with pytest.raises(ValueError, match="no survival outcome"):
        weighted_survival(dataclasses.replace(cohort.plan, survival=None), survival)


def test_each_arm_pools_the_plans_strata(cohort: Cohort) -> None:
    """With the plan stratified by ward (4 release strata: each ward's control, then treated
    arm), each arm pools the wards: the same balance and curves as unstratified."""
    plan = plan_of({**PLAN, "strata": [{"column": "ward", "categories": ["a", "b"]}]})
    labels = ("ward=a, horTh=no", "ward=a, horTh=yes", "ward=b, horTh=no", "ward=b, horTh=yes")
    assert analysed(plan, TaskKind.DP_DESCRIBE).stratum_labels() == labels
    stratified = Cohort(plan)
    rng = np.random.default_rng(0)
    by_grade = balance(plan, stratified.releases(stratified.describe, TaskKind.DP_DESCRIBE, 0.0, rng))
    pooled = balance(cohort.plan, cohort.releases(cohort.describe, TaskKind.DP_DESCRIBE, 0.0, rng))
    for mine, theirs in zip(by_grade.rows, pooled.rows, strict=True):
        assert mine.name == theirs.name
        np.testing.assert_allclose(
            [mine.control_before, mine.treated_after, mine.smd_before, mine.smd_after],
            [theirs.control_before, theirs.treated_after, theirs.smd_before, theirs.smd_after],
            rtol=1e-12,
        )
    for mine_arm, their_arm in zip(by_grade.arms, pooled.arms, strict=True):
        assert mine_arm.effective_sample_size == pytest.approx(their_arm.effective_sample_size, rel=1e-12)
    curves = weighted_survival(plan, stratified.releases(stratified.survival, TaskKind.DP_SURVIVAL, 0.0, rng))
    expected = weighted_survival(cohort.plan, cohort.releases(cohort.survival, TaskKind.DP_SURVIVAL, 0.0, rng))
    for mine_curve, their_curve in zip(curves.arms, expected.arms, strict=True):
        np.testing.assert_allclose(mine_curve.weighted.curve.survival, their_curve.weighted.curve.survival, rtol=1e-12)
        np.testing.assert_allclose(mine_curve.weighted.curve.lower, their_curve.weighted.curve.lower, rtol=1e-12)


def test_the_effective_scale_stays_within_what_capped_weights_could_give() -> None:
    """c = Σw/Σw² from noisy sums, kept in [1/W, n/Σw]: every weight at most the cap, an effective
    sample size at most the patients."""
    assert effective_scale(300.0, 600.0, 200.0, 10.0) == pytest.approx(0.5)
    assert effective_scale(300.0, 60.0, 200.0, 10.0) == pytest.approx(200.0 / 300.0)  # noisy Σw² too small
    assert effective_scale(300.0, 1e6, 200.0, 10.0) == pytest.approx(0.1)  # noisy Σw² too large
    for bad in ((0.0, 1.0), (1.0, -1.0), (math.nan, 1.0)):
        assert math.isnan(effective_scale(*bad, 200.0, 10.0))
