"""Running a plan's Cox model across the federation: one ``dp_glm`` task per site per round.

A Cox model's baseline hazard is each site's own (:mod:`edge_sponsor.statistics.cox`), so
each site's task carries its own coefficients (its baseline log-hazards, then the shared
log hazard ratios): the strategy gives them through
:meth:`~edge_sponsor.coordinator.strategies.SiteParameters.parameters_for`. The sites'
noisy releases are pooled and one step taken per round; which sites stay in the run, and
what each was charged, is :class:`~edge_sponsor.coordinator.glm_tasks.ModelRounds`'s, as
for the logistic model. Every task is charged at its site, including the ones whose
release is withheld.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import COEFFICIENTS, PROPENSITY
from agent.packages.plan import ModelFamily
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import Federation
from edge_sponsor.coordinator.glm_tasks import (
    MAX_COEFFICIENT,
    MAX_ROUNDS,
    ModelRounds,
    model_of,
    stopped_early,
    unsettled,
)
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.plan_tasks import PlanPackage, PlanPackageError, run_rounds
from edge_sponsor.coordinator.strategies import SiteResult, StopRunError
from edge_sponsor.statistics import cox
from edge_sponsor.statistics.cox_analysis import CoxAnalysis, CoxRound
from edge_sponsor.statistics.releases import SiteRelease, read_block

DEFAULT_ROUNDS = 8
"""Rounds when none are asked for: a profile step, Newton steps, the last ones averaged
(bench/cox_accuracy.py: 12 rounds at the same ε were worse, more noise per round)."""
MIN_ROUNDS = 4
"""The fewest rounds a Cox run takes: the profile step, then Newton steps until the information
is averaged (CoxOptions.settle) and one more to average; fewer report an unconverged estimate
(one round leaves every log hazard ratio at its start, 0)."""
AVERAGE_LAST = 3
"""The rounds whose one-step estimates the fit averages when not told (bench/cox_accuracy.py)."""


def cox_design(package: PlanPackage, *, weighted: bool = False) -> cox.CoxDesign:
    """The design of ``package``'s Cox model, weighted by the plan's propensity weights when
    ``weighted``; PlanPackageError when the plan has none, or is (not) weighted otherwise."""
    model = model_of(package, ModelFamily.COX, weighted=weighted)
    weighting = package.plan.weighting
    try:
        return cox.CoxDesign.of_model(model, None if weighting is None else weighting.max_weight)
    except ValueError as exc:
        raise PlanPackageError(f"{package.manifest.name}: plan.model: {exc}") from None


class CoxSteps(ModelRounds):
    """The plan's Cox model by DP steps, as a strategy (:mod:`edge_sponsor.coordinator.strategies`):
    every site still in the run gets a ``dp_glm`` task at its own coefficients; the sites'
    noisy sums are pooled and one step taken (:func:`edge_sponsor.statistics.cox.cox_round`)."""

    def __init__(
        self,
        package: PlanPackage,
        noise_multiplier: float,
        options: cox.CoxOptions,
        on_round: Callable[[CoxRound, Sequence[str]], None] | None = None,
        *,
        sites: Sequence[str],
        propensity: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """``on_round``: called after each step with the round and the sites not in it;
        ``propensity``: a weighted plan's fitted propensity coefficients, sent with every task."""
        self.design = cox_design(package, weighted=propensity is not None)
        self.propensity = propensity
        super().__init__(package, noise_multiplier, sites=sites)
        self.options = options
        self.on_round = on_round
        self.steps: list[cox.CoxStep] = []
        self.history: list[CoxRound] = []
        self.current = cox.CoxParameters.cold(self.design, self.sites)

    def coefficients_in_range(self) -> bool:
        return all(
            bool(np.all(np.abs(self.current.site_vector(site)) <= MAX_COEFFICIENT)) for site in self.current.sites
        )

    def parameters_for(self, site: str, parameters: Parameters) -> Parameters:
        return self._parameters(self.current.site_vector(site))

    def _parameters(self, coefficients: npt.NDArray[np.float64]) -> Parameters:
        if self.propensity is None:
            return {COEFFICIENTS: coefficients}
        return {COEFFICIENTS: coefficients, PROPENSITY: self.propensity}

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        index = len(self.history)
        releases = self.usable(results, index)
        try:
            parts = [
                cox.site_sums_from_blocks(self.design, name, self._blocks(release), self.noise_multiplier)
                for name, release in releases.items()
            ]
            sums = cox.pool_round(self.design, parts)
            step = cox.cox_round(self.design, self.options, self.steps, sums, self.current)
        except ValueError as exc:
            raise StopRunError(str(exc)) from None
        self.steps.append(step)
        self.current = step.parameters
        self.history.append(CoxRound(index, sums.sites, sums.included, tuple(float(b) for b in step.parameters.beta)))
        if self.on_round is not None:
            self.on_round(self.history[-1], self.not_in_run())
        # The round's shared parameters are never sent as they are (parameters_for gives each site its own).
        return self._parameters(self.current.site_vector(self.current.sites[0]))

    def _blocks(self, release: SiteRelease) -> dict[str, np.ndarray]:
        return {block.name: read_block(release, self.layout, block.name).values[0] for block in self.layout.blocks}


def run_cox(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    noise_multiplier: float,
    *,
    rounds: int = DEFAULT_ROUNDS,
    run_id: str,
    options: cox.CoxOptions | None = None,
    confidence: float = 0.95,
    average_last: int | None = None,
    on_round: Callable[[CoxRound, Sequence[str]], None] | None = None,
    propensity: npt.NDArray[np.float64] | None = None,
    weights: cox.EffectiveSizes | None = None,
) -> CoxAnalysis:
    """Fits the plan's Cox model over the federation by ``rounds`` DP steps.

    Args:
        federation: the sites, their datasets and the purpose recorded in every audit log.
        clients: an open client per site name.
        package: the plan package (with a Cox model); every site must hold it approved.
        noise_multiplier: σ of every task (each costs the ε of one Gaussian mechanism at σ, q = 1).
        rounds: steps, MIN_ROUNDS to MAX_ROUNDS; every round is one charged task per site.
        run_id: recorded in every agent's audit log; each round is its ``round`` (from 1).
        options: how the steps and the fit use the releases (:class:`edge_sponsor.statistics.cox.CoxOptions`).
        confidence: the level of the intervals.
        average_last: the estimate is the mean of the last rounds' one-step estimates (1: the last step;
            None: AVERAGE_LAST, or all the rounds if fewer).
        on_round: called after each round's step with the round and the sites that have left.
        propensity: a weighted plan's propensity coefficients (the fit is then weighted); None
            for an unweighted plan.
        weights: a weighted fit's arms' sums of weights, which correct its sampling covariance
            (:class:`edge_sponsor.statistics.cox.EffectiveSizes`); given with ``propensity`` and
            only with it (ValueError before any task otherwise).

    Raises:
        PlanPackageError: the package offers no Cox model, or is weighted and no propensity is given.
        ValueError: σ not positive, rounds or average_last out of range.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be between {MIN_ROUNDS} and {MAX_ROUNDS}, got {rounds}")
    if (propensity is None) != (weights is None):
        # Before any task: a weighted fit without its correction would report a far too narrow SE.
        raise ValueError("a weighted Cox run takes the propensity coefficients and the arms' sums of weights together")
    if average_last is None:
        average_last = min(AVERAGE_LAST, rounds)
    if not 1 <= average_last <= rounds:
        raise ValueError(f"average_last must be between 1 and the rounds ({rounds}), got {average_last}")
    steps = CoxSteps(
        package,
        noise_multiplier,
        options or cox.CoxOptions(),
        on_round,
        sites=[site.name for site in federation.sites],
        propensity=propensity,
    )
    initial = steps.parameters_for(steps.current.sites[0], {})
    result, left_out = run_rounds(federation, clients, package, steps, rounds=rounds, run_id=run_id, initial=initial)
    fit = (
        cox.fit_cox(steps.design, steps.steps, min(average_last, len(steps.steps)), confidence, weights=weights)
        if steps.steps
        else None
    )
    return CoxAnalysis(
        fit=fit,
        rounds=tuple(steps.history),
        sites=tuple(steps.site_states(federation, clients, left_out, result)),
        noise_multiplier=noise_multiplier,
        rounds_planned=rounds,
        stopped_early=stopped_early(result) if result is not None else "no site could take part",
        not_converged=unsettled(steps.history),
    )
