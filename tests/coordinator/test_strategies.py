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
from edge_sponsor.coordinator.strategies import FedAvg, FedSgd, SiteResult, strategy_for
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
