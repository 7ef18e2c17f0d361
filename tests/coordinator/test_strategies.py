"""The strategy extension point (edge_sponsor.coordinator.strategies) against a real agent:
a strategy of the caller's own decides each site's task and the next parameters; the
round loop, quorum, evaluation and report stay the coordinator's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import Algorithm, TrainingPlan
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.strategies import FedAvg, FedSgd, SiteResult, StopRunError, strategy_for
from edge_sponsor.coordinator.study_package import StudyPackage
from tests.conftest import Pki
from tests.coordinator.test_parameter_reuse import train_one_site
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import start


class SignSgd:
    """A strategy the coordinator does not ship: each round a smaller clipping norm, and a
    step of fixed size along the sign of the summed noisy gradients (signSGD)."""

    def __init__(self) -> None:
        self.configured: list[tuple[int, str, float]] = []
        self.aggregated: list[tuple[int, tuple[str, ...]]] = []

    def configure(self, round_number: int, site: str) -> TaskProfile:
        clip = 1.0 / round_number
        self.configured.append((round_number, site, clip))
        return DpGradient(clip_norm=clip, noise_multiplier=8.0, sampling_rate=0.5)

    def release_problem(self, result: SiteResult) -> str:
        return ""

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        self.aggregated.append((len(self.aggregated) + 1, tuple(sorted(results))))
        return {
            name: (value - 0.01 * np.sign(sum(r.run.tensors[name] for r in results.values()))).astype(value.dtype)
            for name, value in parameters.items()
        }


def test_a_strategy_of_ones_own_runs_the_rounds_against_a_real_agent(tmp_path: Path, pki: Pki) -> None:
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(rounds=3, evaluate_every=0, quorum=1, task_stall_seconds=60.0, purpose="research")
    client = AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    package = StudyPackage.from_archive(good_package(publisher))
    strategy = SignSgd()
    start_parameters = package.initial_parameters()
    result = train_one_site(
        agent, client, package, plan, name="strategy", pki=pki, tmp_path=tmp_path, strategy=strategy
    )
    assert strategy.configured == [(1, "hospital", 1.0), (2, "hospital", 0.5), (3, "hospital", 1.0 / 3)]
    assert strategy.aggregated == [(1, ("hospital",)), (2, ("hospital",)), (3, ("hospital",))]
    assert [r.updated for r in result.rounds] == [True, True, True]
    # Three signSGD steps of 0.01 from the start: every coordinate moved by a multiple of 0.01.
    for name, value in result.parameters.items():
        moved = (value.astype(np.float64) - start_parameters[name].astype(np.float64)) / 0.01
        np.testing.assert_allclose(moved, np.round(moved), atol=1e-3)
        assert np.all(np.abs(moved) <= 3 + 1e-3)
    # The agent charged what the strategy asked: three gradient tasks.
    assert result.charged["hospital"].rounds_contributed == 3 and result.charged["hospital"].epsilon > 0


@pytest.mark.parametrize(("algorithm", "expected"), [(Algorithm.FEDSGD, FedSgd), (Algorithm.FEDAVG, FedAvg)])
def test_the_federation_files_algorithm_names_the_default_strategy(algorithm: Algorithm, expected: type) -> None:
    package = StudyPackage.from_archive(good_package(new_key()))
    plan = TrainingPlan(algorithm=algorithm)
    strategy = strategy_for(plan, package.manifest.parameters)
    assert isinstance(strategy, expected)
    assert strategy.configure(1, "any").name == (
        "dp_gradient" if algorithm is Algorithm.FEDSGD else "dp_local_training"
    )


class Scripted:
    """A strategy whose answers are set per round: a task or None (the site left out), a
    release problem, and an aggregate that steps, stops the run, or leaves the model as it is."""

    def __init__(self, *, skip: int = 0, stop_at: int = 0, refuse_results: bool = False) -> None:
        self.skip, self.stop_at, self.refuse_results = skip, stop_at, refuse_results
        self.rounds_configured: list[int] = []

    def configure(self, round_number: int, site: str) -> TaskProfile | None:
        self.rounds_configured.append(round_number)
        if round_number == self.skip:
            return None
        return DpGradient(clip_norm=1.0, noise_multiplier=8.0, sampling_rate=0.5)

    def release_problem(self, result: SiteResult) -> str:
        return "not the release this strategy wants" if self.refuse_results else ""

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        if len(self.rounds_configured) == self.stop_at:
            raise StopRunError("the estimate has converged")
        # float64, as a strategy's own arithmetic easily makes it: the loop sends the declared float32.
        return {name: value.astype(np.float64) + 0.5 for name, value in parameters.items()}


@pytest.mark.parametrize(
    ("strategy", "records", "stopped", "contributed", "charged"),
    [
        # Round 2 asks no site: the run ends before it, after one round.
        (Scripted(skip=2), 1, "round 2: the strategy asked no site", 1, 1),
        # The strategy ends the run in round 2's aggregate: two rounds recorded, the second without a step.
        (Scripted(stop_at=2), 2, "round 2: the estimate has converged", 1, 2),
        # A result the strategy cannot use: nothing aggregated, but the agent charged the task and the
        # run's ledger says so.
        (Scripted(refuse_results=True), 1, "1 round(s) in a row without an update", 0, 1),
    ],
)
def test_a_strategy_leaves_sites_out_ends_the_run_and_unusable_results_are_still_charged(
    tmp_path: Path, pki: Pki, strategy: Scripted, records: int, stopped: str, contributed: int, charged: int
) -> None:
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(
        rounds=3, evaluate_every=0, quorum=1, max_failed_rounds=1, task_stall_seconds=60.0, purpose="research"
    )
    client = AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    package = StudyPackage.from_archive(good_package(publisher))
    start_parameters = package.initial_parameters()
    result = train_one_site(
        agent, client, package, plan, name="scripted", pki=pki, tmp_path=tmp_path, strategy=strategy
    )
    assert len(result.rounds) == records
    assert result.stopped_early.startswith(stopped)
    ledger = result.charged["hospital"]
    assert ledger.rounds_contributed == contributed and ledger.tasks_charged == charged
    assert ledger.epsilon > 0 and ledger.budget_epsilon >= ledger.epsilon * 0.99
    # The parameters moved once per step the strategy made, no more.
    for name, value in result.parameters.items():
        np.testing.assert_allclose(value, start_parameters[name] + 0.5 * contributed, atol=1e-6)
    if strategy.refuse_results:
        (task,) = result.rounds[0].training
        assert task.status == "INVALID_RESULT" and task.detail == "not the release this strategy wants"
        assert task.epsilon_charged > 0
