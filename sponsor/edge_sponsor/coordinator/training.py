"""Federated training across agents: the rounds of a strategy (DP-FedSGD, DP-FedAvg or the
caller's own, :mod:`edge_sponsor.coordinator.strategies`), with federated evaluation.

Each round every site the strategy asks gets one task at the same parameters,
concurrently. A task on which nothing moves for ``task_stall_seconds`` (or that
exceeds the optional overall ``task_deadline_seconds``) is cancelled; a site that
is down, stalled or refuses is left out of that round (and reported); the model
moves only when at least ``quorum`` sites returned.

Parameters are hashed once per set of values, and an agent keeps the last
parameters of the run: the evaluation of a model and the next round's
training share them, so the evaluation starts once a site's training has
taken the parameters, and is then not sent them again. Privacy is the agents' business: they clip, add noise and charge
their ledgers; the coordinator only averages what it is given.

Averaging uses public denominators only: ``q`` times the lower edge of each
site's row-count bucket (what ListDatasets shows), not a noisy count, which
would cost budget. It can be off by up to the bucket width (1-2-5 steps), which
a server-side Adam absorbs; with SGD it acts as a larger learning rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import DROPPED_UNITS, DROPPED_UNITS_CAPABILITY, NOISY_COUNT
from agent.tasks.kinds.profile import TaskProfile
from agent.tasks.tensors import TensorDecl
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, Units, dropped_units
from edge_sponsor.coordinator.federation import Federation, Site, TrainingPlan
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.report import RoundRecord, SiteSummary, SiteTask
from edge_sponsor.coordinator.score_evaluation import ScoreHistogram
from edge_sponsor.coordinator.strategies import (
    SiteParameters,
    SiteResult,
    StopRunError,
    Strategy,
    evaluation_task,
    strategy_for,
)
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.tasks import ParameterSet, TaskRun

# A package upload without task_deadline_seconds: uploads are one call, not a stream that reports progress.
PACKAGE_UPLOAD_SECONDS = 600.0


class FederationError(Exception):
    """The run cannot go on: too few sites are usable, or too many rounds failed."""


class RunObserver(Protocol):
    """Where progress goes: a progress bar on a terminal, log lines elsewhere."""

    def note(self, message: str) -> None: ...

    def task_finished(self, round_number: int, task: SiteTask) -> None: ...

    def round_finished(self, record: RoundRecord) -> None: ...


@dataclass(frozen=True)
class ReadySite:
    site: Site
    agent_id: str
    # Lower edge of the dataset's unit-count bucket (patients where a privacy unit is declared, else
    # rows): the public size used for weights, as the agent normalises and samples by unit.
    units_lower: int
    # Its upper edge (0 for the open top bucket): bounds what an honest gradient sum can be, one
    # clipped sum per unit.
    units_upper: int
    # The budget group's ε before the run (GetBudget).
    epsilon_before: float


@dataclass
class SiteLedger:
    """What the run did at one site."""

    rounds_contributed: int = 0
    # Tasks (training and evaluation) the agent answered with a result, and so charged (usable
    # here or not).
    tasks_charged: int = 0
    # Sum of the tasks' shares of the budget group's ε, as the agent reported them.
    epsilon: float = 0.0
    # The budget group's ε after the site's latest task, as the agent reported it.
    budget_epsilon: float = 0.0


@dataclass
class TrainingResult:
    parameters: Parameters
    rounds: list[RoundRecord]
    charged: dict[str, SiteLedger]
    # Why the run stopped early, or "" when it ran every round.
    stopped_early: str = ""
    ready: list[ReadySite] = field(default_factory=list)

    def last_task(self, site: str) -> SiteTask | None:
        """``site``'s training task in the last round that asked it; None if no round did."""
        for record in reversed(self.rounds):
            for task in record.training:
                if task.site == site:
                    return task
        return None


def _failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, AgentRpcError):
        return exc.code.name, exc.details
    return type(exc).__name__, str(exc)


class FederatedTraining:
    def __init__(
        self,
        federation: Federation,
        clients: Mapping[str, AgentClient],
        package: StudyPackage,
        observer: RunObserver,
        *,
        run_id: str,
        strategy: Strategy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``strategy``: the algorithm; by default the one the federation file names, afresh
        for each :meth:`train` (a server optimizer's moments belong to one run)."""
        self.federation = federation
        self.plan: TrainingPlan = federation.training
        self._given_strategy = strategy
        self.strategy: Strategy = strategy or strategy_for(federation.training, package.manifest.parameters)
        self.clients = clients
        self.package = package
        self.observer = observer
        self.run_id = run_id
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(2, 2 * len(federation.sites)), thread_name_prefix="site")
        self._closed = threading.Event()
        self.result: TrainingResult | None = None
        # Each site :meth:`prepare` left out: its status (a gRPC code name, ``unsuitable`` or
        # ``duplicate``) and why.
        self.left_out: dict[str, tuple[str, str]] = {}

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- preparation -----------------------------------------------------------------

    def prepare(self) -> tuple[list[ReadySite], list[SiteSummary]]:
        """Checks every agent (identity, dataset columns) and uploads the package to it.

        Returns the sites ready to train and a summary for each one that is not.
        Raises FederationError when fewer than ``quorum`` are ready.
        """
        futures = {site.name: self._pool.submit(self._prepare_site, site) for site in self.federation.sites}
        ready: list[ReadySite] = []
        left_out: list[SiteSummary] = []
        for site in self.federation.sites:
            try:
                ready.append(futures[site.name].result())
            except (AgentRpcError, SiteUnsuitableError) as exc:
                status, detail = _failure(exc) if isinstance(exc, AgentRpcError) else ("unsuitable", str(exc))
                self.observer.note(f"{site.name} ({site.address}) is left out: {status}: {detail}")
                self.left_out[site.name] = (status, detail)
                left_out.append(SiteSummary(site.name, site.address, site.dataset, status=f"{status}: {detail}"))
        seen: dict[tuple[str, str], str] = {}
        for candidate in list(ready):
            other = seen.setdefault((candidate.agent_id, candidate.site.dataset), candidate.site.name)
            if other != candidate.site.name:
                # Two entries for one dataset of one agent (two addresses of it, or two agents
                # configured with one id) would count its patients twice.
                ready.remove(candidate)
                where = candidate.site
                detail = f"agent {candidate.agent_id}'s dataset {where.dataset!r} is also listed as {other}"
                self.observer.note(f"{where.name} ({where.address}) is left out: {detail}")
                self.left_out[where.name] = ("duplicate", detail)
                left_out.append(SiteSummary(where.name, where.address, where.dataset, status=f"duplicate: {detail}"))
        if len(ready) < self.plan.quorum:
            raise FederationError(
                f"only {len(ready)} of {len(self.federation.sites)} agents are usable; the quorum is {self.plan.quorum}"
            )
        return ready, left_out

    def _prepare_site(self, site: Site) -> ReadySite:
        client = self.clients[site.name]
        client.wait_until_ready(self.federation.connect_seconds)
        info = client.get_info()
        if self.plan.evaluation_release_dropped_units and DROPPED_UNITS_CAPABILITY not in info.capabilities:
            # Its evaluations would be charged and their results refused here: ask it nothing.
            raise SiteUnsuitableError(
                f"agent {info.agent_id} does not release {DROPPED_UNITS} (no {DROPPED_UNITS_CAPABILITY!r} capability): "
                "upgrade it, or set [training] evaluation_release_dropped_units = false"
            )
        dataset = client.get_dataset(site.dataset)
        columns = {column.name for column in dataset.columns}
        absent = [c for c in self.package.manifest.columns if c not in columns]
        if absent:
            raise SiteUnsuitableError(f"dataset {site.dataset!r} does not offer column(s) {', '.join(absent)}")
        # An upload can be large and the link slow: it gets a task's deadline, not a short call's.
        uploaded = client.upload_package(
            self.package.archive, timeout=self.plan.task_deadline_seconds or PACKAGE_UPLOAD_SECONDS
        )
        if uploaded.digest != self.package.digest:
            raise SiteUnsuitableError(f"the agent stored digest {uploaded.digest}, expected {self.package.digest}")
        budget = client.get_budget(site.dataset)
        units = Units.of_dataset(dataset)
        return ReadySite(
            site,
            info.agent_id,
            max(1, units.lower or 0),
            units.upper or 0,
            budget.epsilon_spent,
        )

    # -- rounds ----------------------------------------------------------------------

    def train(self, ready: Sequence[ReadySite], parameters: Parameters) -> TrainingResult:
        plan = self.plan
        if self._given_strategy is None:
            self.strategy = strategy_for(plan, self.package.manifest.parameters)
        result = TrainingResult(
            parameters=dict(parameters),
            rounds=[],
            charged={r.site.name: SiteLedger() for r in ready},
            ready=list(ready),
        )
        # Kept here so that a run cut short (Ctrl-C, a bug) can still be reported.
        self.result = result
        failed_in_a_row = 0
        by_name = {r.site.name: r for r in ready}
        outgoing = _Outgoing(self.package, result.parameters, self.strategy)
        # The round record whose model (the current parameters) is still to be evaluated.
        evaluate: int | None = None
        pending: _PendingEvaluation | None = None
        for round_number in range(1, plan.rounds + 1):
            started = self._clock()
            asked, why_not = self._configure(round_number, ready)
            if why_not:
                result.stopped_early = why_not
                break
            taken = {name: threading.Event() for name in asked}
            training = {
                name: self._submit(by_name[name].site, task, round_number, outgoing.of(task, name), taken=taken[name])
                for name, task in asked.items()
            }
            if evaluate is not None:
                # The evaluated model is this round's starting point: each site's evaluation waits
                # until its training has taken the parameters, so that the agent holds them.
                pending = self._evaluation(evaluate, result, ready, outgoing, after=taken)
                evaluate = None
            tasks, outcomes = self._collect(
                round_number, "train", training, asked=asked, charged=result.charged, ready=by_name
            )
            if pending is not None:
                self._attach_evaluation(result, pending)
                pending = None
            stepped, stop = self._aggregate(round_number, result, outcomes, asked, by_name)
            updated = stepped is not None
            if stepped is not None:
                result.parameters = stepped
                outgoing = _Outgoing(self.package, stepped, self.strategy)
                for name in outcomes:
                    result.charged[name].rounds_contributed += 1
                failed_in_a_row = 0
            else:
                failed_in_a_row += 1
            result.rounds.append(RoundRecord(round_number, self._clock() - started, updated, tasks))
            if stop or failed_in_a_row >= plan.max_failed_rounds:
                result.stopped_early = stop or (
                    f"{failed_in_a_row} round(s) in a row without an update (too few sites returned, "
                    "or the update was not finite)"
                )
                self.observer.round_finished(result.rounds[-1])
                break
            # ε is not spent on evaluating a model that did not move (except the final one).
            if self._evaluates_after(round_number) and (updated or round_number == plan.rounds):
                evaluate = len(result.rounds) - 1
            else:
                self.observer.round_finished(result.rounds[-1])
        if evaluate is not None:
            self._attach_evaluation(result, self._evaluation(evaluate, result, ready, outgoing, after=None))
        return result

    def _configure(self, round_number: int, ready: Sequence[ReadySite]) -> tuple[dict[str, TaskProfile], str]:
        """The task of each site the strategy asks in this round, or why the run ends here."""
        try:
            asked = {
                r.site.name: task
                for r in ready
                if (task := self.strategy.configure(round_number, r.site.name)) is not None
            }
        except StopRunError as stop:
            return {}, f"round {round_number}: {stop}"
        return asked, "" if asked else f"round {round_number}: the strategy asked no site"

    def _aggregate(
        self,
        round_number: int,
        result: TrainingResult,
        outcomes: Mapping[str, TaskRun],
        asked: Mapping[str, TaskProfile],
        by_name: Mapping[str, ReadySite],
    ) -> tuple[Parameters | None, str]:
        """The strategy's next parameters from the round's usable results (None when there are
        too few or it made none), and why the run ends here ("" if it goes on)."""
        if len(outcomes) < self.plan.quorum:
            self.observer.note(
                f"round {round_number}: only {len(outcomes)} of {len(asked)} sites returned, quorum is "
                f"{self.plan.quorum}; the model is unchanged"
            )
            return None, ""
        results = {name: _site_result(run, by_name[name]) for name, run in outcomes.items()}
        try:
            stepped = self.strategy.aggregate(result.parameters, results)
        except StopRunError as stop:
            return None, f"round {round_number}: {stop}"
        if stepped is None:
            self.observer.note(
                f"round {round_number}: no usable update (not finite, or the strategy made none); "
                "the model is unchanged"
            )
        return stepped, ""

    def _evaluation(
        self,
        index: int,
        result: TrainingResult,
        ready: Sequence[ReadySite],
        outgoing: _Outgoing,
        *,
        after: Mapping[str, threading.Event] | None,
    ) -> _PendingEvaluation:
        round_number = result.rounds[index].round
        task = evaluation_task(self.plan)
        # Only the sites that trained this round have taken the parameters; the others evaluate at once.
        waits = after or {}
        return _PendingEvaluation(
            index,
            task,
            {
                r.site.name: self._submit(
                    r.site, task, round_number, outgoing.of(task, r.site.name), after=waits.get(r.site.name)
                )
                for r in ready
            },
        )

    def _evaluates_after(self, round_number: int) -> bool:
        every = self.plan.evaluate_every
        if every == 0:
            return False
        return round_number % every == 0 or round_number == self.plan.rounds

    def _attach_evaluation(self, result: TrainingResult, pending: _PendingEvaluation) -> None:
        """Adds the federated evaluation of the model after a round to that round's record."""
        record = result.rounds[pending.index]
        by_name = {r.site.name: r for r in result.ready}
        asked = dict.fromkeys(pending.futures, pending.task)
        tasks, outcomes = self._collect(
            record.round, "evaluate", pending.futures, asked=asked, charged=result.charged, ready=by_name
        )
        site_metrics: dict[str, dict[str, float]] = {}
        totals: dict[str, float] = {}
        total_count = 0.0
        manifest = self.package.manifest
        ranges = {m.name: (m.low, m.high) for m in manifest.metrics}

        def mean(metric: str, total: float, count: float) -> float:
            # Noise can push a ratio outside the metric's range; clamping is free post-processing.
            low, high = ranges[metric]
            return min(high, max(low, total / max(count, 1.0)))

        scales = dict(zip((m.name for m in manifest.metrics), manifest.metric_noise_scales(), strict=True))
        histogram = ScoreHistogram.of(list(ranges))
        # A score histogram's cells are read as figures (AUC, C-index...), not shown one by one.
        cells = frozenset(histogram.cells) if histogram else frozenset()
        sigma = self.plan.evaluation_noise_multiplier
        # Every cell has the same noise: one group, one bound (Manifest.metric_noise_scales).
        cell_sd = sigma * scales[histogram.cells[0]] if histogram else 0.0
        for name, run in outcomes.items():
            count = run.scalars[NOISY_COUNT]
            # The counts are not metrics (the dropped units, when asked for, are kept below).
            sums = {m: v for m, v in run.scalars.items() if m not in (NOISY_COUNT, DROPPED_UNITS)}
            site_metrics[name] = {m: mean(m, v, count) for m, v in sums.items() if m not in cells}
            if histogram:
                site_metrics[name] |= histogram.estimates(sums)
            for m, v in sums.items():
                totals[m] = totals.get(m, 0.0) + v
            total_count += count
        metrics = {m: mean(m, v, total_count) for m, v in totals.items() if m not in cells}
        noise_sd = metric_noise_sd(scales, metrics, total_count, sites=len(outcomes), noise_multiplier=sigma)
        score_cells: dict[str, float] = {}
        pooled_sd = math.sqrt(len(outcomes)) * cell_sd
        if histogram and outcomes:
            pooled = histogram.figures(totals, pooled_sd)
            metrics |= {m: e.estimate for m, e in pooled.items()}
            noise_sd |= {m: e.dp_sd for m, e in pooled.items()}
            score_cells = {m: totals[m] for m in histogram.cells}
        evaluated = replace(
            record,
            evaluation=tasks,
            metrics=metrics,
            site_metrics=site_metrics,
            metrics_noise_sd=noise_sd,
            score_cells=score_cells,
            score_cell_sd=pooled_sd if score_cells else 0.0,
            dropped_units={n: lost for n, r in outcomes.items() if (lost := dropped_units(r)) is not None},
            dropped_units_sd=sigma if pending.task.release_dropped_units else 0.0,
        )
        result.rounds[pending.index] = evaluated
        self.observer.round_finished(evaluated)

    def _submit(
        self,
        site: Site,
        task: TaskProfile,
        round_number: int,
        prepared: ParameterSet,
        *,
        taken: threading.Event | None = None,
        after: threading.Event | None = None,
    ) -> Future[_Outcome]:
        """Starts one task in the pool (its kind named in its correlation id). ``taken`` is set once
        the agent has the parameters (its first progress) or the task ended; the task waits for
        ``after`` before it starts."""
        spec = self._spec(site, task, round_number)
        client = self.clients[site.name]
        expected = self.package.result_declarations(task)
        return self._pool.submit(self._timed, client, spec, prepared, expected, taken, after)

    def _timed(  # noqa: PLR0917 (one pool task's inputs)
        self,
        client: AgentClient,
        spec: pb.TaskSpec,
        prepared: ParameterSet,
        expected: Sequence[TensorDecl],
        taken: threading.Event | None,
        after: threading.Event | None,
    ) -> _Outcome:
        """Runs in a pool thread: the task and its own duration; any failure becomes a value."""
        try:
            if after is not None:
                while not after.wait(timeout=1.0):
                    if self._closed.is_set():
                        return _Outcome(None, FederationError("the run was stopped"), 0.0)
            started = self._clock()
            try:
                run = client.run_task(
                    spec,
                    prepared,
                    timeout=self.plan.task_deadline_seconds,
                    stall_seconds=self.plan.task_stall_seconds,
                    expected=expected,
                    on_progress=(lambda _fraction, _stage: taken.set()) if taken is not None else None,
                )
            except Exception as exc:  # a broken or hostile agent must not end the run
                return _Outcome(None, exc, self._clock() - started)
            return _Outcome(run, None, self._clock() - started)
        finally:
            if taken is not None:
                taken.set()

    def _spec(self, site: Site, task: TaskProfile, round_number: int) -> pb.TaskSpec:
        plan = self.plan
        return pb.TaskSpec(
            kind=task.wire,  # type: ignore[arg-type]
            package_digest=self.package.digest,
            dataset_id=site.dataset,
            hyperparameters=task.to_wire(),
            run_id=self.run_id,
            round=round_number,
            correlation_id=f"{self.run_id}/{round_number}/{site.name}/{task.name}",
            purpose=plan.purpose,
        )

    def _collect(
        self,
        round_number: int,
        kind: str,
        futures: Mapping[str, Future[_Outcome]],
        *,
        asked: Mapping[str, TaskProfile],
        charged: dict[str, SiteLedger],
        ready: Mapping[str, ReadySite],
    ) -> tuple[tuple[SiteTask, ...], dict[str, TaskRun]]:
        tasks: list[SiteTask] = []
        outcomes: dict[str, TaskRun] = {}
        for name, future in futures.items():
            outcome = future.result()
            run = outcome.run
            if run is None:
                status, detail = _failure(outcome.error) if outcome.error else ("UNKNOWN", "")
                task = SiteTask(name, kind, status, outcome.seconds, detail=detail)
                tasks.append(task)
                self.observer.task_finished(round_number, task)
                continue
            # The agent charged the task whether or not its result is usable here.
            if math.isfinite(run.epsilon_charged) and math.isfinite(run.budget_epsilon_spent):
                charged[name].tasks_charged += 1
                charged[name].epsilon += run.epsilon_charged
                charged[name].budget_epsilon = max(charged[name].budget_epsilon, run.budget_epsilon_spent)
            problem = self._release_problem(run, kind, asked[name], ready[name])
            if problem:
                task = SiteTask(name, kind, "INVALID_RESULT", outcome.seconds, run.epsilon_charged, detail=problem)
            else:
                outcomes[name] = run
                task = SiteTask(name, kind, "ok", outcome.seconds, run.epsilon_charged)
            tasks.append(task)
            self.observer.task_finished(round_number, task)
        return tuple(tasks), outcomes

    def _release_problem(self, run: TaskRun, kind: str, task: TaskProfile, site: ReadySite) -> str:
        """Why a result cannot be used (a broken or hostile agent), or ""."""
        if kind == "evaluate":
            values = list(run.scalars.values())
            expected = {m.name for m in self.package.manifest.metrics} | {NOISY_COUNT}
            if task.release_dropped_units:
                expected.add(DROPPED_UNITS)
            if set(run.scalars) != expected:
                return f"expected scalars {sorted(expected)}, got {sorted(run.scalars)}"
        else:
            # The tensors the task's kind releases; its scalars (a plan's, which may be withheld
            # as NaN) are the strategy's to judge.
            values = []
            for decl in self.package.result_declarations(task):
                tensor = run.tensors.get(decl.name)
                if tensor is None or tuple(tensor.shape) != decl.shape:
                    return f"no tensor {decl.name!r} of shape {list(decl.shape)} in the result"
                if not np.all(np.isfinite(tensor)):
                    return f"tensor {decl.name!r} holds non-finite values"
        if not all(np.isfinite([*values, run.epsilon_charged, run.budget_epsilon_spent])):
            return "a scalar or the reported ε is not finite"
        if kind == "train":
            return self.strategy.release_problem(_site_result(run, site))
        return ""


def _site_result(run: TaskRun, site: ReadySite) -> SiteResult:
    return SiteResult(site.site.name, run, site.units_lower, site.units_upper)


@dataclass(frozen=True)
class _Outcome:
    """One task as its pool thread saw it: a result or an error, and how long it took."""

    run: TaskRun | None
    error: BaseException | None
    seconds: float


@dataclass(frozen=True)
class _PendingEvaluation:
    index: int  # of the round record it belongs to
    task: TaskProfile
    futures: Mapping[str, Future[_Outcome]]


class _Outgoing:
    """One set of parameter values ready to send: the wire bytes and hashes of the tensors a task
    takes (``StudyPackage.ordered``), built once per list of tensors and shared by every site
    (but for a strategy that gives a site parameters of its own: :class:`SiteParameters`)."""

    def __init__(self, package: StudyPackage, parameters: Parameters, strategy: Strategy | None = None) -> None:
        self._package, self._parameters = package, parameters
        self._strategy = strategy if isinstance(strategy, SiteParameters) else None
        self._sets: dict[tuple[str, ...], ParameterSet] = {}

    def of(self, task: TaskProfile, site: str | None = None) -> ParameterSet:
        """The parameters of ``task`` for ``site`` (its own where the strategy gives each site
        its own: the model a site trains from is the one it is evaluated at)."""
        if site is not None and self._strategy is not None:
            return ParameterSet.of(self._package.ordered(self._strategy.parameters_for(site, self._parameters), task))
        ordered = self._package.ordered(self._parameters, task)
        key = tuple(name for name, _ in ordered)
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = ParameterSet.of(ordered)
        return found


def metric_noise_sd(
    scales: Mapping[str, float],
    means: Mapping[str, float],
    count: float,
    *,
    sites: int,
    noise_multiplier: float,
) -> dict[str, float]:
    """The DP noise's standard deviation of each pooled metric mean ``sum / count``.

    Each site adds N(0, (σ·scale_m)²) to metric m's sum (``scales``: the package's
    ``Manifest.metric_noise_scales``, as agent.runtime.tasks.dp_evaluate adds it) and
    N(0, σ²) to its count; by the delta method the ratio's variance is
    (var(sum) + mean²·var(count)) / count². Sampling error is not in it: this is what the
    privacy costs in precision.
    """
    if sites == 0 or count <= 0:
        return {}  # no positive count: no ratio, no SD (the metric is shown as noisy, without one)
    result = {}
    for metric, value in means.items():
        sum_variance = sites * (noise_multiplier * scales[metric]) ** 2
        count_variance = sites * noise_multiplier**2
        result[metric] = math.sqrt(sum_variance + value * value * count_variance) / count
    return result


class SiteUnsuitableError(Exception):
    """An agent answered, but cannot take part (dataset columns, package digest)."""
