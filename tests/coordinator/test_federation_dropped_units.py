"""The federation file's evaluation_release_dropped_units: off by default, only with whole-cohort evaluations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.config.errors import ConfigError
from agent.tasks.kinds.dp_evaluate import DpEvaluate
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import TrainingPlan, parse_federation
from edge_sponsor.coordinator.privacy_plan import training_tasks
from edge_sponsor.coordinator.progress import QuietObserver
from edge_sponsor.coordinator.report import RunReport
from edge_sponsor.coordinator.run_page import render_run_page
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.training import FederatedTraining, FederationError
from tests.conftest import Pki
from tests.coordinator.test_federation_file import GOOD
from tests.coordinator.test_parameter_reuse import one_site_federation, train_one_site
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import start


def test_evaluations_ask_for_the_dropped_units_only_when_told(tmp_path: Path) -> None:
    assert not parse_federation(GOOD, tmp_path / "federation.toml").training.evaluation_release_dropped_units
    asked = GOOD + "evaluation_release_dropped_units = true\n"
    assert parse_federation(asked, tmp_path / "federation.toml").training.evaluation_release_dropped_units


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            "evaluation_release_dropped_units = true\nevaluation_sampling_rate = 0.5\n",
            "needs evaluation_sampling_rate = 1",
        ),
        ('evaluation_release_dropped_units = "yes"\n', "true or false"),
    ],
)
def test_a_setting_every_agent_would_refuse_names_the_key(tmp_path: Path, lines: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_federation(GOOD + lines, tmp_path / "federation.toml")
    assert caught.value.key == "training.evaluation_release_dropped_units"
    assert problem in caught.value.problem


def test_a_training_run_that_asks_evaluates_with_the_count_and_plans_its_cost(tmp_path: Path, pki: Pki) -> None:
    """With evaluation_release_dropped_units, each evaluation asks for the count (the run's
    evaluations are usable, the count is not taken for a metric) and the privacy plan
    projects the extra Gaussian: more ε than the same run without it."""
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(
        rounds=2,
        noise_multiplier=8.0,
        sampling_rate=0.5,
        evaluate_every=1,
        evaluation_noise_multiplier=20.0,
        quorum=1,
        task_stall_seconds=60.0,
        purpose="research",
        evaluation_release_dropped_units=True,
    )
    client = AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    package = StudyPackage.from_archive(good_package(publisher))
    result = train_one_site(agent, client, package, plan, name="dropped", pki=pki, tmp_path=tmp_path)
    evaluations = [task for record in result.rounds for task in record.evaluation]
    assert [task.status for task in evaluations] == ["ok", "ok"]
    assert all("dropped_units" not in record.metrics for record in result.rounds)
    # Each evaluation's count, per site with its noise SD, and the run page shows the last one.
    assert all(set(r.dropped_units) == {"hospital"} and r.dropped_units_sd == 20.0 for r in result.rounds)
    report = RunReport("f", "run", "fedsgd", "p", "d", "", "", {}, tuple(result.rounds), ())
    page = render_run_page(report)
    assert 'id="dropped-units"' in page and "Evaluation after round 2" in page and "±20" in page
    (_, asked), (_, plain) = (
        training_tasks(plan),
        training_tasks(replace(plan, evaluation_release_dropped_units=False)),
    )
    assert isinstance(asked.profile, DpEvaluate) and isinstance(plain.profile, DpEvaluate)
    assert asked.profile.release_dropped_units and not plain.profile.release_dropped_units
    assert asked.profile.mechanism().noise_multiplier < plain.profile.mechanism().noise_multiplier


class OlderAgentClient(AgentClient):
    """A client of a real agent that reads GetInfo as from an agent predating the count."""

    def get_info(self) -> pb.GetInfoResponse:
        info = super().get_info()
        del info.capabilities[:]
        info.capabilities.extend(["budget", "datasets", "tasks"])
        return info


def test_a_run_that_asks_for_the_count_leaves_out_an_agent_that_cannot_release_it(tmp_path: Path, pki: Pki) -> None:
    """An agent without the "dropped-units" capability would ignore the switch and charge each
    evaluation without the count, whose result the coordinator would then refuse: such an agent
    is asked nothing, and says why."""
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(rounds=1, quorum=1, task_stall_seconds=60.0, evaluation_release_dropped_units=True)
    with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as current:
        assert "dropped-units" in current.get_info().capabilities
    client = OlderAgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    package = StudyPackage.from_archive(good_package(publisher))
    federation = one_site_federation("older", tmp_path, pki, agent.address, plan)
    training = FederatedTraining(federation, {"hospital": client}, package, QuietObserver(), run_id="older-1")
    try:
        with pytest.raises(FederationError, match="only 0 of 1 agents are usable"):
            training.prepare()
        status, detail = training.left_out["hospital"]
        assert status == "unsuitable" and "does not release dropped_units" in detail
        assert "evaluation_release_dropped_units = false" in detail
        assert client.get_budget("cohort").epsilon_spent == 0.0
    finally:
        training.close()
        client.close()
        agent.channel.close()
        agent.process.stop()
