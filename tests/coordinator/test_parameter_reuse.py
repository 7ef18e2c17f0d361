"""The reference coordinator against a real agent: a model's evaluation and the next round's
training share one upload of its parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.tasks.tensors import TensorDecl
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import Federation, Site, TrainingPlan
from edge_sponsor.coordinator.progress import QuietObserver
from edge_sponsor.coordinator.strategies import Strategy
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.tasks import ParameterSet, TaskRun
from edge_sponsor.coordinator.training import FederatedTraining, TrainingResult
from tests.conftest import Pki
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import Agent, start


class RecordingClient(AgentClient):
    """The product client, noting which parameters each task really sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, int, tuple[str, ...]]] = []

    def run_task(
        self,
        spec: pb.TaskSpec,
        parameters: Sequence[tuple[str, npt.NDArray[np.generic]]] | ParameterSet,
        *,
        timeout: float | None = None,
        stall_seconds: float | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        expected: Sequence[TensorDecl] | None = None,
    ) -> TaskRun:
        run = super().run_task(
            spec, parameters, timeout=timeout, stall_seconds=stall_seconds, on_progress=on_progress, expected=expected
        )
        kind = "evaluate" if spec.kind == pb.TASK_KIND_DP_EVALUATE else "train"
        self.sent.append((kind, spec.round, run.parameters_sent))
        return run


def one_site_federation(name: str, tmp_path: Path, pki: Pki, address: str, plan: TrainingPlan) -> Federation:
    """A federation of one site, "hospital", whose dataset is "cohort", on the test PKI."""
    return Federation(
        name=name,
        ca_file=pki.path("ca.crt"),
        cert_file=pki.path("coordinator.crt"),
        key_file=pki.path("coordinator.key"),
        server_name="localhost",
        connect_seconds=10.0,
        sites=(Site("hospital", address, "cohort"),),
        training=plan,
        source=tmp_path / "federation.toml",
    )


def train_one_site(
    agent: Agent,
    client: AgentClient,
    package: StudyPackage,
    plan: TrainingPlan,
    *,
    name: str,
    pki: Pki,
    tmp_path: Path,
    strategy: Strategy | None = None,
) -> TrainingResult:
    """Trains ``package`` from its initial parameters over a federation of ``agent`` alone (through
    ``client``), then closes the client and stops the agent, whatever happened."""
    federation = one_site_federation(name, tmp_path, pki, agent.address, plan)
    training = FederatedTraining(
        federation, {"hospital": client}, package, QuietObserver(), run_id=f"{name}-1", strategy=strategy
    )
    try:
        ready, _ = training.prepare()
        return training.train(ready, package.initial_parameters())
    finally:
        training.close()
        client.close()
        agent.channel.close()
        agent.process.stop()


def test_an_evaluation_reuses_the_parameters_the_next_round_sent(tmp_path: Path, pki: Pki) -> None:
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(
        rounds=3,
        noise_multiplier=8.0,
        sampling_rate=0.5,
        evaluate_every=1,
        evaluation_noise_multiplier=20.0,
        quorum=1,
        task_stall_seconds=60.0,
        purpose="research",
    )
    client = RecordingClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    package = StudyPackage.from_archive(good_package(publisher))
    result = train_one_site(agent, client, package, plan, name="reuse", pki=pki, tmp_path=tmp_path)
    assert [r.updated for r in result.rounds] == [True, True, True]
    everything = ("w", "b")
    assert sorted(client.sent) == [
        ("evaluate", 1, ()),  # the model after round 1 went to the agent with round 2's training
        ("evaluate", 2, ()),
        ("evaluate", 3, everything),  # no round after the last: sent for the evaluation itself
        ("train", 1, everything),
        ("train", 2, everything),  # every round moves every parameter
        ("train", 3, everything),
    ]
    assert all(r.metrics for r in result.rounds)
