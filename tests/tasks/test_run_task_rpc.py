"""RunTask, CancelTask and GetBudget end to end: real agent, mTLS, worker processes, SQLite ledger."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.identity.agent_key import AgentKey
from agent.privacy.accounting import make_accountant
from agent.privacy.mechanism import Mechanism
from edge_sponsor.coordinator.tasks import TaskRun, run_task
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config
from tests.packages.package_builders import good_package, new_key

ROWS = 400


def policy_text(
    publisher: AgentKey,
    *,
    budget: float = 50.0,
    extra_dataset: str = "",
    max_concurrent: int = 4,
    extra_coordinator: str = "",
) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["cohort", "tiny"]
task_kinds = ["dp_gradient", "dp_local_training", "dp_evaluate"]
{extra_coordinator}

[[coordinators]]
identity = "cn-only-coordinator"
datasets = ["cohort"]
task_kinds = ["dp_gradient"]

[[datasets]]
id = "cohort"
epsilon_budget = {budget}
delta = 1e-5
min_cohort_size = 20
forbidden_columns = ["patient_id"]
{extra_dataset}

[[datasets]]
id = "tiny"
epsilon_budget = 10.0
min_cohort_size = 20

[[publishers]]
name = "Acme Pharma"
public_key = "{key}"

[packages]
require_approval = false

[limits]
max_concurrent_tasks = {max_concurrent}
task_seconds = 60
"""


def cohort_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 12, rows)
    bmi = rng.normal(27, 4, rows).astype(np.float32)
    sex = rng.choice(["F", "M"], rows)
    outcome = (rng.random(rows) < 1 / (1 + np.exp(-(age - 60) / 10))).astype(np.float32)
    patients = [f"p{i}" for i in range(rows)]
    return pa.table({"age": age, "sex": sex, "bmi": bmi, "outcome": outcome, "patient_id": patients})


@dataclass
class Agent:
    directory: Path
    process: InProcessAgent
    address: str
    package_digest: str
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.AgentStub:
        return pb_grpc.AgentStub(self.channel)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.directory / "state" / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["kind"] == kind]


def secure_channel(pki: Pki, address: str, who: str = "coordinator") -> grpc.Channel:
    credentials = pki.credentials(who)
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def cohort_config(directory: Path, pki: Pki, publisher: AgentKey, **policy: Any) -> Path:
    """agent.toml and policy.toml for an agent with the "cohort" (ROWS rows) and "tiny" (5) datasets."""
    data = directory / "data"
    data.mkdir(parents=True)
    pq.write_table(cohort_table(ROWS), data / "cohort.parquet")
    pq.write_table(cohort_table(5), data / "tiny.parquet")
    return write_config(
        directory,
        pki,
        policy=policy_text(publisher, **policy),
        extra=(
            f'\n[[datasets]]\nid = "cohort"\npath = "{data / "cohort.parquet"}"\n'
            f'\n[[datasets]]\nid = "tiny"\npath = "{data / "tiny.parquet"}"\n'
        ),
    )


def start(directory: Path, pki: Pki, publisher: AgentKey, **policy: Any) -> Agent:
    config = cohort_config(directory, pki, publisher, **policy)
    process = start_in_process(config)
    address = f"127.0.0.1:{process.port}"
    channel = secure_channel(pki, address)
    from edge_sponsor.coordinator.client import AgentClient

    with AgentClient(address, pki.credentials(), server_name="localhost", timeout=30) as client:
        digest = client.upload_package(good_package(publisher)).digest
    return Agent(directory, process, address, digest, channel)


@pytest.fixture(scope="module")
def publisher() -> AgentKey:
    return new_key()


@pytest.fixture
def agent(tmp_path: Path, pki: Pki, publisher: AgentKey) -> Iterator[Agent]:
    started = start(tmp_path, pki, publisher)
    yield started
    started.channel.close()
    started.process.stop()


PARAMETERS = [("w", np.zeros(4, np.float32)), ("b", np.zeros((), np.float32))]


def spec(agent: Agent, kind: int = pb.TASK_KIND_DP_GRADIENT, dataset: str = "cohort", **hyper: Any) -> pb.TaskSpec:
    values: dict[str, Any] = {"clip_norm": 1.0, "noise_multiplier": 1.0, "sampling_rate": 0.5}
    if kind == pb.TASK_KIND_DP_LOCAL_TRAINING:
        values |= {"local_steps": 3, "learning_rate": 0.1}
    values |= hyper
    values = {k: v for k, v in values.items() if v is not None}
    return pb.TaskSpec(
        kind=kind,
        package_digest=agent.package_digest,
        dataset_id=dataset,
        hyperparameters=pb.DPHyperparameters(**values),
        run_id="run-1",
        round=1,
        correlation_id="corr-1",
        purpose="research",
    )


def run(agent: Agent, message: pb.TaskSpec, parameters: list[tuple[str, Any]] = PARAMETERS) -> TaskRun:
    return run_task(agent.stub, message, parameters, timeout=60)


def burst(agent: Agent, message: pb.TaskSpec, count: int) -> list[str]:
    """Runs ``count`` copies of a task at once; the status name of each ("ok" for a result)."""
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            run(agent, message)
            outcomes.append("ok")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)

    threads = [threading.Thread(target=attempt) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def long_task_computing(agent: Agent) -> tuple[threading.Thread, list[grpc.RpcError]]:
    """Starts a task long enough to cancel (many steps over the whole dataset); returns once it computes."""
    message = spec(agent, pb.TASK_KIND_DP_LOCAL_TRAINING, local_steps=1000, sampling_rate=1.0, noise_multiplier=20.0)
    errors: list[grpc.RpcError] = []
    computing = threading.Event()

    def attempt() -> None:
        try:
            run_task(agent.stub, message, PARAMETERS, timeout=60, on_progress=lambda f, s: computing.set())
        except grpc.RpcError as exc:
            errors.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    assert computing.wait(timeout=30)
    return thread, errors


def test_dp_gradient_round_trip(agent: Agent) -> None:
    result = run(agent, spec(agent, release_noisy_count=True))
    assert set(result.tensors) == {"w", "b"}
    assert result.tensors["w"].shape == (4,) and result.tensors["b"].shape == ()
    assert set(result.scalars) == {"noisy_count"}
    assert result.progress[0] == (0.0, "computing") and result.progress[-1][0] == 1.0
    # The charge is the composition the accountant computes for this mechanism.
    expected = make_accountant("pld").epsilon([Mechanism.dp_gradient(0.5, 1.0, 1.0)], 1e-5)
    assert result.epsilon_charged == pytest.approx(expected, rel=1e-6) and result.delta == 1e-5
    started = agent.audit("task.started")[-1]
    finished = agent.audit("task.finished")[-1]
    assert started["task_id"] == finished["task_id"] == result.task_id
    assert started["correlation_id"] == "corr-1" and started["hyperparameters"]["clip_norm"] == 1.0
    assert finished["budget_epsilon_spent"] == pytest.approx(expected, rel=1e-6)
    budget = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
    assert budget.epsilon_spent == pytest.approx(expected, rel=1e-6)
    assert (budget.epsilon_limit, budget.tasks_charged, budget.accountant) == (50.0, 1, "pld")


def test_local_training_and_evaluate(agent: Agent) -> None:
    trained = run(agent, spec(agent, pb.TASK_KIND_DP_LOCAL_TRAINING))
    assert set(trained.tensors) == {"w", "b"} and trained.scalars == {}
    assert np.all(np.isfinite(trained.tensors["w"]))
    evaluated = run(agent, spec(agent, pb.TASK_KIND_DP_EVALUATE, clip_norm=None, sampling_rate=1.0))
    assert evaluated.tensors == {} and evaluated.scalars  # noisy metric sums only


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"noise_multiplier": None}, grpc.StatusCode.INVALID_ARGUMENT, "noise_multiplier is required"),
        ({"noise_multiplier": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "noise_multiplier must be a number >= 0.1"),
        # So small the accountant would need hundreds of GiB to price it: refused, not attempted.
        ({"noise_multiplier": 1e-4}, grpc.StatusCode.INVALID_ARGUMENT, "noise_multiplier must be a number >= 0.1"),
        ({"sampling_rate": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "sampling_rate must be in (0, 1]"),
        ({"clip_norm": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "clip_norm must be a positive"),
        ({"dataset": "tiny"}, grpc.StatusCode.FAILED_PRECONDITION, "minimum cohort size of 20"),
        ({"dataset": "nope"}, grpc.StatusCode.NOT_FOUND, "not found"),
    ],
)
def test_refusals(agent: Agent, change: dict[str, Any], status: grpc.StatusCode, text: str) -> None:
    dataset = change.pop("dataset", "cohort")
    with pytest.raises(grpc.RpcError) as refused:
        run(agent, spec(agent, dataset=dataset, **change))
    assert refused.value.code() == status, refused.value.details()
    assert text in (refused.value.details() or "")
    assert agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30).tasks_charged == 0


def test_wrong_parameters_are_refused_before_any_charge(agent: Agent) -> None:
    with pytest.raises(grpc.RpcError) as wrong_shape:
        run(agent, spec(agent), [("w", np.zeros(5, np.float32)), ("b", np.zeros((), np.float32))])
    assert wrong_shape.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters[0]: expected w float32[4]" in (wrong_shape.value.details() or "")
    with pytest.raises(grpc.RpcError) as wrong_dtype:
        run(agent, spec(agent), [("w", np.zeros(4, np.float64)), ("b", np.zeros((), np.float32))])
    assert wrong_dtype.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30).tasks_charged == 0


def test_unknown_coordinator_learns_nothing(agent: Agent, pki: Pki) -> None:
    channel = secure_channel(pki, agent.address, "cn-only")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            run_task(pb_grpc.AgentStub(channel), spec(agent, pb.TASK_KIND_DP_EVALUATE, clip_norm=None), PARAMETERS,
                     timeout=30)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not run dp_evaluate" in (refused.value.details() or "")
    denial = [e for e in agent.audit("rpc.decision") if e["method"] == "RunTask" and not e["allowed"]]
    assert denial[-1]["rule"] == "coordinator.task_kind_not_allowed"


def test_budget_is_enforced_with_remaining_epsilon(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    one_task = make_accountant("pld").epsilon([Mechanism.dp_gradient(0.5, 1.0)], 1e-5)
    two_tasks = make_accountant("pld").epsilon([Mechanism.dp_gradient(0.5, 1.0)] * 2, 1e-5)
    agent = start(tmp_path, pki, publisher, budget=round((one_task + two_tasks) / 2, 6))
    try:
        run(agent, spec(agent))
        with pytest.raises(grpc.RpcError) as refused:
            run(agent, spec(agent))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "remaining" in (refused.value.details() or "")
        assert agent.audit("task.refused")[-1]["rule"] == "budget.exceeded"
    finally:
        agent.channel.close()
        agent.process.stop()


def test_concurrent_tasks_never_overspend(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    two_tasks = make_accountant("pld").epsilon([Mechanism.dp_gradient(0.5, 1.0)] * 2, 1e-5)
    three_tasks = make_accountant("pld").epsilon([Mechanism.dp_gradient(0.5, 1.0)] * 3, 1e-5)
    agent = start(tmp_path, pki, publisher, budget=round((two_tasks + three_tasks) / 2, 6))
    try:
        outcomes = burst(agent, spec(agent), 8)
        assert outcomes.count("ok") <= 2 and len(outcomes) == 8
        assert set(outcomes) <= {"ok", "RESOURCE_EXHAUSTED"}
        budget = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
        assert budget.epsilon_spent <= budget.epsilon_limit
    finally:
        agent.channel.close()
        agent.process.stop()


def test_cancel_task_stops_the_worker(agent: Agent) -> None:
    thread, errors = long_task_computing(agent)
    task_id = agent.audit("task.started")[-1]["task_id"]
    started = time.monotonic()
    assert agent.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=30).cancelled
    thread.join(timeout=30)
    assert time.monotonic() - started < 5
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED
    failed = agent.audit("task.failed")[-1]
    # It had read rows: the cancelled task is charged (when it stopped could depend on them).
    assert failed["task_id"] == task_id and failed["failure"] == "cancelled" and failed["charged"] is True
    assert agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30).tasks_charged == 1
    assert not agent.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=30).cancelled


def test_only_the_owner_may_cancel(agent: Agent, pki: Pki) -> None:
    thread, errors = long_task_computing(agent)
    task_id = agent.audit("task.started")[-1]["task_id"]
    other = secure_channel(pki, agent.address, "cn-only")  # another authorised coordinator
    try:
        assert not pb_grpc.AgentStub(other).CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=30).cancelled
    finally:
        other.close()
    time.sleep(0.3)
    assert thread.is_alive()  # still computing
    assert agent.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=30).cancelled
    thread.join(timeout=30)
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED


def test_oversized_shapes_and_bad_ids_are_refused_at_once(agent: Agent) -> None:
    huge = spec(agent)
    huge.parameters.append(pb.TensorHeader(name="w", dtype=pb.DTYPE_FLOAT32, shape=[1] * 40_000, byte_length=4))
    started = time.monotonic()
    for message, text in (
        (huge, "at most 8 dimensions"),
        (pb.TaskSpec(kind=pb.TASK_KIND_DP_GRADIENT, package_digest="x" * 100_000, dataset_id="cohort"),
         "package_digest must be"),
        (pb.TaskSpec(kind=pb.TASK_KIND_DP_GRADIENT, package_digest=agent.package_digest, dataset_id="A" * 999),
         "dataset_id must be"),
    ):
        call = agent.stub.RunTask(iter([pb.RunTaskRequest(spec=message)]), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in (refused.value.details() or "")
    assert time.monotonic() - started < 5


def test_an_unknown_client_is_refused_before_it_sends_anything(agent: Agent, pki: Pki) -> None:
    unknown = _unknown_identity_channel(pki, agent)
    sent_nothing = threading.Event()

    def nothing() -> Iterator[pb.RunTaskRequest]:
        sent_nothing.wait(30)  # holds the stream open without a single message
        yield from ()

    try:
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.AgentStub(unknown).RunTask(nothing(), timeout=10))
    finally:
        sent_nothing.set()
        unknown.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not authorised" in (refused.value.details() or "")


def _unknown_identity_channel(pki: Pki, agent: Agent) -> grpc.Channel:
    from agent.identity.certificates import CertificateAuthority

    ca = CertificateAuthority.load(pki.path("ca.crt"), pki.path("ca.key"))
    directory = agent.directory / "stranger"
    directory.mkdir(exist_ok=True)
    ca.issue_client("stranger", uri="spiffe://pharma.example/coordinator/not-in-policy").write(
        directory / "stranger.crt", directory / "stranger.key"
    )
    return grpc.secure_channel(
        agent.address,
        grpc.ssl_channel_credentials(
            pki.path("ca.crt").read_bytes(),
            (directory / "stranger.key").read_bytes(),
            (directory / "stranger.crt").read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def test_concurrency_limit_holds_under_a_burst(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    agent = start(tmp_path, pki, publisher, max_concurrent=2)
    message = spec(agent, pb.TASK_KIND_DP_LOCAL_TRAINING, local_steps=30, sampling_rate=1.0, noise_multiplier=20.0)
    try:
        outcomes = burst(agent, message, 8)
        assert set(outcomes) <= {"ok", "RESOURCE_EXHAUSTED"} and "ok" in outcomes
        # From the audit trail: never more than 2 tasks between started and finished.
        events = sorted(
            [(e["seq"], +1) for e in agent.audit("task.started")]
            + [(e["seq"], -1) for e in agent.audit("task.finished") + agent.audit("task.failed")]
        )
        running = peak = 0
        for _, change in events:
            running += change
            peak = max(peak, running)
        assert peak <= 2
    finally:
        agent.channel.close()
        agent.process.stop()


def test_rate_limit_holds_under_a_burst(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    agent = start(tmp_path, pki, publisher, max_concurrent=16, extra_coordinator="max_tasks_per_hour = 3")
    try:
        errors: list[grpc.RpcError] = []
        start_together = threading.Barrier(12)

        def attempt() -> None:
            start_together.wait()
            try:
                run(agent, spec(agent))
            except grpc.RpcError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=attempt) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(errors) == 9
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("at most 3 tasks per hour" in (e.details() or "") for e in errors)
        assert len(agent.audit("task.started")) == 3
    finally:
        agent.channel.close()
        agent.process.stop()
