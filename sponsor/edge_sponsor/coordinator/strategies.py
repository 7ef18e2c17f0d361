"""Federated algorithms as strategies: what each site is asked in a round, and how the
sites' results become the next parameters.

:class:`~edge_sponsor.coordinator.training.FederatedTraining` runs the rounds (sites
concurrently, quorum, stalls, retries of nothing, federated evaluation, the report) and
asks its strategy three things:

* :meth:`Strategy.configure`: the task (a kind and its DP hyperparameters) one site
  runs in a round, at the round's parameters, or None to leave the site out of it;
* :meth:`Strategy.release_problem`: why a site's result cannot be used, beyond the
  tensors every result is checked for (those its kind declares, shapes and finiteness;
  "" when it can);
* :meth:`Strategy.aggregate`: the next parameters from the results of the sites that
  returned (at least the quorum), or None to leave the model unchanged.

Either of the first and last may raise :class:`StopRunError` to end the run there (the
results so far are kept and reported); a round in which the strategy asks no site at
all ends it too. A strategy whose model has a part of its own at each site (a Cox
model's baseline hazard, stratified by site) also offers
:meth:`SiteParameters.parameters_for`: each site's task then takes its own parameters.

The agents enforce privacy whatever a strategy asks: they clip, add noise, charge
their ledgers and refuse tasks their policy does not allow. A strategy decides only
what the coordinator does with noisy results, so a new algorithm is a class here (or
in the caller's own code), not a fork of the round loop. :class:`FedSgd` and
:class:`FedAvg` are the two the federation file names; the study commands' logistic
regression (:class:`edge_sponsor.coordinator.glm_tasks.GlmSteps`) and one-task analyses
(:class:`edge_sponsor.coordinator.plan_tasks.PlanReleases`) are strategies too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import ParameterDecl
from agent.tasks.kinds.dp_evaluate import DpEvaluate
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.dp_local_training import DpLocalTraining
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.federation import Algorithm, TrainingPlan
from edge_sponsor.coordinator.optimizer import Parameters, ServerOptimizer
from edge_sponsor.coordinator.tasks import TaskRun


@dataclass(frozen=True)
class SiteResult:
    """One site's usable result in a round, with the public figures a strategy may weigh it by."""

    site: str
    run: TaskRun
    # The lower and upper edges of the site's privacy-unit bucket (ListDatasets/GetDataset;
    # upper 0 for the open top bucket): public, unlike the exact count, which would cost budget.
    units_lower: int
    units_upper: int


class StopRunError(Exception):
    """Raised by a strategy to end the run after the rounds so far; the message says why."""


@runtime_checkable
class SiteParameters(Protocol):
    """A strategy whose sites do not all take the round's parameters as they are."""

    def parameters_for(self, site: str, parameters: Parameters) -> Parameters:
        """The parameters ``site``'s task takes in a round whose parameters are ``parameters``."""
        ...


class Strategy(Protocol):
    """One federated algorithm (see the module docstring)."""

    def configure(self, round_number: int, site: str) -> TaskProfile | None:
        """The task ``site`` runs in round ``round_number`` (counted from 1), or None to leave it out."""
        ...

    def release_problem(self, result: SiteResult) -> str:
        """Why ``result`` cannot be used (a broken or hostile agent's), or ""."""
        ...

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        """The next parameters from ``results`` (by site); None leaves the model unchanged
        (the round then counts as one without an update)."""
        ...


class _ServerStep:
    """A server optimizer stepping along an update, undone when the step would not be finite."""

    def __init__(self, plan: TrainingPlan, parameters: tuple[ParameterDecl, ...]) -> None:
        self.optimizer = ServerOptimizer(plan.server_optimizer, plan.server_learning_rate, momentum=plan.momentum)
        self.parameters = parameters

    def step(self, parameters: Parameters, update: Mapping[str, npt.NDArray[np.float64]]) -> Parameters | None:
        state = self.optimizer.state()
        stepped = self.optimizer.step(parameters, update)
        if all(bool(np.all(np.isfinite(value))) for value in stepped.values()):
            return stepped
        self.optimizer.restore(state)
        return None

    def weighted(
        self, results: Mapping[str, SiteResult], scale: Mapping[str, float]
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Σ_sites scale[site] · the site's tensor, for every parameter."""
        update: dict[str, npt.NDArray[np.float64]] = {}
        for decl in self.parameters:
            total = np.zeros(decl.shape, np.float64)
            for name, result in results.items():
                total += scale[name] * np.asarray(result.run.tensors[decl.name], np.float64)
            update[decl.name] = total
        return update


class FedSgd:
    """DP-FedSGD: each site returns one noisy clipped gradient sum over a Poisson sample of
    its units; the server divides by the expected sample size (q times the units' public
    lower bound, summed over the sites that returned) and steps its optimizer."""

    def __init__(self, plan: TrainingPlan, parameters: tuple[ParameterDecl, ...]) -> None:
        self.plan = plan
        self.server = _ServerStep(plan, parameters)
        self.size = sum(int(np.prod(decl.shape)) for decl in parameters)

    def configure(self, round_number: int, site: str) -> TaskProfile:
        plan = self.plan
        return DpGradient(
            clip_norm=plan.clip_norm, noise_multiplier=plan.noise_multiplier, sampling_rate=plan.sampling_rate
        )

    def release_problem(self, result: SiteResult) -> str:
        if not result.units_upper:
            return ""
        # A sum of at most units_upper clipped gradients (one per unit) plus noise: anything far
        # beyond (6 standard deviations of the noise's norm) no honest agent sends.
        plan = self.plan
        bound = result.units_upper * plan.clip_norm + 6 * plan.noise_multiplier * plan.clip_norm * np.sqrt(self.size)
        norm = float(np.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in result.run.tensors.values())))
        if norm > bound:
            return f"the gradient sum's norm {norm:.4g} exceeds what {result.units_upper} clipped units can give"
        return ""

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        expected = self.plan.sampling_rate * sum(float(r.units_lower) for r in results.values())
        if expected <= 0:
            return None  # no site reports a unit: no public size to average by
        return self.server.step(parameters, self.server.weighted(results, dict.fromkeys(results, 1.0 / expected)))


class FedAvg:
    """DP-FedAvg: each site runs local DP-SGD steps and returns its noisy parameter delta; the
    server steps its optimizer along the negated mean delta, weighted by the sites' public
    unit bounds (SGD at learning rate 1 without momentum is plain FedAvg)."""

    def __init__(self, plan: TrainingPlan, parameters: tuple[ParameterDecl, ...]) -> None:
        self.plan = plan
        self.server = _ServerStep(plan, parameters)

    def configure(self, round_number: int, site: str) -> TaskProfile:
        plan = self.plan
        return DpLocalTraining(
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            sampling_rate=plan.sampling_rate,
            local_steps=plan.local_steps,
            learning_rate=plan.local_learning_rate,
        )

    def release_problem(self, result: SiteResult) -> str:
        return ""

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        total = sum(float(r.units_lower) for r in results.values())
        if total <= 0:
            return None
        scale = {name: -float(r.units_lower) / total for name, r in results.items()}
        return self.server.step(parameters, self.server.weighted(results, scale))


def evaluation_task(plan: TrainingPlan) -> DpEvaluate:
    """The federated evaluation a run of ``plan`` sends every site (whatever its strategy): its
    noisy count weighs each site's metrics; the count of patients who lost a row to a missing
    value when the federation file asks for it."""
    return DpEvaluate(
        noise_multiplier=plan.evaluation_noise_multiplier,
        sampling_rate=plan.evaluation_sampling_rate,
        release_noisy_count=True,
        release_dropped_units=plan.evaluation_release_dropped_units,
    )


def strategy_for(plan: TrainingPlan, parameters: tuple[ParameterDecl, ...]) -> Strategy:
    """The strategy the federation file's ``algorithm`` names."""
    if plan.algorithm is Algorithm.FEDSGD:
        return FedSgd(plan, parameters)
    return FedAvg(plan, parameters)
