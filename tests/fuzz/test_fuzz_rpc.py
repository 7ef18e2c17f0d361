"""Property-based fuzzing of every RPC against a real agent (mTLS, worker processes, SQLite).

Random and boundary values in every request field; for each: a deliberate
status (never UNKNOWN or INTERNAL), a message a person can read, no state
change on a refusal, and the agent still serving afterwards.
Profiles: `ci` (default, fast) and `soak` (HYPOTHESIS_PROFILE=soak, `make soak`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api.edge_agent.v1 import agent_pb2 as pb
from tests.conftest import Pki
from tests.packages.package_builders import new_key
from tests.tasks.test_run_task_rpc import PARAMETERS, Agent, run, spec, start

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Statuses the agent answers on purpose. UNKNOWN and INTERNAL mean an unhandled
# exception; UNAVAILABLE would mean it fell over.
DELIBERATE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}

texts = st.one_of(
    st.text(max_size=40),
    st.text(max_size=600),
    st.sampled_from(["", "cohort", "tiny", "../../etc/passwd", "cohort\x00", "a" * 129, "sha256:" + "0" * 64]),
)
floats = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e-300, 1.0, 1e300])
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Agent]:
    started = start(tmp_path_factory.mktemp("fuzz"), pki, new_key(), budget=100.0)
    yield started
    started.channel.close()
    started.process.stop()


def budget(agent: Agent) -> tuple[float, float, int]:
    b = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=10)
    return b.epsilon_spent, b.epsilon_reserved, b.tasks_charged


def packages(agent: Agent) -> list[str]:
    return sorted(p.digest for p in agent.stub.ListPackages(pb.ListPackagesRequest(), timeout=10).packages)


def deliberate(exc: grpc.RpcError) -> None:
    assert isinstance(exc, grpc.Call)
    assert exc.code() in DELIBERATE, f"{exc.code()}: {exc.details()}"
    assert exc.details(), "a refusal without a message"


@given(dataset_id=texts, digest=texts)
def test_unary_rpcs(agent: Agent, dataset_id: str, digest: str) -> None:
    calls = [
        lambda: agent.stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id), timeout=10),
        lambda: agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id=dataset_id), timeout=10),
        lambda: agent.stub.GetPackage(pb.GetPackageRequest(digest=digest), timeout=10),
        lambda: agent.stub.CancelTask(pb.CancelTaskRequest(task_id=digest), timeout=10),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as exc:
            deliberate(exc)


headers = st.builds(
    pb.TensorHeader,
    name=st.one_of(st.sampled_from(["w", "b"]), st.text(max_size=80)),
    dtype=st.integers(0, 40),
    shape=st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**62)), max_size=5),
    byte_length=st.one_of(st.integers(0, 64), st.integers(0, 2**63 - 1)),
    sha256=st.one_of(st.just(b""), st.binary(min_size=0, max_size=40)),
)
chunks = st.lists(
    st.builds(
        pb.TensorChunk,
        tensor_index=st.integers(0, 2**32 - 1),
        offset=st.one_of(st.integers(0, 64), st.integers(0, 2**63 - 1)),
        data=st.binary(max_size=64),
    ),
    max_size=4,
)


@st.composite
def task_specs(draw: st.DrawFn, real_digest: str) -> pb.TaskSpec:
    hyper: dict[str, Any] = {
        "clip_norm": draw(floats),
        "noise_multiplier": draw(floats),
        "sampling_rate": draw(floats),
        "learning_rate": draw(floats),
        "local_steps": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        "release_noisy_count": draw(st.booleans()),
    }
    return pb.TaskSpec(
        kind=draw(st.sampled_from([0, 1, 2, 3, 4, 99, 2**31 - 1])),  # type: ignore[arg-type]
        package_digest=draw(st.one_of(st.just(real_digest), texts)),
        dataset_id=draw(texts),
        hyperparameters=pb.DPHyperparameters(**{k: v for k, v in hyper.items() if v is not None}),
        parameters=draw(st.lists(headers, max_size=4)),
        run_id=draw(texts),
        round=draw(st.integers(0, 2**32 - 1)),
        correlation_id=draw(texts),
        purpose=draw(texts),
    )


@given(data=st.data())
def test_run_task(agent: Agent, data: st.DataObject) -> None:
    message = data.draw(task_specs(agent.package_digest))
    parts = data.draw(chunks)
    before = budget(agent)
    requests = [pb.RunTaskRequest(spec=message)] + [pb.RunTaskRequest(parameter_chunk=c) for c in parts]
    try:
        events = list(agent.stub.RunTask(iter(requests), timeout=30))
    except grpc.RpcError as exc:
        deliberate(exc)
        assert budget(agent) == before, "a refused task changed the ledger"
    else:
        assert events and events[-1].WhichOneof("event") == "completed"


@given(size=st.integers(-1, 2**63 - 1), sha=st.binary(max_size=40), parts=st.lists(st.binary(max_size=256), max_size=5))
def test_upload_package(agent: Agent, size: int, sha: bytes, parts: list[bytes]) -> None:
    before = packages(agent)
    header = pb.PackageUploadHeader(size_bytes=max(size, 0), sha256=sha)
    if size >= 0 and sha == b"":
        # Sometimes a header that matches the bytes, so the archive checks are reached.
        body = b"".join(parts)
        header = pb.PackageUploadHeader(size_bytes=len(body), sha256=hashlib.sha256(body).digest())
    requests = [pb.UploadPackageRequest(header=header)] + [pb.UploadPackageRequest(chunk=p) for p in parts]
    try:
        agent.stub.UploadPackage(iter(requests), timeout=30)
    except grpc.RpcError as exc:
        deliberate(exc)
    assert packages(agent) == before, "random bytes became a stored package"


def test_the_agent_still_serves_and_computes_after_the_fuzzing(agent: Agent, pki: Pki) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(agent.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    result = run(agent, spec(agent), PARAMETERS)
    assert set(result.tensors) == {"w", "b"}
    assert Path(agent.directory).exists()
