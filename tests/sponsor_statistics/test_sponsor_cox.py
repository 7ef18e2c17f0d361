"""The sponsor's DP Cox model stratified by site (edge_sponsor.statistics.cox) against independent oracles.

The site sums here are a numpy reference written from the release's definition (exposure,
event indicators, the clamped μ, the six blocks), independently of the agent and of cox.py.
Without noise, the Newton iterations must converge to statsmodels' Poisson GLM on the
person-period data (site x interval indicators + the covariates, offset log exposure), which
is the same piecewise-exponential likelihood; lifelines' stratified CoxPHFitter (the partial
likelihood, Efron ties) is close to it within what the grid costs. With noise simulated at the
release's own scale, the reported noise SE must match the spread of the estimates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2, load_rossi

from agent.packages.manifest import TaskKind
from agent.packages.plan import CategoricalVariable, NumericVariable, Variable, parse_plan
from agent.packages.release_layout import analysed, layout
from agent.statistics.glm import exact_model_release
from agent.statistics.patients import patient_table
from edge_sponsor.statistics import cox

SITES = 3
SEED = 20261207
# The stratified model with the first-order covariance, each round on its own information.
STRATIFIED = cox.CoxOptions(baseline="stratified", settle=0, bootstrap=0)
PROPORTIONAL = cox.CoxOptions()
ROSSI_GRID = (8.0, 16.0, 24.0, 32.0, 40.0, 52.0)
ROSSI_COVARIATES = ("fin", "age", "race", "wexp", "mar", "paro", "prio")
ROSSI_VARIABLES: tuple[Variable, ...] = (
    NumericVariable("age", 17.0, 45.0),
    NumericVariable("prio", 0.0, 20.0),
    *(CategoricalVariable(c, (0, 1)) for c in ("fin", "race", "wexp", "mar", "paro")),
)
GBSG_GRID = (365.0, 730.0, 1095.0, 1460.0, 1825.0, 2190.0, 2700.0)
GBSG_COVARIATES = ("horTh", "age", "tsize", "pnodes", "tgrade")
GBSG_VARIABLES: tuple[Variable, ...] = (
    CategoricalVariable("horTh", ("no", "yes")),
    NumericVariable("age", 20.0, 80.0),
    NumericVariable("tsize", 0.0, 120.0),
    NumericVariable("pnodes", 0.0, 20.0),
    CategoricalVariable("tgrade", ("I", "II", "III")),
)


# -- the reference: the release's definition in numpy ---------------------------------------


def reference_design(frame: pd.DataFrame, variables: Sequence[Variable], covariates: Sequence[str]) -> np.ndarray:
    """x_i: numeric (clamp - centre) / half-width, categorical indicators of all but the first category."""
    by_column = {v.column: v for v in variables}
    columns = []
    for name in covariates:
        variable = by_column[name]
        if isinstance(variable, NumericVariable):
            mid, half = (variable.low + variable.high) / 2, (variable.high - variable.low) / 2
            columns.append(((frame[name].astype(float).clip(variable.low, variable.high) - mid) / half).to_numpy())
        else:
            assert isinstance(variable, CategoricalVariable)
            columns += [(frame[name] == c).to_numpy(dtype=float) for c in variable.categories[1:]]
    return np.column_stack(columns)


def exposure_events(time: np.ndarray, event: np.ndarray, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """E_ij = clip(min(T, t_J) - t_{j-1}, 0, t_j - t_{j-1}); d_ij = event and t_{j-1} < T <= t_j
    (T = 0 in the first)."""
    edges = np.concatenate([[0.0], np.asarray(grid, dtype=float)])
    start, width = edges[:-1], np.diff(edges)
    followed = np.minimum(time, edges[-1])[:, None]
    exposure = np.clip(followed - start[None, :], 0.0, width[None, :])
    inside = (time[:, None] > start[None, :]) & (time[:, None] <= edges[1:][None, :])
    inside[:, 0] |= time == 0.0
    return exposure, (inside & (event[:, None] != 0)).astype(float)


def reference_sums(
    x: np.ndarray, exposure: np.ndarray, events: np.ndarray, alpha: np.ndarray, beta: np.ndarray, lam: float
) -> dict[str, np.ndarray]:
    """The six blocks of one site at θ = (α, β), exact."""
    raw = exposure * np.exp(alpha[None, :] + (x @ beta)[:, None])
    total = raw.sum(axis=1)
    clamped = total > lam
    factor = np.where(clamped, lam / np.where(total > 0, total, 1.0), 1.0)
    mu = raw * factor[:, None]
    mu_i = mu.sum(axis=1)
    rows, cols = np.triu_indices(x.shape[1])
    return {
        cox.COUNT: np.array([float(np.sum(~clamped)), float(np.sum(clamped)), 0.0]),
        cox.BASELINE_SCORE: (events - mu).sum(axis=0),
        cox.SCORE: x.T @ (events.sum(axis=1) - mu_i),
        cox.BASELINE_INFORMATION: mu.sum(axis=0),
        cox.CROSS: (mu.T @ x).ravel(),
        cox.INFORMATION: ((x.T * mu_i) @ x)[rows, cols],
    }


class Cohort:
    """A dataset split into sites, with each site's design, exposure and events."""

    def __init__(
        self,
        frame: pd.DataFrame,
        variables: Sequence[Variable],
        covariates: Sequence[str],
        time: str,
        event: str,
        grid: Sequence[float],
        lam: float,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.design = cox.CoxDesign.of(grid, variables, covariates, lam)
        self.x = reference_design(self.frame, variables, covariates)
        self.exposure, self.events = exposure_events(
            self.frame[time].to_numpy(float), self.frame[event].to_numpy(float), grid
        )
        order = np.random.default_rng(SEED).permutation(len(self.frame))
        self.members = np.array_split(order, SITES)
        self.site_of = np.empty(len(self.frame), dtype=int)
        for index, rows in enumerate(self.members):
            self.site_of[rows] = index
        self.sites = tuple(f"site-{i}" for i in range(SITES))

    def one_round(
        self, sigma: float, rng: np.random.Generator | None
    ) -> Callable[[cox.CoxParameters], cox.CoxRoundSums]:
        noise = self.design.noise(sigma)
        sds = {
            cox.COUNT: noise.count, cox.BASELINE_SCORE: noise.baseline_score, cox.SCORE: noise.score,
            cox.BASELINE_INFORMATION: noise.baseline_information, cox.CROSS: noise.cross,
            cox.INFORMATION: noise.information,
        }  # fmt: skip

        def one(theta: cox.CoxParameters) -> cox.CoxRoundSums:
            parts = []
            for site, rows in zip(self.sites, self.members, strict=True):
                vector = theta.site_vector(site)
                j = self.design.intervals
                blocks = reference_sums(
                    self.x[rows], self.exposure[rows], self.events[rows], vector[:j], vector[j:],
                    self.design.max_cumulative_hazard,
                )  # fmt: skip
                if rng is not None:
                    blocks = {k: v + rng.normal(0.0, sds[k], v.shape) for k, v in blocks.items()}
                parts.append(cox.site_sums_from_blocks(self.design, site, blocks, sigma))
            return cox.pool_round(self.design, parts)

        return one

    def fit(
        self,
        sigma: float = 0.0,
        rounds: int = 10,
        rng: np.random.Generator | None = None,
        last: int = 1,
        options: cox.CoxOptions = STRATIFIED,
    ) -> cox.CoxFit:
        steps = cox.cox_iterations(self.design, self.sites, self.one_round(sigma, rng), rounds, options=options)
        return cox.fit_cox(self.design, steps, last=last, options=options)

    def statsmodels_fit(self) -> tuple[np.ndarray, np.ndarray]:
        """Poisson GLM on the person-period rows (site x interval indicators, covariates, offset log E)."""
        n, j = self.exposure.shape
        patient = np.repeat(np.arange(n), j)
        interval = np.tile(np.arange(j), n)
        exposure = self.exposure.ravel()
        keep = exposure > 0
        indicators = np.zeros((n * j, SITES * j))
        indicators[np.arange(n * j), self.site_of[patient] * j + interval] = 1.0
        exog = np.hstack([indicators, self.x[patient]])[keep]
        model = sm.GLM(self.events.ravel()[keep], exog, family=sm.families.Poisson(), offset=np.log(exposure[keep]))
        result = model.fit(tol=1e-13, maxiter=200)
        p = self.design.p
        return np.asarray(result.params)[-p:], np.asarray(result.bse)[-p:]


@pytest.fixture(scope="module")
def rossi() -> Cohort:
    return Cohort(load_rossi(), ROSSI_VARIABLES, ROSSI_COVARIATES, "week", "arrest", ROSSI_GRID, 5.0)


@pytest.fixture(scope="module")
def gbsg() -> Cohort:
    return Cohort(load_gbsg2(), GBSG_VARIABLES, GBSG_COVARIATES, "time", "cens", GBSG_GRID, 4.0)


ROSSI_PLAN: dict[str, object] = {
    "cohort": [],
    "strata": [],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [17, 45]},
        {"column": "prio", "kind": "numeric", "bounds": [0, 20]},
        *({"column": c, "kind": "categorical", "categories": [0, 1]} for c in ("fin", "race", "wexp", "mar", "paro")),
    ],
    "survival": {"time_column": "week", "event_column": "arrest", "grid": list(ROSSI_GRID)},
    "model": {"family": "cox", "covariates": list(ROSSI_COVARIATES), "max_cumulative_hazard": 0.7},
}


# -- the agent's release --------------------------------------------------------------------


def test_the_design_is_the_agents_model_and_layout() -> None:
    plan = parse_plan(ROSSI_PLAN)
    assert plan.model is not None
    d = cox.CoxDesign.of_model(plan.model)
    assert d.parameter_names == plan.model.design_names
    assert d.baseline_names == plan.model.baseline_names and d.names == plan.model.covariate_names
    assert d.covariates == plan.model.max_covariate_norm_squared and d.max_cumulative_hazard == 0.7
    shape = layout(plan, TaskKind.DP_GLM)
    assert [b.name for b in shape.blocks] == [
        cox.COUNT, cox.BASELINE_SCORE, cox.SCORE, cox.BASELINE_INFORMATION, cox.CROSS, cox.INFORMATION,
    ]  # fmt: skip
    assert len(shape.blocks) == len(d.release().blocks) == 6
    noise = d.noise(0.7)
    for block, sd in zip(
        shape.blocks,
        (noise.count, noise.baseline_score, noise.score, noise.baseline_information, noise.cross, noise.information),
        strict=True,
    ):
        assert shape.noise_std(block, 0.7) == pytest.approx(sd, rel=1e-12), block.name
    logistic = parse_plan(
        {k: v for k, v in ROSSI_PLAN.items() if k != "survival"}
        | {"model": {"family": "logistic", "outcome": "arrest", "covariates": ["age"]}}
    ).model
    assert logistic is not None
    with pytest.raises(ValueError, match="not a Cox model"):
        cox.CoxDesign.of_model(logistic)


def test_the_reference_is_the_agents_release(rossi: Cohort) -> None:
    """The numpy reference (this file) equals agent.statistics.glm.exact_model_release, clamped patients included."""
    plan = analysed(parse_plan(ROSSI_PLAN), TaskKind.DP_GLM)
    assert plan.model is not None
    d = cox.CoxDesign.of_model(plan.model)
    rng = np.random.default_rng(5)
    for rows in rossi.members:
        frame = rossi.frame.iloc[rows]
        patients = patient_table(plan, pa.Table.from_pandas(frame, preserve_index=False), unit_column=None,
                                 rng=np.random.default_rng(0))  # fmt: skip
        for theta in (np.concatenate([d.cold_start(), np.zeros(d.p)]), rng.normal(-3.5, 1.0, d.width)):
            agent = exact_model_release(plan, patients, theta)
            ours = reference_sums(
                rossi.x[rows], rossi.exposure[rows], rossi.events[rows], theta[: d.intervals], theta[d.intervals :], 0.7
            )
            assert set(agent) == set(ours)
            for name, values in ours.items():
                np.testing.assert_allclose(agent[name][0], values, rtol=1e-10, atol=1e-10, err_msg=name)
            if theta[0] != d.cold_start()[0]:
                assert ours[cox.COUNT][1] > 0  # some patients clamped at Λmax 0.7


# -- without noise: the oracles -------------------------------------------------------------


def test_names_as_the_agent_names_the_design(rossi: Cohort) -> None:
    assert rossi.design.baseline_names[:2] == ("(baseline) [0, 8]", "(baseline) (8, 16]")
    assert rossi.design.names == ("fin=1", "age", "race=1", "wexp=1", "mar=1", "paro=1", "prio")
    d = cox.CoxDesign.of((0.5, 2.25), ROSSI_VARIABLES, ("age",), 2.0)
    assert d.parameter_names == ("(baseline) [0, 0.5]", "(baseline) (0.5, 2.25]", "age")
    assert d.width == 3


def test_exact_sums_converge_to_statsmodels_poisson(rossi: Cohort) -> None:
    fit = rossi.fit(rounds=12)
    beta = np.array([c.estimate for c in fit.design.coefficients])
    se = np.array([c.se_sampling for c in fit.design.coefficients])
    expected_beta, expected_se = rossi.statsmodels_fit()
    # Measured: max |Δβ| 3e-14, SE relative 7e-15 after 12 rounds (after 7: 3e-14 and 5e-12).
    assert np.max(np.abs(beta - expected_beta)) < 1e-6
    assert np.max(np.abs(se / expected_se - 1.0)) < 1e-4
    assert all(c.se_noise == 0.0 for c in fit.design.coefficients)
    assert fit.clamped == 0.0 and fit.included == 432.0 and fit.reliable, fit.unreliable
    assert fit.floored_eigenvalues == 0 and fit.floored_baseline == 0 and fit.capped == 0
    # The original scale: per year of age, per prior conviction (β / half-width).
    by_name = {c.name: c for c in fit.original.coefficients}
    assert by_name["age"].estimate == pytest.approx(beta[1] / 14.0, rel=1e-12)
    assert by_name["prio"].estimate == pytest.approx(beta[6] / 10.0, rel=1e-12)
    assert by_name["fin=1"].hazard_ratio == pytest.approx(math.exp(beta[0]), rel=1e-12)


def test_baselines_match_statsmodels_site_intervals(rossi: Cohort) -> None:
    """Each site's baseline log-hazard is its site x interval coefficient in the Poisson GLM."""
    fit = rossi.fit(rounds=12)
    n, j = rossi.exposure.shape
    keep = rossi.exposure.ravel() > 0
    patient = np.repeat(np.arange(n), j)
    indicators = np.zeros((n * j, SITES * j))
    indicators[np.arange(n * j), rossi.site_of[patient] * j + np.tile(np.arange(j), n)] = 1.0
    exog = np.hstack([indicators, rossi.x[patient]])[keep]
    result = sm.GLM(
        rossi.events.ravel()[keep], exog, family=sm.families.Poisson(), offset=np.log(rossi.exposure.ravel()[keep])
    ).fit(tol=1e-13, maxiter=200)
    expected = np.asarray(result.params)[: SITES * j].reshape(SITES, j)
    expected_se = np.asarray(result.bse)[: SITES * j].reshape(SITES, j)
    got = np.array([[i.log_hazard for i in b.intervals] for b in fit.baselines])
    got_se = np.array([[i.se for i in b.intervals] for b in fit.baselines])
    assert np.max(np.abs(got - expected)) < 1e-6
    assert np.max(np.abs(got_se / expected_se - 1.0)) < 1e-4
    assert [b.site for b in fit.baselines] == list(rossi.sites)
    assert all(i.note == "" for b in fit.baselines for i in b.intervals)


def test_hazard_ratios_near_lifelines_stratified_cox(rossi: Cohort) -> None:
    fit = rossi.fit(rounds=12)
    frame = rossi.frame[["week", "arrest", *ROSSI_COVARIATES]].copy()
    frame["site"] = rossi.site_of
    lifelines = CoxPHFitter().fit(frame, "week", "arrest", strata=["site"])
    names = {"fin": "fin=1", "race": "race=1", "wexp": "wexp=1", "mar": "mar=1", "paro": "paro=1"}
    ours = {c.name: c for c in fit.original.coefficients}
    gaps, ratios = [], []
    for column in ROSSI_COVARIATES:
        coefficient = ours[names.get(column, column)]
        gap = abs(coefficient.estimate - float(lifelines.params_[column]))
        gaps.append(gap / float(lifelines.standard_errors_[column]))
        ratios.append(coefficient.se_sampling / float(lifelines.standard_errors_[column]))
    # The 6-interval grid replaces the partial likelihood's risk sets by piecewise-constant
    # hazards (and Efron's ties by exposure): measured max 0.028 SE (fin; |Δ log HR| 0.0054),
    # the others 0.001 to 0.022 SE; SEs within 0.2 %. 0.1 SE and 2 % are bounds a wrong sign,
    # scale or design column breaks by far.
    assert max(gaps) < 0.1, gaps
    assert max(abs(r - 1.0) for r in ratios) < 0.02, ratios


def test_joint_information_keeps_the_block_arrow(rossi: Cohort) -> None:
    theta = cox.CoxParameters.cold(rossi.design, rossi.sites)
    sums = rossi.one_round(0.0, None)(theta)
    released = sums.joint_information()
    projected = cox.joint_information(sums).dense()
    j, p = rossi.design.intervals, rossi.design.p
    n = SITES * j
    structural = np.ones((n + p, n + p), dtype=bool)
    structural[:n, n:] = structural[n:, :n] = structural[n:, n:] = False
    structural[np.arange(n), np.arange(n)] = False
    assert np.all(released[structural] == 0.0) and np.all(projected[structural] == 0.0)
    # Without noise and with every interval informative, the projection changes nothing.
    np.testing.assert_allclose(projected, released, rtol=1e-10, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(projected) > 0)
    # The block solve is the dense solve.
    delta_alpha, delta_beta = cox.joint_information(sums).solve(sums.baseline_score, sums.score)
    np.testing.assert_allclose(
        np.concatenate([delta_alpha.ravel(), delta_beta]), np.linalg.solve(released, sums.joint_score()), rtol=1e-9
    )


def test_noisy_information_is_made_positive_definite_structurally(rossi: Cohort) -> None:
    theta = cox.CoxParameters.cold(rossi.design, rossi.sites)
    sums = rossi.one_round(1.0, np.random.default_rng(1))(theta)
    information = cox.joint_information(sums)
    dense = information.dense()
    n = SITES * rossi.design.intervals
    off = ~np.eye(n, dtype=bool)
    assert np.all(dense[:n, :n][off] == 0.0)
    assert float(np.linalg.eigvalsh(dense)[0]) > 0.0
    # Each α floor is its site's noise SD: σ·√6·Λmax.
    assert np.min(information.baseline) >= math.sqrt(6.0) * 5.0 * (1 - 1e-12)
    np.testing.assert_array_equal(dense[:n, n:], sums.joint_information()[:n, n:])


def test_clamped_patients_are_reported(rossi: Cohort) -> None:
    small = Cohort(load_rossi(), ROSSI_VARIABLES, ROSSI_COVARIATES, "week", "arrest", ROSSI_GRID, 0.7)
    fit = small.fit(rounds=12)
    assert fit.clamped == 18.0 and fit.included == 432.0
    assert "18 patients" in fit.unreliable and "away from the null" in fit.unreliable
    assert "raise max_cumulative_hazard" in fit.unreliable
    exact = rossi.fit(rounds=12)
    assert exact.clamped == 0.0
    # A clamped patient's expected events stay at Λmax whatever β, so the high-risk patients'
    # excess events are matched by raising everyone else's hazard: the strongest hazard
    # ratios are exaggerated (measured: prio 0.970 -> 1.134, wexp -0.807 -> -0.828 per design unit).
    clamped = {c.name: c.estimate for c in fit.design.coefficients}
    full = {c.name: c.estimate for c in exact.design.coefficients}
    assert clamped["prio"] > full["prio"] + 0.1 and clamped["age"] < full["age"]


def test_a_sites_withheld_clamped_count_leaves_the_others_and_their_warning() -> None:
    """A site's clamped count below its minimum cell size is withheld (NaN): the other sites'
    counts still add up and still raise the warning (a NaN total silenced it)."""
    small = Cohort(load_rossi(), ROSSI_VARIABLES, ROSSI_COVARIATES, "week", "arrest", ROSSI_GRID, 0.7)
    exact = small.one_round(0.0, None)
    withheld: list[float] = []

    def one(theta: cox.CoxParameters) -> cox.CoxRoundSums:
        sums = exact(theta)
        withheld.append(sums.parts[0].clamped)
        parts = [dataclasses.replace(sums.parts[0], clamped=math.nan), *sums.parts[1:]]
        return cox.pool_round(small.design, parts)

    steps = cox.cox_iterations(small.design, small.sites, one, 12, options=STRATIFIED)
    fit = cox.fit_cox(small.design, steps, options=STRATIFIED)
    assert fit.clamped_withheld == 1 and fit.clamped == 18.0 - withheld[-1] > 0.5
    assert "away from the null" in fit.unreliable


def test_site_with_an_empty_interval(rossi: Cohort) -> None:
    """A site with no events in an interval: the fit still converges for β, and says so."""
    frame = load_rossi()
    order = np.random.default_rng(SEED).permutation(len(frame))
    site0 = np.array_split(order, SITES)[0]
    week = frame["week"].to_numpy()
    empty = np.zeros(len(frame), dtype=bool)
    empty[site0] = (week[site0] > 8) & (week[site0] <= 16)
    frame.loc[empty, "arrest"] = 0
    cohort = Cohort(frame, ROSSI_VARIABLES, ROSSI_COVARIATES, "week", "arrest", ROSSI_GRID, 5.0)
    fit = cohort.fit(rounds=12)
    note = fit.baselines[0].intervals[1].note
    assert note.startswith("no events in this interval"), note
    assert all(i.note == "" for b in fit.baselines[1:] for i in b.intervals)
    # β is the Poisson GLM's with that site's interval dropped (its α → -∞ takes no events).
    n, j = cohort.exposure.shape
    patient = np.repeat(np.arange(n), j)
    interval = np.tile(np.arange(j), n)
    cell = cohort.site_of[patient] * j + interval
    keep = (cohort.exposure.ravel() > 0) & (cell != 1)
    indicators = np.zeros((n * j, SITES * j))
    indicators[np.arange(n * j), cell] = 1.0
    exog = np.delete(np.hstack([indicators, cohort.x[patient]]), 1, axis=1)[keep]
    result = sm.GLM(
        cohort.events.ravel()[keep], exog, family=sm.families.Poisson(), offset=np.log(cohort.exposure.ravel()[keep])
    ).fit(tol=1e-13)
    beta = np.array([c.estimate for c in fit.design.coefficients])
    # α for the empty interval falls by MAX_STEP per round, and the other estimates carry
    # exp(α) of its exposure: measured 7e-11 after 12 rounds (α -29.7), 1.6e-7 after 8.
    assert np.max(np.abs(beta - np.asarray(result.params)[-cohort.design.p :])) < 1e-8
    assert fit.baselines[0].intervals[1].log_hazard < -20.0 and fit.reliable
    # With noise the same interval is "not distinguishable from 0" and the fit is finite.
    noisy = cohort.fit(sigma=0.5, rounds=8, rng=np.random.default_rng(3))
    assert all(math.isfinite(c.estimate) and math.isfinite(c.se) for c in noisy.design.coefficients)
    assert noisy.baselines[0].intervals[1].note.startswith("events not distinguishable from 0")


# -- with noise ------------------------------------------------------------------------------


def test_noise_se_matches_the_spread_and_intervals_cover_the_mle(gbsg: Cohort) -> None:
    """Noise at the release's own scale, 200 draws of 8 rounds averaging the last 3.

    gbsg2's 686 patients hold little information per design unit against sensitivities that
    grow with Λmax·R² (4·5 here): only σ ≈ 0.005 keeps noise/information below UNRELIABLE_NOISE
    (median 0.27), where the first-order noise SE is meant to hold.
    """
    mle = np.array([c.estimate for c in gbsg.fit(rounds=12).design.coefficients])
    sigma, draws = 0.005, 200
    rng = np.random.default_rng(2026)
    fits = [gbsg.fit(sigma=sigma, rounds=8, rng=rng, last=3) for _ in range(draws)]
    estimates = np.array([[c.estimate for c in f.design.coefficients] for f in fits])
    se_noise = np.array([[c.se_noise for c in f.design.coefficients] for f in fits])
    se_total = np.array([[c.se for c in f.design.coefficients] for f in fits])
    spread = estimates.std(axis=0) / np.sqrt(np.mean(se_noise**2, axis=0))
    inside_noise = np.mean(np.abs(estimates - mle) <= 1.96 * se_noise, axis=0)
    inside_total = np.mean(np.abs(estimates - mle) <= 1.96 * se_total, axis=0)
    # Measured: SD/SE 0.94 to 1.04 per coefficient; the noise interval holds the MLE in 93 to
    # 96 % of draws, the total interval (sampling too) in 100 %; mean offset at most 0.15 SD.
    assert np.all((spread > 0.8) & (spread < 1.25)), spread
    assert np.all(inside_noise >= 0.88), inside_noise
    assert np.all(inside_total >= 0.95), inside_total
    assert np.max(np.abs(estimates.mean(axis=0) - mle) / estimates.std(axis=0)) < 0.35
    assert sum(f.reliable for f in fits) >= 0.95 * draws


def test_noise_beyond_the_first_order_is_flagged(gbsg: Cohort) -> None:
    """At σ = 0.02 the reported noise SE is 1.2 to 1.7-fold short (measured): flagged."""
    fits = [gbsg.fit(sigma=0.02, rounds=8, rng=np.random.default_rng(seed), last=3) for seed in range(20)]
    # Measured: 19 of 20 say so (noise/information 0.73 to 1.8); the 20th (0.53) is flagged for
    # a patient clamped at its noisy iterates.
    assert sum("mostly noise" in f.unreliable for f in fits) >= 18


def test_too_much_noise_is_flagged(rossi: Cohort) -> None:
    fit = rossi.fit(sigma=5.0, rounds=6, rng=np.random.default_rng(4))
    assert not fit.reliable and "mostly noise" in fit.unreliable
    assert all(math.isfinite(c.estimate) for c in fit.design.coefficients)


# -- bad input --------------------------------------------------------------------------------


def _blocks(cohort: Cohort) -> dict[str, np.ndarray]:
    j = cohort.design.intervals
    alpha, beta = cohort.design.cold_start(), np.zeros(cohort.design.p)
    rows = cohort.members[0]
    del j
    return reference_sums(cohort.x[rows], cohort.exposure[rows], cohort.events[rows], alpha, beta, 5.0)


@pytest.mark.parametrize(
    ("block", "value", "message"),
    [
        (cox.SCORE, np.zeros(3), r"glm\.score has shape"),
        (cox.CROSS, np.zeros(5), r"glm\.baseline\.cross has shape"),
        (cox.CROSS, np.zeros((7, 6)), r"glm\.baseline\.cross has shape"),
        (cox.INFORMATION, np.zeros(49), r"glm\.information has shape"),
        (cox.BASELINE_INFORMATION, np.full(6, np.nan), r"glm\.baseline\.information holds a non-finite"),
        (cox.BASELINE_SCORE, np.array([1, 2, 3, 4, 5, np.inf]), r"glm\.baseline\.score holds a non-finite"),
        (cox.COUNT, np.zeros(2), r"glm\.count has shape"),
    ],
)
def test_bad_sums_are_refused(rossi: Cohort, block: str, value: np.ndarray, message: str) -> None:
    blocks = _blocks(rossi)
    blocks[block] = value
    with pytest.raises(ValueError, match=message):
        cox.site_sums_from_blocks(rossi.design, "site-0", blocks, 0.0)


def test_bad_rounds_are_refused(rossi: Cohort) -> None:
    blocks = _blocks(rossi)
    with pytest.raises(ValueError, match=r"lacks glm\.baseline\.cross"):
        cox.site_sums_from_blocks(rossi.design, "a", {k: v for k, v in blocks.items() if k != cox.CROSS}, 0.0)
    with pytest.raises(ValueError, match="no site released"):
        cox.pool_round(rossi.design, [])
    part = cox.site_sums_from_blocks(rossi.design, "a", blocks, 0.0)
    with pytest.raises(ValueError, match="released twice"):
        cox.pool_round(rossi.design, [part, part])
    other = cox.CoxDesign.of((10.0, 52.0), ROSSI_VARIABLES, ROSSI_COVARIATES, 5.0)
    with pytest.raises(ValueError, match="not of a design with J = 2"):
        cox.pool_round(other, [part])
    with pytest.raises(ValueError, match="without parameters"):
        cox.newton_step(cox.CoxParameters.cold(rossi.design, ["b"]), cox.pool_round(rossi.design, [part]))
    with pytest.raises(ValueError, match="one or more distinct"):
        cox.CoxParameters.cold(rossi.design, [])
    with pytest.raises(ValueError, match="no rounds"):
        cox.fit_cox(rossi.design, [])
    zero = {k: np.zeros_like(v) for k, v in blocks.items()}
    with pytest.raises(ValueError, match="no patient is at risk"):
        cox.joint_information(cox.pool_round(rossi.design, [cox.site_sums_from_blocks(rossi.design, "a", zero, 0.0)]))


@pytest.mark.parametrize(
    ("grid", "covariates", "lam", "message"),
    [
        ((), ("age",), 1.0, "at least one finite time"),
        ((0.0, 1.0), ("age",), 1.0, "at least one finite time"),
        ((2.0, 1.0), ("age",), 1.0, "strictly increasing"),
        ((1.0, math.inf), ("age",), 1.0, "at least one finite time"),
        ((1.0,), (), 1.0, "at least one covariate"),
        ((1.0,), ("age",), 0.0, "max_cumulative_hazard"),
        ((1.0,), ("height",), 1.0, "not a variable of the plan"),
    ],
)
def test_bad_designs_are_refused(
    grid: tuple[float, ...], covariates: tuple[str, ...], lam: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cox.CoxDesign.of(grid, ROSSI_VARIABLES, covariates, lam)


def test_noise_scale_and_cold_start() -> None:
    d = cox.CoxDesign.of((1.0, 4.0), ROSSI_VARIABLES, ("age", "fin", "prio"), 2.0)
    noise = d.noise(0.5)
    # σ·Δ_k·√(100 / w_k): the agent's weights (1, 15, 30, 10, 14, 30 of 100) and sensitivities.
    assert noise.count == pytest.approx(0.5 * 10.0)
    assert noise.baseline_score == pytest.approx(0.5 * math.sqrt(5.0) * math.sqrt(100 / 15))
    assert noise.score == pytest.approx(0.5 * math.sqrt(3.0) * 2.0 * math.sqrt(100 / 30))
    assert noise.baseline_information == pytest.approx(0.5 * 2.0 * math.sqrt(100 / 10))
    assert noise.cross == pytest.approx(0.5 * 2.0 * math.sqrt(3.0) * math.sqrt(100 / 14))
    assert noise.information == pytest.approx(0.5 * 2.0 * 3.0 * math.sqrt(100 / 30))
    np.testing.assert_allclose(d.cold_start(), [-math.log(4.0)] * 2)
    assert cox.CoxDesign.of((1.0, 4.0), ROSSI_VARIABLES, ("age",), 0.5).cold_start()[0] == pytest.approx(
        math.log(0.5 / 4.0)
    )
    theta = cox.CoxParameters.cold(d, ["a", "b"])
    assert theta.site_vector("b").shape == (d.width,) and theta.vector.shape == (2 * 2 + 3,)


# -- proportional baselines, the per-round entry point, the bootstrap ---------------------------


def _proportional_statsmodels(cohort: Cohort) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Poisson GLM on the person-period rows with interval indicators, site indicators (all but
    the first; no interaction) and the covariates, offset log E: (β, SE, α_j, the sites' offsets)."""
    n, j = cohort.exposure.shape
    patient = np.repeat(np.arange(n), j)
    interval = np.tile(np.arange(j), n)
    keep = cohort.exposure.ravel() > 0
    intervals = np.zeros((n * j, j))
    intervals[np.arange(n * j), interval] = 1.0
    sites = np.column_stack([(cohort.site_of[patient] == s).astype(float) for s in range(1, SITES)])
    exog = np.hstack([intervals, sites, cohort.x[patient]])[keep]
    result = sm.GLM(
        cohort.events.ravel()[keep], exog, family=sm.families.Poisson(), offset=np.log(cohort.exposure.ravel()[keep])
    ).fit(tol=1e-13, maxiter=200)
    params, bse = np.asarray(result.params), np.asarray(result.bse)
    p = cohort.design.p
    return params[-p:], bse[-p:], params[:j], np.concatenate([[0.0], params[j : j + SITES - 1]])


@pytest.mark.parametrize("name", ["rossi", "gbsg"])
def test_proportional_baselines_converge_to_statsmodels_poisson(name: str, request: pytest.FixtureRequest) -> None:
    cohort: Cohort = request.getfixturevalue(name)
    fit = cohort.fit(rounds=12, options=PROPORTIONAL)
    beta = np.array([c.estimate for c in fit.design.coefficients])
    se = np.array([c.se_sampling for c in fit.design.coefficients])
    expected_beta, expected_se, alpha, offsets = _proportional_statsmodels(cohort)
    # Measured on rossi: |Δβ| 7e-15, SE relative 1e-14, baselines 3e-14.
    assert np.max(np.abs(beta - expected_beta)) < 1e-6
    assert np.max(np.abs(se / expected_se - 1.0)) < 1e-4
    got = np.array([[i.log_hazard for i in b.intervals] for b in fit.baselines])
    assert np.max(np.abs(got - (alpha[None, :] + offsets[:, None]))) < 1e-6
    assert fit.reliable and not fit.bootstrapped and all(c.se_noise == 0.0 for c in fit.design.coefficients)


def test_cox_round_is_the_run_and_keeps_baselines_proportional(rossi: Cohort) -> None:
    """The coordinator's per-round entry point, called round by round, is cox_iterations' run."""
    one_round = rossi.one_round(0.3, np.random.default_rng(11))
    theta = cox.CoxParameters.cold(rossi.design, rossi.sites)
    steps: list[cox.CoxStep] = []
    for _ in range(6):
        step = cox.cox_round(rossi.design, PROPORTIONAL, steps, one_round(theta), theta)
        steps.append(step)
        theta = step.parameters
        # Every site's baseline is the first's plus a constant (the sites' offsets).
        spread = np.ptp(theta.baseline - theta.baseline[0][None, :], axis=1)
        assert np.max(spread) < 1e-9
    again = cox.cox_iterations(
        rossi.design, rossi.sites, rossi.one_round(0.3, np.random.default_rng(11)), 6, options=PROPORTIONAL
    )
    np.testing.assert_array_equal(again[-1].parameters.beta, theta.beta)
    assert steps[0].profile and not any(s.profile for s in steps[1:])
    fit = cox.fit_cox(rossi.design, steps, last=3, options=PROPORTIONAL)
    assert fit.bootstrapped and fit.averaged_rounds == 3
    with pytest.raises(ValueError, match="baseline must be"):
        cox.CoxOptions(baseline="shared")
    with pytest.raises(ValueError, match="bootstrap must be"):
        cox.CoxOptions(bootstrap=5)


def test_bootstrap_intervals_hold_the_spread_the_first_order_misses(rossi: Cohort) -> None:
    """Simulated noise at σ = 0.05 on rossi (Λmax 5, 7 covariates), 60 draws of 8 rounds.

    Measured: undamped, the first-order noise SE (the information taken as exact) is 1.5 to
    2.3-fold short of the spread; with the defaults (steps damped to 0.15 once the information
    is averaged, the bootstrap's covariance) the spread is 0.71 to 0.96 of the reported noise
    SE, and the intervals hold the noiseless fit in 97 to 100 % of draws, each coefficient.
    """
    mle = np.array([c.estimate for c in rossi.fit(rounds=12, options=PROPORTIONAL).design.coefficients])
    spreads, coverages = [], []
    for options in (cox.CoxOptions(bootstrap=0, damping=1.0), PROPORTIONAL):
        rng = np.random.default_rng(5)
        fits = [rossi.fit(sigma=0.05, rounds=8, rng=rng, last=3, options=options) for _ in range(60)]
        estimates = np.array([[c.estimate for c in f.design.coefficients] for f in fits])
        se_noise = np.array([[c.se_noise for c in f.design.coefficients] for f in fits])
        se = np.array([[c.se for c in f.design.coefficients] for f in fits])
        spreads.append(estimates.std(axis=0) / np.sqrt(np.mean(se_noise**2, axis=0)))
        coverages.append(np.mean(np.abs(estimates - mle) <= 1.96 * se, axis=0))
    first_order, bootstrap = spreads
    assert np.all(first_order > 1.3), first_order
    assert np.all((bootstrap > 0.6) & (bootstrap < 1.25)), bootstrap
    assert np.all(coverages[1] >= 0.93), coverages[1]


def test_proportional_fit_under_heavy_noise_is_flagged(rossi: Cohort) -> None:
    fit = rossi.fit(sigma=5.0, rounds=6, rng=np.random.default_rng(4), last=3, options=PROPORTIONAL)
    assert fit.bootstrapped and "mostly noise" in fit.unreliable
    assert fit.noise_to_information > cox.UNRELIABLE_BOOTSTRAP_NOISE
    assert all(math.isfinite(c.estimate) and math.isfinite(c.se) for c in fit.design.coefficients)
    assert all(math.isfinite(i.log_hazard) for b in fit.baselines for i in b.intervals)
