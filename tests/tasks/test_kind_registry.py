"""The registry is the one list of task kinds: the contract's names agree with it, and a new kind
is one module plus one registration line (the kind below is defined here and picked up by the
wire parser, the policy loader, governance and the CLI without any other change)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Annotated

import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.cli.main import main
from agent.governance.decisions import Action, Request, TaskRequest, UsageState, decide
from agent.governance.loader import parse_policy
from agent.governance.model import Bounds
from agent.packages.manifest import GRAPH_FILES, HYPERPARAMETERS, NOISY_COUNT, PLAN_KINDS, Manifest, TaskKind
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.server.task_endpoints import specification
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds import registry
from agent.tasks.kinds.hyperparameters import Hyperparameter, Requirement
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile
from agent.tasks.worker import Released
from tests.governance.test_governance_loader import MINIMAL


def test_the_manifest_and_the_wire_name_exactly_the_registered_kinds() -> None:
    assert set(registry.names()) == {kind.value for kind in TaskKind}
    wire = {number for name, number in pb.TaskKind.items() if name != "TASK_KIND_UNSPECIFIED"}
    assert {profile.wire for profile in registry.PROFILES} == wire
    for profile in registry.PROFILES:
        assert pb.TaskKind.Name(profile.wire) == "TASK_KIND_" + profile.name.upper()  # type: ignore[arg-type]


def test_names_numbers_and_hyperparameters_are_unique() -> None:
    assert len(set(registry.names())) == len(registry.PROFILES)
    assert len({profile.wire for profile in registry.PROFILES}) == len(registry.PROFILES)
    by_name: dict[str, Hyperparameter] = {}
    for profile in registry.PROFILES:
        for hyperparameter in profile.declared():
            # Two kinds that take a hyperparameter of one name share its declaration (one policy bound).
            assert by_name.setdefault(hyperparameter.name, hyperparameter) is hyperparameter


def test_every_kind_runs_a_graph_or_a_plan_of_the_package_format_and_packages_can_bound_its_hyperparameters() -> None:
    for profile in registry.PROFILES:
        if profile.graph is None:
            assert TaskKind(profile.name) in PLAN_KINDS
        else:
            assert profile.graph.value in GRAPH_FILES and TaskKind(profile.name) not in PLAN_KINDS
    assert {h.name for h in registry.hyperparameters()} == set(HYPERPARAMETERS)


def test_every_field_but_the_count_switches_is_a_declared_hyperparameter() -> None:
    for profile in registry.PROFILES:
        fields = {field.name for field in dataclasses.fields(profile)}
        switches = {"release_noisy_count", "release_dropped_units"}
        assert fields == {h.name for h in profile.declared()} | switches, profile.name


# -- a new kind, defined here: one module's worth of code ----------------------------------------

MAX_ROWS_PER_UNIT = Hyperparameter(
    "max_rows_per_unit", Requirement(lambda value: 1 <= value <= 1000, "1..1000"), Bounds(1, 100), (1, 1000),
    example=10, integer=True,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpUnitCount(TaskProfile, name="dp_unit_count", wire=99, graph=GraphRole.EVALUATION):
    """A noisy count of the sampled units (a minimal kind: it exists only in this test)."""

    # With noise_multiplier, sampling_rate and release_noisy_count, as every kind.
    max_rows_per_unit: Annotated[int, MAX_ROWS_PER_UNIT]

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_evaluate(noise_multiplier, sampling_rate)

    def release(self, manifest: Manifest) -> Release:
        return Release((), frozenset({NOISY_COUNT}))

    def compute(self, computation: Computation | PlanComputation) -> Released:
        return Released({}, {NOISY_COUNT: 0.0})


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registration line: the kind appended to PROFILES."""
    monkeypatch.setattr(registry, "PROFILES", (*registry.PROFILES, DpUnitCount))


POLICY = MINIMAL.replace('"dp_gradient"', '"dp_unit_count"') + "[datasets.bounds]\nmax_rows_per_unit = { max = 5 }\n"


@pytest.mark.usefixtures("registered")
def test_the_wire_parser_reads_a_registered_kind() -> None:
    message = pb.TaskSpec(
        kind=99,  # type: ignore[arg-type]
        package_digest="sha256:" + "0" * 64,
        dataset_id="d1",
        hyperparameters=pb.DPHyperparameters(noise_multiplier=2.0, sampling_rate=0.5, local_steps=3),
    )
    # Found by its number, and asked for its own hyperparameters. (A hyperparameter no kind took
    # before also needs its field in DPHyperparameters: the contract, not the agent's code.)
    with pytest.raises(TaskSpecError, match="max_rows_per_unit is required for dp_unit_count"):
        specification(message)
    assert "dp_unit_count" in str(_refusal(pb.TaskSpec(kind=98)))  # type: ignore[arg-type]


def _refusal(message: pb.TaskSpec) -> TaskSpecError:
    with pytest.raises(TaskSpecError) as refused:
        specification(message)
    return refused.value


@pytest.mark.usefixtures("registered")
def test_the_policy_loader_and_governance_take_a_registered_kind_and_bound_its_hyperparameters() -> None:
    policy = parse_policy(POLICY.encode(), Path("policy.toml"))
    assert policy.coordinators["c1"].task_kinds == {"dp_unit_count"}
    assert policy.datasets["d1"].bounds["max_rows_per_unit"] == Bounds(1, 5)

    def decision(rows: int) -> tuple[bool, str]:
        task = TaskRequest(
            profile=DpUnitCount(noise_multiplier=2.0, sampling_rate=0.5, max_rows_per_unit=rows),
            package_name="acme/counts",
            columns=frozenset({"age"}),
            label_columns=frozenset(),
            purpose="",
            cohort_size=500,
        )
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        made = decide(Request("c1", Action.RUN_TASK, now, dataset_id="d1", task=task), policy, UsageState())
        return made.allowed, made.rule

    assert decision(5) == (True, "task.allowed")
    assert decision(6) == (False, "dataset.bounds.max_rows_per_unit")


@pytest.mark.usefixtures("registered")
def test_the_cli_offers_a_registered_kind_and_its_hyperparameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    explain = ["policy", "explain", "--policy", str(tmp_path / "policy.toml"), "--coordinator", "c1",
               "--dataset", "d1", "--cohort-size", "500", "--task", "dp_unit_count"]
    assert main([*explain, "--max-rows-per-unit", "5"]) == 0
    assert "ALLOWED" in capsys.readouterr().out
    assert main([*explain, "--max-rows-per-unit", "50"]) == 1
    assert "dataset.bounds.max_rows_per_unit" in capsys.readouterr().out


def test_the_profile_derives_its_audit_fields_and_mechanism() -> None:
    counted = DpUnitCount(noise_multiplier=2.0, sampling_rate=0.5, max_rows_per_unit=4, release_noisy_count=True)
    assert counted.audit_fields() == {
        "noise_multiplier": 2.0, "sampling_rate": 0.5, "max_rows_per_unit": 4, "release_noisy_count": True,
        "release_dropped_units": False,
    }
    assert counted.mechanism() == Mechanism.dp_evaluate(2.0, 0.5)
