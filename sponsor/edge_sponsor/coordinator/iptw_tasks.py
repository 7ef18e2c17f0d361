"""A propensity-weighted comparison across the federation (``study iptw``): an external or
observational control arm weighted to resemble the treated patients, with the agents
enforcing the privacy budget at every step.

Four stages, each a set of charged tasks at every site, at one noise multiplier but for the
balance and the survival tasks, which may each have their own (one task each: a smaller σ
there buys a far more informative balance for a small share of the study's budget):

1. **The propensity model** (``dp_propensity``): the plan's weighting's logistic model of the
   treated arm, fitted over the sites by DP lower-bound or Newton steps
   (:func:`edge_sponsor.coordinator.glm_tasks.run_glm`). Its coefficients are then public
   (noisy) and are sent with every later task: each agent weighs its own patients.
2. **Balance** (``dp_describe`` with the weights): each covariate's standardised mean
   difference between the arms before and after weighting, and each arm's effective sample
   size (:func:`edge_sponsor.statistics.iptw.balance`).
3. **Weighted survival** (``dp_survival`` with the weights; a plan with survival): each arm's
   Kaplan-Meier curve, unweighted and weighted (:func:`edge_sponsor.statistics.iptw.weighted_survival`).
4. **The weighted Cox model** (``dp_glm`` with the weights; a plan whose model is Cox): the
   hazard ratio of the treatment, its sampling variance the model-based one at weights
   rescaled to each arm's effective sample size (:class:`edge_sponsor.statistics.cox.EffectiveSizes`,
   from the survival or balance stage's sums of weights: :func:`effective_sizes`).

A site that fails a stage is left out of it (and named); the study goes on with the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from agent.packages.manifest import PROPENSITY, TaskKind
from agent.packages.plan import ModelFamily, category_label
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.cox_tasks import DEFAULT_ROUNDS as COX_ROUNDS
from edge_sponsor.coordinator.cox_tasks import MIN_ROUNDS as COX_MIN_ROUNDS
from edge_sponsor.coordinator.cox_tasks import run_cox
from edge_sponsor.coordinator.federation import Federation
from edge_sponsor.coordinator.glm_tasks import MAX_ROUNDS, run_glm
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.plan_tasks import PlanPackage, PlanPackageError, SiteOutcome, run_plan
from edge_sponsor.statistics import cox, glm, iptw
from edge_sponsor.statistics.cox_analysis import CoxRound
from edge_sponsor.statistics.iptw_analysis import IptwAnalysis, StageSite
from edge_sponsor.statistics.releases import SiteRelease

PROPENSITY_ROUNDS = 10
"""The propensity model's rounds when none are asked for (lower-bound steps, the last half averaged)."""


def check_weighted(package: PlanPackage) -> None:
    """PlanPackageError unless ``package``'s plan is weighted and its model, when it has one, Cox."""
    if package.plan.weighting is None:
        raise PlanPackageError(
            f"{package.manifest.name} declares no weighting (plan.weighting): study iptw needs a treatment, the "
            "propensity model's covariates and a cap on the weights"
        )
    model = package.plan.model
    if model is not None and model.family is not ModelFamily.COX:
        raise PlanPackageError(
            f"{package.manifest.name}'s model is {model.family.value}: study iptw fits a weighted Cox model (the "
            "treatment's hazard ratio); declare plan.model with family cox, or no model for the balance and curves only"
        )


def run_iptw(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    noise_multiplier: float,
    *,
    run_id: str,
    propensity_rounds: int = PROPENSITY_ROUNDS,
    propensity_method: glm.GlmMethod = glm.GlmMethod.BOUND,
    cox_rounds: int = COX_ROUNDS,
    options: cox.CoxOptions | None = None,
    confidence: float = 0.95,
    average_last: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_round: Callable[[glm.GlmRound | CoxRound, Sequence[str]], None] | None = None,
    balance_noise_multiplier: float | None = None,
    survival_noise_multiplier: float | None = None,
) -> IptwAnalysis:
    """Runs the four stages (see the module doc) of ``package``'s weighted plan.

    Args:
        propensity_rounds: the propensity model's steps (each one task per site).
        propensity_method: its steps' method (:class:`edge_sponsor.statistics.glm.GlmMethod`).
        cox_rounds: the weighted Cox model's steps (a plan whose model is Cox).
        options: the Cox fit's (:class:`edge_sponsor.statistics.cox.CoxOptions`).
        average_last: the Cox fit averages the last rounds' estimates (None: its default).
        on_stage: called with each stage's name as it starts.
        on_round: called after each round of the propensity model and of the Cox model.
        balance_noise_multiplier, survival_noise_multiplier: σ of the weighted description and
            of the weighted survival task (None: ``noise_multiplier``).

    Raises:
        PlanPackageError: the plan is not weighted, or its model is not Cox.
        ValueError: a σ not positive, or rounds out of range (before any task).
    """
    check_weighted(package)
    weighting = package.plan.weighting
    if weighting is None:  # check_weighted refused it; for the type checker
        raise PlanPackageError(f"{package.manifest.name} declares no weighting")
    balance_sigma = noise_multiplier if balance_noise_multiplier is None else balance_noise_multiplier
    survival_sigma = noise_multiplier if survival_noise_multiplier is None else survival_noise_multiplier
    for name, sigma in (
        ("noise_multiplier", noise_multiplier),
        ("balance_noise_multiplier", balance_sigma),
        ("survival_noise_multiplier", survival_sigma),
    ):
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{name} must be a positive number, got {sigma!r}")
    # Refused here, before the first stage spends anything, not when the last stage starts.
    if not 2 <= propensity_rounds <= MAX_ROUNDS:
        raise ValueError(f"propensity_rounds must be between 2 and {MAX_ROUNDS}, got {propensity_rounds}")
    if package.plan.model is not None and not COX_MIN_ROUNDS <= cox_rounds <= MAX_ROUNDS:
        raise ValueError(f"cox_rounds must be between {COX_MIN_ROUNDS} and {MAX_ROUNDS}, got {cox_rounds}")
    if average_last is not None and not 1 <= average_last <= cox_rounds:
        raise ValueError(f"average_last must be between 1 and cox_rounds ({cox_rounds}), got {average_last}")

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    arms = tuple(category_label(c) for c in weighting.treatment.categories)
    stage("propensity model (dp_propensity)")
    averaged = max(1, propensity_rounds // 2) if propensity_method is glm.GlmMethod.BOUND else 1
    propensity = run_glm(
        federation,
        clients,
        package,
        noise_multiplier,
        rounds=propensity_rounds,
        run_id=f"{run_id}-propensity",
        confidence=confidence,
        average_last=averaged,
        method=propensity_method,
        on_round=on_round,
        kind=TaskKind.DP_PROPENSITY,
    )
    record = IptwAnalysis(
        treatment=weighting.treatment.column,
        arms=(arms[0], arms[1]),
        estimand=weighting.estimand.value,
        max_weight=weighting.max_weight,
        noise_multiplier=noise_multiplier,
        balance_noise_multiplier=balance_sigma,
        survival_noise_multiplier=survival_sigma,
        propensity=propensity,
        propensity_coefficients=(),
    )
    if propensity.fit is None:
        return replace(record, stopped=f"the propensity model was not fitted: {propensity.stopped_early}")
    gamma = np.array([c.estimate for c in propensity.fit.design.coefficients], dtype=np.float64)
    record = replace(record, propensity_coefficients=tuple(float(g) for g in gamma))
    sent: Parameters = {PROPENSITY: gamma}

    def one_task(kind: TaskKind, sigma: float, name: str) -> tuple[list[SiteRelease], tuple[StageSite, ...]]:
        """A weighted one-task stage at every site: the releases, and each site's outcome."""
        outcomes = run_plan(federation, clients, package, kind, sigma, run_id=f"{run_id}-{name}", parameters=sent)
        return [o.release for o in outcomes if o.release is not None], _stage_sites(outcomes)

    stage("balance (dp_describe, weighted)")
    releases, sites = one_task(TaskKind.DP_DESCRIBE, balance_sigma, "balance")
    record = replace(record, balance_sites=sites)
    if not releases:
        return replace(record, stopped="no site returned its weighted description")
    record = replace(record, balance=iptw.balance(package.plan, releases))

    if package.plan.survival is not None:
        stage("weighted survival (dp_survival, weighted)")
        releases, sites = one_task(TaskKind.DP_SURVIVAL, survival_sigma, "survival")
        record = replace(record, survival_sites=sites)
        if releases:
            record = replace(record, survival=iptw.weighted_survival(package.plan, releases, confidence=confidence))

    model = package.plan.model
    if model is not None:
        stage("weighted Cox model (dp_glm, weighted)")
        analysis = run_cox(
            federation,
            clients,
            package,
            noise_multiplier,
            rounds=cox_rounds,
            run_id=f"{run_id}-cox",
            options=options,
            confidence=confidence,
            average_last=average_last,
            on_round=on_round,
            propensity=gamma,
            weights=effective_sizes(
                record.balance,
                record.survival,
                weighting.max_weight,
                per_arm=[variable.column for variable in model.covariates] == [record.treatment],
            ),
        )
        record = replace(record, cox=analysis)
    return record


def effective_sizes(
    balance: iptw.Balance | None, survival: iptw.WeightedSurvival | None, max_weight: float, *, per_arm: bool
) -> cox.EffectiveSizes:
    """Each arm's Σ w and Σ w², which correct the weighted Cox fit's sampling covariance.

    From the weighted survival release when it has them (three blocks share its budget, so its
    Σ w² is far less noisy than the description's, which shares it with every variable's
    blocks), else from the description; each kept within what weights up to the cap could give
    (:func:`edge_sponsor.statistics.iptw.effective_scale`). An arm with neither usable (withheld,
    or a noisy sum not positive) gets the factor ``1 / max_weight``, as if every weight were the
    cap: the widest its interval could need to be (``EffectiveSizes.conservative``)."""
    sums: list[float] = []
    conservative = False
    for index in range(2):
        total, scale = math.nan, math.nan
        if survival is not None:
            total, scale = survival.arms[index].weight_sum, survival.arms[index].scale
        if not (total > 0.0 and math.isfinite(scale)) and balance is not None:
            arm = balance.arms[index]
            total = arm.weight_sum
            scale = iptw.effective_scale(arm.weight_sum, arm.weight_sumsq, arm.with_weight, max_weight)
        if not (total > 0.0 and math.isfinite(scale)):
            # Σ w² = W Σ w: every weight at the cap. The arm keeps its own Σ w where one was
            # released (else its patients, else 1), so that it weighs in the cohort's overall
            # factor as much as it should, not as one patient.
            scale, conservative = 1.0 / max_weight, True
            total = next((t for t in _arm_totals(balance, survival, index) if t > 0.0), 1.0)
        sums += [total, total / scale]
    return cox.EffectiveSizes(sums[0], sums[1], sums[2], sums[3], per_arm=per_arm, conservative=conservative)


def _arm_totals(balance: iptw.Balance | None, survival: iptw.WeightedSurvival | None, index: int) -> list[float]:
    """An arm's Σ w as either release gave it, then its noisy patient counts (NaN where absent)."""
    totals = []
    if survival is not None:
        totals.append(survival.arms[index].weight_sum)
    if balance is not None:
        totals += [balance.arms[index].weight_sum, balance.arms[index].with_weight, balance.arms[index].count]
    return [t for t in totals if math.isfinite(t)]


def _stage_sites(outcomes: Sequence[SiteOutcome]) -> tuple[StageSite, ...]:
    return tuple(StageSite(o.site, o.status, o.detail, o.epsilon_charged, o.budget_epsilon_spent) for o in outcomes)
