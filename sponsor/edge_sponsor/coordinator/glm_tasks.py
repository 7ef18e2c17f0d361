"""Running a plan's regression model across the federation: DP Newton-Raphson, one ``dp_glm`` task per site per round.

The plan package is uploaded to every site once; then each of ``rounds`` rounds sends every
site still in the run a ``dp_glm`` task carrying the current coefficients (the one tensor
``coefficients``), checks each release against the plan's layout, adds the sites' noisy
score and information and takes one Newton step (:mod:`edge_sponsor.statistics.glm`).
Every task is charged at its site, including the ones whose release is withheld.

A site that refuses, fails or withholds its release (its noisy cohort below the minimum)
takes no further part: its sums would be missing from every later round anyway, and each
further task would spend its ε for nothing. The estimate is that of the sites in the last
round, which the result names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from agent.packages.manifest import COEFFICIENTS, TaskKind
from agent.packages.plan import MAX_MAGNITUDE, ModelFamily, ModelSpec
from agent.packages.release_layout import GLM_COUNT, GLM_INFORMATION, GLM_SCORE, ReleaseLayout
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.federation import Federation, Site
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.plan_tasks import (
    PlanPackage,
    PlanPackageError,
    plan_profile,
    release_problem,
    run_rounds,
)
from edge_sponsor.coordinator.strategies import SiteResult, StopRunError
from edge_sponsor.coordinator.training import TrainingResult
from edge_sponsor.statistics import glm
from edge_sponsor.statistics.releases import SiteRelease, read_block

# The spec's default: Newton from β = 0 reaches a logistic MLE to float precision in about
# 5 steps on a well-posed design (tests/sponsor_statistics: rossi in 6); each round costs ε.
DEFAULT_ROUNDS = 6
"""Newton-Raphson's rounds when none are asked for."""
BOUND_ROUNDS = 16
"""Lower-bound steps' rounds when none are asked for: slower to converge than Newton's, and
the mean of the last half (bench/glm_accuracy.py: fair, 6366 patients on 3 sites, ε = 3)."""
MAX_ROUNDS = 50
# The agent refuses coefficients beyond ±1e9 (agent.packages.plan.MAX_MAGNITUDE).
MAX_COEFFICIENT = MAX_MAGNITUDE


def glm_design(package: PlanPackage) -> glm.Design:
    """The design of ``package``'s logistic model; PlanPackageError when the plan has none."""
    model = model_of(package, ModelFamily.LOGISTIC)
    try:
        return glm.Design.of_model(model)
    except ValueError as exc:
        raise PlanPackageError(f"{package.manifest.name}: plan.model: {exc}") from None


def propensity_design(package: PlanPackage) -> glm.Design:
    """The design of ``package``'s propensity model (plan.weighting); PlanPackageError when the plan has none."""
    weighting = package.plan.weighting
    if weighting is None:
        raise PlanPackageError(
            f"{package.manifest.name} declares no weighting (plan.weighting): it offers no dp_propensity"
        )
    try:
        return glm.Design.of_model(weighting.propensity_model)
    except ValueError as exc:
        raise PlanPackageError(f"{package.manifest.name}: plan.weighting: {exc}") from None


# The study command that runs each family's model.
STUDY_COMMANDS = {ModelFamily.LOGISTIC: "study glm", ModelFamily.COX: "study cox"}


def model_of(package: PlanPackage, family: ModelFamily, *, weighted: bool = False) -> ModelSpec:
    """``package``'s model, which must be of ``family``; PlanPackageError (naming the command that
    runs it) when the plan has no model or one of another family, or when it is weighted (plan.weighting)
    and ``weighted`` is not asked (its tasks then take the propensity model's coefficients too)."""
    model = package.plan.model
    if model is None:
        raise PlanPackageError(f"{package.manifest.name} declares no model (plan.model): it offers no dp_glm")
    if (package.plan.weighting is not None) != weighted:
        if weighted:
            raise PlanPackageError(f"{package.manifest.name} declares no weighting (plan.weighting)")
        if model.family is ModelFamily.COX:
            raise PlanPackageError(
                f"{package.manifest.name} is a weighted plan (plan.weighting): its model is fitted with each "
                "patient's propensity weight; run it with study iptw"
            )
        raise PlanPackageError(
            f"{package.manifest.name} is a weighted plan (plan.weighting) with a logistic model: the agents fit it "
            "weighted (dp_glm with the propensity coefficients), but no study command does yet; study iptw fits a "
            "weighted Cox model: declare the model as family cox"
        )
    if model.family is not family:
        raise PlanPackageError(
            f"{package.manifest.name}'s model is a {model.family.value} model, not {family.value}: "
            f"run it with {STUDY_COMMANDS[model.family]}"
        )
    return model


def site_sums(release: SiteRelease, release_layout: ReleaseLayout, p: int) -> glm.SiteSums:
    """One site's sums read from its release (one that was not :func:`withheld`); ``excluded``
    is NaN where the site withheld that count alone (below its minimum cell size)."""
    count = read_block(release, release_layout, GLM_COUNT)
    score = read_block(release, release_layout, GLM_SCORE)
    information = read_block(release, release_layout, GLM_INFORMATION)
    return glm.SiteSums(
        site=release.site,
        included=float(count.values[0, 0]),
        excluded=float(count.values[0, 1]),
        score=score.values[0].copy(),
        information=glm.symmetric_from_triangle(information.values[0], p),
        score_noise_variance=score.noise_variance,
        information_noise_variance=information.noise_variance,
    )


def run_glm(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    noise_multiplier: float,
    *,
    rounds: int = DEFAULT_ROUNDS,
    run_id: str,
    confidence: float = 0.95,
    average_last: int = 1,
    method: glm.GlmMethod = glm.GlmMethod.NEWTON,
    on_round: Callable[[glm.GlmRound, Sequence[str]], None] | None = None,
    kind: TaskKind = TaskKind.DP_GLM,
) -> glm.GlmAnalysis:
    """Fits the plan's logistic model over the federation by ``rounds`` DP steps: Newton-Raphson,
    or lower-bound steps on the first round's information (``method``; :mod:`edge_sponsor.statistics.glm`).

    The rounds are :class:`GlmSteps` in the coordinator's round loop (:func:`run_rounds`), as any strategy.

    Args:
        federation: the sites, their datasets and the purpose recorded in every audit log.
        clients: an open client per site name.
        package: the plan package (with a model); every site must hold it approved.
        noise_multiplier: σ of every task (each costs the ε of one Gaussian mechanism at σ, q = 1).
        rounds: Newton steps, 1 to MAX_ROUNDS; every round is one charged task per site.
        run_id: recorded in every agent's audit log; each round is its ``round`` (from 1).
        confidence: the level of the intervals.
        average_last: Newton: the coefficients are the mean of the last rounds' one-step estimates
            (:func:`edge_sponsor.statistics.glm.fit_averaged`), 1 the last step; bound: the mean
            of the last iterates (:func:`edge_sponsor.statistics.glm.fit_iterates`).
        method: newton, or bound (the first round is at β = 0, its information the bound).
        on_round: called after each round's step with the round and the sites that have left.
        kind: dp_glm (the plan's logistic model) or dp_propensity (a weighted plan's propensity model).

    Returns:
        The fit on the last round's sums, the rounds and each site's charges; a run in which
        every site left before a round is complete stops there (``stopped_early``).

    Raises:
        PlanPackageError: the package offers no dp_glm.
        ValueError: σ not positive or rounds out of range.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be between 1 and {MAX_ROUNDS}, got {rounds}")
    if not 1 <= average_last <= rounds:
        raise ValueError(f"average_last must be between 1 and the rounds ({rounds}), got {average_last}")
    steps = GlmSteps(
        package, noise_multiplier, method, on_round, sites=[site.name for site in federation.sites], kind=kind
    )
    initial: Parameters = {COEFFICIENTS: np.zeros(steps.design.p, np.float64)}
    result, left_out = run_rounds(federation, clients, package, steps, rounds=rounds, run_id=run_id, initial=initial)
    fit: glm.GlmFit | None = None
    if steps.steps and method is glm.GlmMethod.BOUND:
        fit = glm.fit_iterates(steps.design, steps.steps, min(average_last, len(steps.steps)), confidence)
    elif steps.steps:
        fit = glm.fit_averaged(steps.design, steps.steps, min(average_last, len(steps.steps)), confidence)
    return glm.GlmAnalysis(
        fit=fit,
        rounds=tuple(steps.history),
        sites=tuple(steps.site_states(federation, clients, left_out, result)),
        noise_multiplier=noise_multiplier,
        rounds_planned=rounds,
        stopped_early=stopped_early(result) if result is not None else "no site could take part",
        # Lower-bound fits measure the error left since the sites last changed themselves (GlmFit.transient).
        not_converged=unsettled(steps.history) if method is glm.GlmMethod.NEWTON else "",
    )


def stopped_early(result: TrainingResult) -> str:
    """Why the run ended before its last round, or ""."""
    last = result.rounds[-1] if result.rounds else None
    if result.stopped_early and last is not None and all(task.status != "ok" for task in last.training):
        return f"round {last.round}: no site returned its sums"
    return result.stopped_early


def unsettled(history: Sequence[PooledRound]) -> str:
    """Why the estimate may be far from the pooled sites' optimum, or "": when the sites
    pooled changed in the last round, the estimate is one Newton step from the optimum of
    other sites (a step that starts far away lands far away under noise); two steps with
    the same sites bring it back."""
    if len(history) < 2 or history[-1].sites == history[-2].sites:
        return ""
    left = sorted(set(history[-2].sites) - set(history[-1].sites))
    return (
        f"the sites pooled changed in the last round ({', '.join(left) or 'a site'} left): the estimate is one "
        "step from the previous sites' optimum; run it again with the sites that remain"
    )


class PooledRound(Protocol):
    """A round of a dp_glm run: the sites whose sums it pooled."""

    @property
    def sites(self) -> tuple[str, ...]: ...


class ModelRounds:
    """What every ``dp_glm`` (or ``dp_propensity``) run does with its sites, whatever the model:
    every site still in the run gets a task each round (:meth:`configure`); one that refuses, fails or
    withholds its release (its noisy cohort below the minimum) is asked nothing more
    (:meth:`usable`): its sums would be missing from every later round anyway, and each
    further task would spend its ε for nothing. A model's strategy adds its ``aggregate``.
    """

    def __init__(
        self, package: PlanPackage, noise_multiplier: float, *, sites: Sequence[str], kind: TaskKind = TaskKind.DP_GLM
    ) -> None:
        """``sites``: the federation's (those never asked are reported as left out before round 1);
        ``kind``: dp_glm, or dp_propensity (a weighted plan's propensity model)."""
        self.sites = tuple(sites)
        self.layout = package.layout(kind)
        self.profile = plan_profile(kind, noise_multiplier)
        self.noise_multiplier = noise_multiplier
        # The sites asked nothing more, and those that withheld their release (with the round's words).
        self.left: list[str] = []
        self.withheld: dict[str, str] = {}
        # The round being configured, the sites asked in it, and every site asked so far.
        self._round = 0
        self._asked: list[str] = []
        self._ever: set[str] = set()

    def coefficients_in_range(self) -> bool:
        """Whether every coefficient the next round sends is within what the agents take."""
        raise NotImplementedError

    def configure(self, round_number: int, site: str) -> TaskProfile | None:
        if not self.coefficients_in_range():
            # The agents refuse such coefficients (and would charge nothing); a step this far
            # out means the noise has swamped the information.
            raise StopRunError(f"the coefficients left ±{MAX_COEFFICIENT:g}")
        if round_number != self._round:
            self._round, self._asked = round_number, []
        if site in self.left:
            return None
        self._asked.append(site)
        self._ever.add(site)
        return self.profile

    def release_problem(self, result: SiteResult) -> str:
        return release_problem(result.run.scalars, self.layout)

    def usable(self, results: Mapping[str, SiteResult], index: int) -> dict[str, SiteRelease]:
        """The releases of round ``index`` (from 0) whose sums were released, by site; the
        sites asked that gave none leave the run. StopRunError when none gave any."""
        releases: dict[str, SiteRelease] = {}
        for name, result in results.items():
            release = SiteRelease(name, dict(result.run.scalars), self.noise_multiplier)
            if withheld(release, self.layout):
                self.withheld[name] = (
                    f"round {index + 1}: the release was withheld (the site's noisy cohort is below its minimum)"
                )
            else:
                releases[name] = release
        self.left += [name for name in self._asked if name not in releases]
        if not releases:
            raise StopRunError("no site returned its sums")
        return releases

    def not_in_run(self) -> list[str]:
        """The sites not in the round just aggregated: those asked nothing more, and those never asked."""
        return [name for name in self.sites if name not in self._ever or name in self.left]

    def site_states(
        self,
        federation: Federation,
        clients: Mapping[str, AgentClient],
        left_out: Mapping[str, tuple[str, str]],
        result: TrainingResult | None,
    ) -> list[glm.GlmSite]:
        """Each site over the run: its charges (as its agent reported them per task) and why it left."""
        states = []
        for site in federation.sites:
            if site.name in left_out:
                status, detail = left_out[site.name]
                states.append(glm.GlmSite(site.name, status, detail, budget_epsilon_spent=_spent(clients, site) or 0.0))
                continue
            ledger = result.charged.get(site.name) if result is not None else None
            state = glm.GlmSite(site.name)
            if ledger is not None:
                state = replace(
                    state,
                    rounds_charged=ledger.tasks_charged,
                    epsilon_charged=ledger.epsilon,
                    budget_epsilon_spent=ledger.budget_epsilon,
                )
            failed = result.last_task(site.name) if result is not None else None
            if site.name in self.withheld:
                state = replace(state, status=glm.WITHHELD, detail=self.withheld[site.name])
            elif failed is not None and failed.status != "ok":
                # A task that failed after it read rows is charged by the agent: its budget says so.
                spent = _spent(clients, site)
                state = replace(
                    state,
                    status=failed.status,
                    detail=failed.detail,
                    budget_epsilon_spent=state.budget_epsilon_spent if spent is None else spent,
                )
            states.append(state)
        return states


def withheld(release: SiteRelease, release_layout: ReleaseLayout) -> bool:
    """Whether a site withheld its dp_glm sums (its noisy cohort below the minimum: NaN). The
    counts of the excluded (and clamped) patients may be withheld on their own, below the
    minimum cell size: counts like any other, and the sums are no less usable for them."""
    count = read_block(release, release_layout, GLM_COUNT)
    if not math.isfinite(count.values[0, 0]):
        return True
    return any(
        not read_block(release, release_layout, block.name).released(0)
        for block in release_layout.blocks
        if block.name != GLM_COUNT
    )


class GlmSteps(ModelRounds):
    """The plan's logistic model by DP Newton-Raphson or lower-bound steps, as a strategy
    (:mod:`edge_sponsor.coordinator.strategies`): every site still in the run gets a
    ``dp_glm`` task at the current coefficients; the sites' noisy score and information are
    added and one step taken (:mod:`edge_sponsor.statistics.glm`).
    """

    def __init__(
        self,
        package: PlanPackage,
        noise_multiplier: float,
        method: glm.GlmMethod,
        on_round: Callable[[glm.GlmRound, Sequence[str]], None] | None = None,
        *,
        sites: Sequence[str],
        kind: TaskKind = TaskKind.DP_GLM,
    ) -> None:
        """``on_round``: called after each step with the round and the sites that are not in it:
        those asked nothing more, and those of ``sites`` (the federation's) never asked (left out
        before the first round: down, unsuitable, listed twice). ``kind``: dp_glm fits the plan's
        logistic model, dp_propensity a weighted plan's propensity model."""
        self.design = propensity_design(package) if kind is TaskKind.DP_PROPENSITY else glm_design(package)
        super().__init__(package, noise_multiplier, sites=sites, kind=kind)
        self.method = method
        self.on_round = on_round
        self.steps: list[glm.NewtonStep] = []
        self.history: list[glm.GlmRound] = []
        self._coefficients = np.zeros(self.design.p, np.float64)
        self._bound: glm.Projected | None = None

    def coefficients_in_range(self) -> bool:
        return bool(np.all(np.abs(self._coefficients) <= MAX_COEFFICIENT))

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        index = len(self.history)
        sums = [site_sums(release, self.layout, self.design.p) for release in self.usable(results, index).values()]
        try:
            pooled = glm.pool_sums(sums)
            if self.method is glm.GlmMethod.BOUND:
                # The first round's sums (at β = 0) give the bound every step uses.
                self._bound = self._bound if self._bound is not None else glm.curvature_bound(pooled)
                step = glm.bound_step(self._coefficients, pooled, self._bound)
            else:
                step = glm.newton_step(self._coefficients, pooled)
        except ValueError as exc:
            raise StopRunError(str(exc)) from None
        self.steps.append(step)
        self._coefficients = step.coefficients
        self.history.append(
            glm.GlmRound(
                index,
                step.sums.sites,
                step.sums.included,
                tuple(float(b) for b in step.coefficients),
                step.information.floored,
            )
        )
        if self.on_round is not None:
            self.on_round(self.history[-1], self.not_in_run())
        return {COEFFICIENTS: step.coefficients.copy()}


def _spent(clients: Mapping[str, AgentClient], site: Site) -> float | None:
    """The site's budget group ε now (GetBudget); None if it cannot say."""
    try:
        return clients[site.name].get_budget(site.dataset).epsilon_spent
    except AgentRpcError:
        return None
