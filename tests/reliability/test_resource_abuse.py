"""Resource abuse through signed, valid packages and requests: a graph that allocates a
huge tensor, one that computes for far too long, an enormous parameter tensor. Each is
stopped with RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED (or refused up front), the daemon's
health check keeps answering within a second while the worker is killed, and the agent
serves the next task normally."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.tasks import run_task
from edge_sponsor.publisher.zoo.graph import FLOAT, GraphBuilder
from tests.conftest import Pki
from tests.packages.package_builders import new_key, with_grad
from tests.tasks.test_run_task_rpc import PARAMETERS, Agent, policy_text, run, spec, start


def hostile_grad(body: str) -> GraphBuilder:
    """A logistic-shaped grad graph (w[4], b, x[4], y) whose outputs all depend on ``body``."""
    g = GraphBuilder(f"hostile_{body}", "resource abuse")
    w = g.add_input("w", FLOAT, [4])
    g.add_input("b", FLOAT, [])
    x = g.add_input("x", FLOAT, [4])
    g.add_input("y", FLOAT, [])
    if body == "memory":
        # 8000 x 8000 x 4 floats = 1 GiB for every row.
        big = g.op("Expand", x, g.int64s([8000, 8000, 4]))
        scalar = g.op("ReduceSum", big, keepdims=0)
    else:
        # Two 2000 x 2000 matrix products per row: seconds of CPU for every row.
        tall = g.op("Expand", x, g.int64s([2000, 4]))
        square = g.op("MatMul", tall, g.op("Transpose", tall, perm=[1, 0]))
        scalar = g.op("ReduceSum", g.op("MatMul", square, square), keepdims=0)
    zero = g.op("Mul", scalar, g.constant(0.0))
    g.add_output(g.op("Add", w, zero), "grad_w", FLOAT, [4])
    g.add_output(g.op("Identity", zero), "grad_b", FLOAT, [])
    g.add_output(g.op("Identity", zero), "loss", FLOAT, [])
    return g


@pytest.fixture(scope="module")
def publisher() -> AgentKey:
    return new_key()


LIMITS = {"memory": "task_seconds = 60\ntask_memory_mb = 2048", "cpu": "task_seconds = 6", "none": "task_seconds = 60"}


@pytest.fixture
def agent(
    tmp_path: Path, pki: Pki, publisher: AgentKey, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Agent]:
    original = policy_text
    limits = LIMITS[getattr(request, "param", "none")]

    def tight(key: AgentKey, **options: object) -> str:
        return original(key, **options).replace("task_seconds = 60", limits)  # type: ignore[arg-type]

    monkeypatch.setattr("tests.tasks.test_run_task_rpc.policy_text", tight)
    started = start(tmp_path, pki, publisher)
    yield started
    started.channel.close()
    started.process.stop()


def health_while(agent: Agent, work: threading.Thread) -> list[float]:
    stub = health_pb2_grpc.HealthStub(agent.channel)
    latencies: list[float] = []
    while work.is_alive():
        began = time.perf_counter()
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        latencies.append(time.perf_counter() - began)
        time.sleep(0.05)
    return latencies


@pytest.mark.parametrize(
    ("agent", "body", "codes"),
    [
        ("memory", "memory", {grpc.StatusCode.RESOURCE_EXHAUSTED}),
        ("cpu", "cpu", {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}),
    ],
    indirect=["agent"],
)
def test_a_hostile_graph_is_stopped_and_the_daemon_stays_responsive(
    agent: Agent, pki: Pki, publisher: AgentKey, body: str, codes: set[grpc.StatusCode]
) -> None:
    archive = with_grad(publisher, hostile_grad(body).to_model(), name=f"acme/hostile-{body}")
    with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as client:
        digest = client.upload_package(archive).digest
    message = spec(agent)
    message.package_digest = digest
    outcome: list[grpc.RpcError] = []

    def attempt() -> None:
        try:
            run_task(agent.stub, message, PARAMETERS, timeout=60)
        except grpc.RpcError as exc:
            outcome.append(exc)

    work = threading.Thread(target=attempt)
    work.start()
    latencies = health_while(agent, work)
    work.join()
    assert outcome, "the hostile task returned a result"
    error = outcome[0]
    assert isinstance(error, grpc.Call)
    assert error.code() in codes, (error.code(), error.details())
    assert max(latencies) < 1.0, f"health took {max(latencies):.2f} s while the worker was being stopped"
    # The next ordinary task runs as usual.
    assert set(run(agent, spec(agent)).tensors) == {"w", "b"}


def test_an_enormous_parameter_tensor_is_refused_before_any_byte_is_read(agent: Agent) -> None:
    message = spec(agent)
    message.parameters.extend(
        [
            pb.TensorHeader(name="w", dtype=pb.DTYPE_FLOAT32, shape=[2**20, 2**20], byte_length=4 * 2**40),
            pb.TensorHeader(name="b", dtype=pb.DTYPE_FLOAT32, shape=[], byte_length=4),
        ]
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(agent.stub.RunTask(iter([pb.RunTaskRequest(spec=message)]), timeout=30))
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes is more than the agent accepts" in (error.details() or "")
