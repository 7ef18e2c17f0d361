"""Privacy planning: what a run will cost at each site, asked of the agents before it starts.

A federated run is a known list of tasks: ``rounds`` training tasks (dp_gradient or
dp_local_training with the federation file's settings) and a dp_evaluate task after every
``evaluate_every`` rounds and after the last. Each agent composes them with what its budget
group has spent and reserved, with its own accountant (GetBudget with planned tasks), and
says where the group's ε would end; a run that would take a site over its limit is refused
before anything is spent. :func:`noise_for_epsilon` solves the other way: the smallest
training noise multiplier at which the run alone costs at most a target ε.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.privacy.accounting import PldAccountant
from agent.privacy.mechanism import Mechanism
from agent.tasks.kinds.hyperparameters import MIN_NOISE_MULTIPLIER
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.federation import Federation, TrainingPlan
from edge_sponsor.coordinator.strategies import evaluation_task, strategy_for


class PlanningError(Exception):
    """The run cannot be planned as asked (a target ε no noise multiplier meets)."""


@dataclass(frozen=True)
class PlannedTask:
    """``count`` tasks with one kind and one set of hyperparameters."""

    profile: TaskProfile
    count: int

    def to_wire(self) -> pb.PlannedTasks:
        return pb.PlannedTasks(
            kind=self.profile.wire,  # type: ignore[arg-type]
            hyperparameters=self.profile.to_wire(),
            count=self.count,
        )


@dataclass(frozen=True)
class SiteProjection:
    """One site's budget now and after the run, as its agent accounts it; ``problem`` when it could not say."""

    site: str
    epsilon_spent: float = math.nan
    epsilon_reserved: float = math.nan
    epsilon_projected: float = math.nan
    epsilon_limit: float = math.nan
    delta: float = math.nan
    problem: str = ""
    # The agent answered and refused the planned tasks (out of its policy's bounds, not
    # accountable): the run would be refused there too. Otherwise a problem is one of reach.
    refused: bool = False

    @property
    def fits(self) -> bool:
        """Whether the run's tasks all fit in the site's budget (as the budget stands now)."""
        return not self.problem and self.epsilon_projected <= self.epsilon_limit


def training_tasks(plan: TrainingPlan) -> list[PlannedTask]:
    """The tasks a run of ``plan`` sends each site: its training rounds and its evaluations.

    Raises PlanningError for a noise multiplier no agent accepts (below MIN_NOISE_MULTIPLIER).
    """
    for name, sigma in (
        ("noise_multiplier", plan.noise_multiplier),
        ("evaluation_noise_multiplier", plan.evaluation_noise_multiplier),
    ):
        if not (math.isfinite(sigma) and sigma >= MIN_NOISE_MULTIPLIER):
            raise PlanningError(f"[training] {name} = {sigma:g}: agents refuse tasks below {MIN_NOISE_MULTIPLIER:g}")
    # The task the federation file's strategy sends every site in every round.
    training = strategy_for(plan, ()).configure(1, "")
    if training is None:
        raise PlanningError("the federation file's strategy asks no site")  # unreachable: FedSGD, FedAvg ask all
    tasks = [PlannedTask(training, plan.rounds)]
    evaluations = evaluation_rounds(plan)
    if evaluations:
        tasks.append(PlannedTask(evaluation_task(plan), evaluations))
    return tasks


def evaluation_rounds(plan: TrainingPlan) -> int:
    """How many rounds end with a federated evaluation: every ``evaluate_every``-th, and the last."""
    if plan.evaluate_every == 0:
        return 0
    every = {r for r in range(plan.evaluate_every, plan.rounds + 1, plan.evaluate_every)}
    return len(every | {plan.rounds})


def project(
    federation: Federation, clients: Mapping[str, AgentClient], tasks: Sequence[PlannedTask]
) -> list[SiteProjection]:
    """Asks every site, at once, where its budget would stand after ``tasks``; in federation order.

    A site that cannot answer (unreachable, refusing, an agent too old to project) is
    reported with the agent's words, not raised.
    """
    planned = [task.to_wire() for task in tasks]

    def one(name: str, dataset: str) -> SiteProjection:
        try:
            clients[name].wait_until_ready(federation.connect_seconds)
            budget = clients[name].get_budget(dataset, planned=planned)
        except AgentRpcError as exc:
            refused = exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
            return SiteProjection(name, problem=f"{exc.code.name}: {exc.details}", refused=refused)
        if not budget.HasField("epsilon_projected"):
            return SiteProjection(name, problem="the agent does not project planned tasks (an older version)")
        return SiteProjection(
            name,
            budget.epsilon_spent,
            budget.epsilon_reserved,
            budget.epsilon_projected,
            budget.epsilon_limit,
            budget.delta,
        )

    with ThreadPoolExecutor(max_workers=max(1, len(federation.sites))) as pool:
        return list(pool.map(lambda site: one(site.name, site.dataset), federation.sites))


def run_epsilon(tasks: Sequence[PlannedTask], delta: float, accountant: PldAccountant) -> float:
    """ε of ``tasks`` alone (a fresh budget), composed as the agents compose them."""
    mechanisms = []
    for task in tasks:
        one = task.profile.mechanism()
        mechanisms.append(Mechanism(one.sampling_rate, one.noise_multiplier, one.steps * task.count))
    return accountant.epsilon(mechanisms, delta)


def noise_for_epsilon(plan: TrainingPlan, target: float, delta: float, accountant: PldAccountant) -> float:
    """The smallest training noise multiplier on the agents' accounting grid (3 significant digits)
    at which the run of ``plan`` alone costs at most ``target`` at ``delta``; evaluation as the plan says.

    Raises PlanningError when even a noise multiplier of 1000 does not bring the run within
    ``target`` (the evaluations alone may cost more).
    """
    if not (math.isfinite(target) and target > 0):
        raise PlanningError(f"the target ε must be a positive number, got {target!r}")

    def cost(sigma: float) -> float:
        return run_epsilon(training_tasks(replace(plan, noise_multiplier=sigma)), delta, accountant)

    low, high = 0.1, 1000.0
    if cost(high) > target:
        raise PlanningError(
            f"no noise multiplier up to {high:g} brings the run within ε = {target:g} at δ = {delta:g}: "
            "fewer rounds, a smaller sampling rate or fewer evaluations would"
        )
    if cost(low) <= target:
        return low
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if cost(middle) <= target else (middle, high)
    # On the accounting grid (3 significant digits), which is what the agents account: the
    # grid value at or above ``high``, then down while the next smaller grid value still fits.
    step = 10.0 ** (math.floor(math.log10(high)) - 2)
    sigma = math.ceil(round(high / step, 9)) * step
    while sigma - step >= 0.1 and cost(round(sigma - step, 12)) <= target:
        sigma = round(sigma - step, 12)
    return sigma
