"""A weighted Cox model over sites (edge_sponsor.statistics.cox on a weighted plan's dp_glm
releases): the agent's own exact releases of gbsg2 split into 3 sites, weighted at a propensity
model fitted with statsmodels; the hazard ratio against lifelines' weighted Cox model
stratified by site, and its standard error, corrected by the arms' effective sample sizes,
against lifelines' robust (sandwich) one, where the uncorrected model-based SE is far too narrow."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2
from lifelines.exceptions import StatisticalWarning
from scipy.special import expit

from agent.packages.manifest import TaskKind
from agent.packages.release_layout import analysed
from agent.statistics.glm import exact_model_release
from agent.statistics.patients import patient_table
from agent.statistics.weighting import plan_weights
from edge_sponsor.coordinator.cox_tasks import run_cox
from edge_sponsor.coordinator.iptw_tasks import effective_sizes, run_iptw
from edge_sponsor.coordinator.plan_tasks import PlanPackage
from edge_sponsor.statistics import cox, iptw
from tests.coordinator.test_iptw_study import IPTW_PLAN
from tests.packages.package_builders import new_key
from tests.statistics.helpers import plan_of
from tests.statistics.test_weighting import GBSG2_IPTW, propensity_design
from tests.tasks.test_plan_tasks import plan_package

SITES = 3
STRATIFIED = cox.CoxOptions(baseline="stratified", settle=0, bootstrap=0)


class WeightedCohort:
    def __init__(self, max_cumulative_hazard: float = 10.0) -> None:
        frame = load_gbsg2()
        plan_json = {**GBSG2_IPTW, "model": {**GBSG2_IPTW["model"], "max_cumulative_hazard": max_cumulative_hazard}}
        self.plan = plan_of(plan_json)
        assert self.plan.model is not None and self.plan.weighting is not None
        treated = (frame.horTh == "yes").to_numpy(float)
        self.gamma = np.asarray(sm.Logit(treated, propensity_design(frame)).fit(disp=0).params)
        order = np.random.default_rng(20261208).permutation(len(frame))
        self.members = np.array_split(order, SITES)
        self.sites = tuple(f"site-{i}" for i in range(SITES))
        self.frame = frame.assign(site=0, treated=treated)
        self.design = cox.CoxDesign.of_model(self.plan.model, self.plan.weighting.max_weight)
        glm_plan = analysed(self.plan, TaskKind.DP_GLM)
        self.patients = []
        for index, rows in enumerate(self.members):
            self.frame.loc[rows, "site"] = index
            table = pa.Table.from_pandas(frame.iloc[rows], preserve_index=False)
            patients = patient_table(glm_plan, table, unit_column=None, rng=np.random.default_rng(0))
            self.patients.append((patients, plan_weights(self.plan, patients, self.gamma)))
        e = expit(propensity_design(frame) @ self.gamma)
        self.frame["w"] = np.minimum(np.where(treated == 1, 1 / e, 1 / (1 - e)), self.plan.weighting.max_weight)

    def one_round(self, theta: cox.CoxParameters) -> cox.CoxRoundSums:
        parts = []
        for site, (patients, weights) in zip(self.sites, self.patients, strict=True):
            blocks = exact_model_release(self.plan, patients, theta.site_vector(site), weights)
            flat = {name: values[0] for name, values in blocks.items()}
            parts.append(cox.site_sums_from_blocks(self.design, site, flat, 0.0))
        return cox.pool_round(self.design, parts)

    def fit(self, options: cox.CoxOptions, rounds: int = 10, weights: cox.EffectiveSizes | None = None) -> cox.CoxFit:
        steps = cox.cox_iterations(self.design, self.sites, self.one_round, rounds, options=options)
        return cox.fit_cox(self.design, steps, options=options, weights=weights)

    def sizes(self, *, per_arm: bool) -> cox.EffectiveSizes:
        """The arms' Σ w and Σ w², from pandas."""
        w, treated = self.frame.w.to_numpy(), self.frame.treated.to_numpy() == 1
        return cox.EffectiveSizes(
            w[~treated].sum(), (w[~treated] ** 2).sum(), w[treated].sum(), (w[treated] ** 2).sum(), per_arm=per_arm
        )

    def lifelines(self, **options: object) -> CoxPHFitter:
        columns = ["time", "cens", "treated", "w", "site"]
        return CoxPHFitter().fit(self.frame[columns], "time", "cens", weights_col="w", strata=["site"], **options)


@pytest.fixture(scope="module")
def cohort() -> WeightedCohort:
    return WeightedCohort()


def test_a_weighted_design_is_the_agents_weighted_layout(cohort: WeightedCohort) -> None:
    assert cohort.design.weighted and cohort.design.max_weight == 20.0
    plain = dataclasses.replace(cohort.design, max_weight=None)
    weighted = {block.name: block.sensitivity for block in cohort.design.release().blocks}
    unweighted = {block.name: block.sensitivity for block in plain.release().blocks}
    expected = {name: value * (1 if name == "glm.count" else 20) for name, value in unweighted.items()}
    assert weighted == pytest.approx(expected, rel=1e-15)


def test_the_weighted_hazard_ratio_is_lifelines_and_its_corrected_se_the_robust_one(cohort: WeightedCohort) -> None:
    robust = cohort.lifelines(robust=True)
    with pytest.warns(StatisticalWarning, match="robust=True"):
        naive = cohort.lifelines()
    target = float(robust.standard_errors_["treated"])
    uncorrected = cohort.fit(STRATIFIED)
    (ratio,) = uncorrected.original.coefficients
    # The 7-interval grid's piecewise-constant baselines against the partial likelihood: measured
    # log HR -0.4043 against -0.4035.
    assert ratio.estimate == pytest.approx(float(robust.params_["treated"]), abs=0.02)
    # Uncorrected, the model-based SE is lifelines' naive one, far too narrow (0.084 against 0.138).
    assert ratio.se_sampling == pytest.approx(float(naive.standard_errors_["treated"]), rel=0.03)
    assert ratio.se_sampling < 0.7 * target and not uncorrected.weighted_variance
    # Each arm's weights rescaled to its effective sample size: measured 0.1352 against 0.1377.
    per_arm = cohort.fit(STRATIFIED, weights=cohort.sizes(per_arm=True))
    assert per_arm.original.coefficients[0].se_sampling == pytest.approx(target, rel=0.04)
    assert per_arm.original.coefficients[0].estimate == ratio.estimate
    assert per_arm.weighted_variance == "each arm's weights rescaled to its effective sample size"
    # The cohort's design effect alone (a model with other covariates): measured 0.1328.
    overall = cohort.fit(STRATIFIED, weights=cohort.sizes(per_arm=False))
    assert overall.original.coefficients[0].se_sampling == pytest.approx(target, rel=0.06)


def test_the_proportional_baselines_fit_is_corrected_too(cohort: WeightedCohort) -> None:
    fit = cohort.fit(cox.CoxOptions(bootstrap=0), weights=cohort.sizes(per_arm=True))
    (ratio,) = fit.original.coefficients
    frame = cohort.frame.assign(**{f"site{k}": (cohort.frame.site == k).astype(float) for k in (1, 2)})
    reference = CoxPHFitter().fit(
        frame[["time", "cens", "treated", "w", "site1", "site2"]], "time", "cens", weights_col="w", robust=True
    )
    assert ratio.estimate == pytest.approx(float(reference.params_["treated"]), abs=0.03)
    assert ratio.se_sampling == pytest.approx(float(reference.standard_errors_["treated"]), rel=0.06)


def test_bad_sums_of_weights_are_refused() -> None:
    for values in ((0.0, 1.0, 1.0, 1.0), (1.0, float("nan"), 1.0, 1.0), (1.0, 1.0, -2.0, 1.0)):
        with pytest.raises(ValueError, match="must be positive"):
            cox.EffectiveSizes(*values, per_arm=True)


def arm(weight_sum: float, weight_sumsq: float, with_weight: float = 300.0) -> iptw.ArmWeights:
    return iptw.ArmWeights("arm", with_weight, with_weight, 0.0, weight_sum, weight_sumsq, 0.0, 0.0, ())


def test_the_sums_of_weights_fall_back_to_the_conservative_cap_never_to_no_correction() -> None:
    """A noisy Σw² at or below 0, or an arm withheld everywhere, gives that arm the factor 1/W (every
    weight the cap: the widest interval it could need) and says so; a usable one is kept within
    [1/W, n/Σw]; no sums at all still correct (conservatively) rather than report H⁻¹."""
    usable = iptw.Balance(0.1, (arm(600.0, 1200.0), arm(400.0, 1000.0)), (), (), ())
    sizes = effective_sizes(usable, None, 10.0, per_arm=True)
    assert (sizes.control, sizes.treated, sizes.conservative) == (0.5, 0.4, False)
    noisy = iptw.Balance(0.1, (arm(600.0, -40.0), arm(400.0, math.nan)), (), (), ())
    sizes = effective_sizes(noisy, None, 10.0, per_arm=True)
    assert (sizes.control, sizes.treated, sizes.conservative) == (0.1, 0.1, True)
    assert "as if its every weight were the cap" in sizes.words
    # Σw² too small for n patients (an effective size above the arm's size): kept at n / Σw.
    small = iptw.Balance(0.1, (arm(600.0, 100.0), arm(400.0, 1000.0)), (), (), ())
    assert effective_sizes(small, None, 10.0, per_arm=False).control == pytest.approx(300.0 / 600.0)
    assert effective_sizes(None, None, 10.0, per_arm=True).conservative
    # A weighted Cox run is refused before any task without its correction.
    with pytest.raises(ValueError, match="propensity coefficients and the arms' sums of weights together"):
        run_cox(None, {}, None, 1.0, run_id="x", propensity=np.zeros(3))  # type: ignore[arg-type]


def test_a_study_with_bad_rounds_or_noise_is_refused_before_its_first_task() -> None:
    """The Cox stage comes last: its rounds are checked before the propensity model spends anything."""
    package = PlanPackage.from_archive(plan_package(new_key(), IPTW_PLAN))
    for options, words in (
        ({"cox_rounds": 2}, "cox_rounds must be between 4 and 50, got 2"),
        ({"propensity_rounds": 1}, "propensity_rounds must be between 2 and 50, got 1"),
        ({"average_last": 9}, "average_last must be between 1 and cox_rounds (8), got 9"),
        ({"balance_noise_multiplier": 0.0}, "balance_noise_multiplier must be a positive number, got 0.0"),
    ):
        with pytest.raises(ValueError) as caught:
            run_iptw(None, {}, package, 1.0, run_id="x", **options)  # type: ignore[arg-type]
        assert words in str(caught.value)


def test_a_conservative_arm_weighs_in_the_overall_factor_with_its_own_sum() -> None:
    """The cohort's factor (a model with other covariates) treats the fallen-back arm as all at the
    cap with its own Σw, not as one patient: (600 + 400) / (10·600 + 1000), not about the other arm's."""
    noisy = iptw.Balance(0.1, (arm(600.0, -40.0), arm(400.0, 1000.0)), (), (), ())
    sizes = effective_sizes(noisy, None, 10.0, per_arm=False)
    assert sizes.conservative and sizes.overall == pytest.approx(1000.0 / 7000.0)
