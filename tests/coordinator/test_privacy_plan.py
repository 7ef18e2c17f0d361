"""Privacy planning against a real agent over mTLS: the ε it projects for a run is what it then
charges; a run that would go over a site's budget is refused before anything is spent; σ is
solved for a target ε; bad planned tasks get a clear status."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.privacy.accounting import PldAccountant
from edge_sponsor.cli.main import main as sponsor_main
from edge_sponsor.coordinator.federation import TrainingPlan
from edge_sponsor.coordinator.privacy_plan import (
    PlanningError,
    evaluation_rounds,
    noise_for_epsilon,
    run_epsilon,
    training_tasks,
)
from tests.conftest import Pki
from tests.packages.package_builders import new_key
from tests.tasks.test_unit_level_budget import Site, independent_epsilon


@pytest.fixture
def site(tmp_path: Path, pki: Pki) -> Iterator[Site]:
    """A real agent over mTLS with the "visits" dataset (1 to 6 rows per patient) and ε 50."""
    started = Site(tmp_path / "agent", pki, new_key())
    yield started
    started.channel.close()
    started.process.stop()


PLAN = TrainingPlan(
    rounds=3,
    noise_multiplier=1.0,
    sampling_rate=0.1,
    evaluate_every=2,
    evaluation_noise_multiplier=5.0,
    evaluation_sampling_rate=1.0,
)


def test_the_projection_is_what_the_agent_then_charges(site: Site) -> None:
    tasks = training_tasks(PLAN)
    # 3 gradient rounds; evaluations after round 2 and after the last.
    assert [(task.profile.name, task.count) for task in tasks] == [("dp_gradient", 3), ("dp_evaluate", 2)]
    budget = site.stub.GetBudget(
        pb.GetBudgetRequest(dataset_id="visits", planned=[task.to_wire() for task in tasks]), timeout=60
    )
    assert budget.epsilon_spent == 0.0
    # An evaluation with its noisy count is one Gaussian at σ/√2 (the grid applies to σ = 5, before).
    expected = independent_epsilon([(0.1, 1.0, 3), (1.0, 5.0 / 2**0.5, 2)])
    assert budget.epsilon_projected == pytest.approx(expected, rel=1e-6)

    for task in tasks:
        for _ in range(task.count):
            spec = site.spec(task.profile.wire)
            spec.hyperparameters.CopyFrom(task.profile.to_wire())
            site.run(spec)
    after = site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="visits"), timeout=60)
    assert after.tasks_charged == 5
    assert after.epsilon_spent == pytest.approx(budget.epsilon_projected, rel=1e-9)
    assert not after.HasField("epsilon_projected")


@pytest.mark.parametrize(
    ("planned", "words"),
    [
        (
            pb.PlannedTasks(
                kind=pb.TASK_KIND_DP_GRADIENT,
                count=1,
                hyperparameters=pb.DPHyperparameters(noise_multiplier=1.0, sampling_rate=0.1),
            ),
            "planned[0]: hyperparameters.clip_norm is required for dp_gradient",
        ),
        (
            pb.PlannedTasks(
                kind=pb.TASK_KIND_DP_EVALUATE,
                count=0,
                hyperparameters=pb.DPHyperparameters(noise_multiplier=1.0, sampling_rate=1.0),
            ),
            "planned[0].count must be between 1 and 1000000, got 0",
        ),
        (
            pb.PlannedTasks(
                kind=pb.TASK_KIND_DP_EVALUATE,
                count=1,
                hyperparameters=pb.DPHyperparameters(noise_multiplier=0.01, sampling_rate=1.0),
            ),
            "planned[0]: hyperparameters.noise_multiplier must be a number >= 0.1",
        ),
        (pb.PlannedTasks(kind=pb.TaskKind.Value("TASK_KIND_UNSPECIFIED"), count=1), "planned[0].kind: must be one of"),
    ],
)
def test_bad_planned_tasks_are_refused_naming_the_field(
    site: Site,
    planned: pb.PlannedTasks,
    words: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="visits", planned=[planned]), timeout=60)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and words in caught.value.details()


def federation_file(tmp_path: Path, pki: Pki, site: Site, name: str = "federation", **training: object) -> Path:
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in training.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[federation]\nname = "plan"\nca_file = "{pki.path("ca.crt")}"\ncert_file = "{pki.path("coordinator.crt")}"\n'
        f'key_file = "{pki.path("coordinator.key")}"\nserver_name = "localhost"\n\n'
        f'[[agents]]\nname = "hospital"\naddress = "{site.address}"\ndataset = "visits"\n\n[training]\n{lines}'
    )
    return path


def test_coordinate_plan_says_what_fits_and_train_refuses_what_does_not(
    tmp_path: Path,
    pki: Pki,
    site: Site,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fits = federation_file(tmp_path, pki, site, rounds=3, noise_multiplier=1.0, sampling_rate=0.1)
    assert sponsor_main(["coordinate", "plan", str(fits)]) == 0
    out = capsys.readouterr().out
    assert "hospital: ε 0.000 spent (+0.000 in flight) -> " in out and "limit 50 at δ 1e-05: fits" in out

    # 2000 rounds at σ 0.5 and q 0.5: far over the site's ε of 50.
    over = federation_file(
        tmp_path, pki, site, "over", rounds=2000, noise_multiplier=0.5, sampling_rate=0.5, evaluate_every=0
    )
    assert sponsor_main(["coordinate", "plan", str(over)]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    package = tmp_path / "package.zip"
    from tests.packages.package_builders import good_package, new_key

    package.write_bytes(good_package(new_key()))
    code = sponsor_main(["coordinate", "train", str(over), "--package", str(package), "--out", str(tmp_path / "run")])
    assert code == 1
    errors = capsys.readouterr().err
    assert "over the privacy budget, or its policy refuses the run's tasks; nothing was spent" in errors
    assert "Traceback" not in errors
    assert site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="visits"), timeout=60).tasks_charged == 0
    assert not (tmp_path / "run").exists()

    # Three evaluations (σ 5 at q = 1) cost about 1.6 alone: a target of 1 cannot be met, 4 can.
    assert sponsor_main(["coordinate", "plan", str(fits), "--target-epsilon", "1.0"]) == 2
    assert "no noise multiplier up to 1000 brings the run within ε = 1" in capsys.readouterr().err
    assert sponsor_main(["coordinate", "plan", str(fits), "--target-epsilon", "4.0"]) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("noise_multiplier = "))
    sigma = float(line.split()[2])
    accountant = PldAccountant()
    try:
        plan = dataclasses.replace(TrainingPlan(rounds=3, sampling_rate=0.1), noise_multiplier=sigma)
        assert run_epsilon(training_tasks(plan), 1e-5, accountant) <= 4.0
        # One step of the accounting grid less noise would not fit.
        smaller = dataclasses.replace(plan, noise_multiplier=sigma - 10 ** (int(f"{sigma:e}".split("e")[1]) - 2))
        assert run_epsilon(training_tasks(smaller), 1e-5, accountant) > 4.0
    finally:
        accountant.close()


def test_a_target_no_noise_meets_is_a_clear_error() -> None:
    accountant = PldAccountant()
    try:
        # Evaluation alone (σ 0.5 at q = 1, every round) costs more than ε = 0.1.
        plan = TrainingPlan(rounds=50, evaluate_every=1, evaluation_noise_multiplier=0.5)
        assert evaluation_rounds(plan) == 50
        with pytest.raises(PlanningError, match="no noise multiplier up to 1000 brings the run within"):
            noise_for_epsilon(plan, 0.1, 1e-5, accountant)
    finally:
        accountant.close()


def test_an_unreachable_site_is_reported_and_fails_the_plan(
    tmp_path: Path,
    pki: Pki,
    site: Site,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = federation_file(tmp_path, pki, site, rounds=1)
    text = path.read_text().replace(site.address, "127.0.0.1:9")
    text = text.replace("[[agents]]", "connect_seconds = 1\n\n[[agents]]")
    path.write_text(text)
    assert sponsor_main(["coordinate", "plan", str(path)]) == 1
    assert "hospital: cannot say: UNAVAILABLE: no connection to 127.0.0.1:9 within 1" in capsys.readouterr().out


def test_planned_tasks_are_held_to_the_policy_and_to_what_can_be_composed(site: Site) -> None:
    """What a RunTask would be refused is refused in a plan too, and no plan can make the agent
    compose for minutes: the dataset's bounds, a total step cap, and the σ floor after composition."""

    def refused(*planned: pb.PlannedTasks) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="visits", planned=list(planned)), timeout=60)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        return str(caught.value.details())

    def evaluate(sigma: float, count: int) -> pb.PlannedTasks:
        hyper = pb.DPHyperparameters(noise_multiplier=sigma, sampling_rate=1.0)
        return pb.PlannedTasks(kind=pb.TASK_KIND_DP_EVALUATE, hyperparameters=hyper, count=count)

    # The policy's default lower bound on σ is 0.5.
    assert "noise_multiplier = 0.2 is outside the range [0.5, inf]" in refused(evaluate(0.2, 1))
    # 10,000 unsampled evaluations at σ 5 compose to one Gaussian at σ 0.05.
    assert "compose to one below 0.1" in refused(evaluate(5.0, 10_000))
    training = pb.PlannedTasks(
        kind=pb.TASK_KIND_DP_LOCAL_TRAINING,
        count=100_000,
        hyperparameters=pb.DPHyperparameters(
            clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.01, local_steps=100, learning_rate=0.1
        ),
    )
    assert "10000000 steps in all, more than 1000000" in refused(training)
