"""RunTask transport on a real agent: parameters reused across a run's tasks, stalled and oversized streams.

Every agent here is the real daemon on loopback with mutual TLS; the timing
windows only separate "cut off after the 1 s idle period" from "never", with
generous margins.
"""

from __future__ import annotations

import hashlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.config import ConfigError, parse_config
from agent.identity.agent_key import AgentKey
from agent.tasks.tensors import to_wire
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.tasks import ParameterSet, TaskCallError, TaskRun, run_task
from edge_sponsor.publisher.zoo.mlp import build_mlp_classifier
from tests.conftest import Pki, start_in_process
from tests.packages.package_builders import NUM_FEATURES, good_package, new_key
from tests.tasks.test_run_task_rpc import (
    PARAMETERS,
    ROWS,
    Agent,
    cohort_config,
    cohort_table,
    secure_channel,
    spec,
)

# One hidden layer of this width: about 460 KB of parameters, and results in chunks larger
# than a 64 KiB flow-control window.
MLP_WIDTH = 16384
MLP = build_mlp_classifier(NUM_FEATURES, hidden=(MLP_WIDTH,))


@pytest.fixture(scope="module")
def publisher() -> AgentKey:
    return new_key()


@dataclass
class Started:
    agent: Agent
    packages: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        self.agent.channel.close()
        self.agent.process.stop()


def start(directory: Path, pki: Pki, publisher: AgentKey, server: str = "", **policy: Any) -> Started:
    """An agent with the cohort datasets, ``server`` lines added to its [server] table, and three packages."""
    config = cohort_config(directory, pki, publisher, **policy)
    # The MLP classifier needs an integer class label beside the float outcome.
    table = cohort_table(ROWS)
    labels = pa.array(np.asarray(table["outcome"]).astype(np.int64))
    pq.write_table(table.append_column("label", labels), directory / "data" / "cohort.parquet")
    config.write_text(config.read_text().replace("[server]\n", "[server]\n" + server, 1))
    process = start_in_process(config)
    address = f"127.0.0.1:{process.port}"
    packages: dict[str, str] = {}
    with AgentClient(address, pki.credentials(), server_name="localhost", timeout=30) as client:
        packages["logistic"] = client.upload_package(good_package(publisher)).digest
        packages["logistic-1.0.1"] = client.upload_package(good_package(publisher, version="1.0.1")).digest
        mlp = good_package(publisher, version="2.0.0", model=MLP, labels=("label",))
        packages["mlp"] = client.upload_package(mlp).digest
    agent = Agent(directory, process, address, packages["logistic"], secure_channel(pki, address))
    return Started(agent, packages)


def quiet(agent: Agent, kind: int = pb.TASK_KIND_DP_GRADIENT, *, run_id: str = "run-1", **changes: Any) -> pb.TaskSpec:
    """A task spec with a large σ: many tasks fit in the test budget."""
    hyper: dict[str, Any] = {"noise_multiplier": 8.0}
    if kind == pb.TASK_KIND_DP_EVALUATE:
        hyper |= {"clip_norm": None, "sampling_rate": 1.0}
    message = spec(agent, kind, **hyper)
    message.run_id = run_id
    for name, value in changes.items():
        setattr(message, name, value)
    return message


def mlp_parameters(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(p.name, rng.normal(0, 0.01, p.shape).astype(np.float32)) for p in MLP.parameters]


class ChunkCounter(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Counts the parameter chunks and bytes a client really sends."""

    def __init__(self) -> None:
        self.chunks = 0
        self.bytes = 0

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Iterator[pb.RunTaskRequest]
    ) -> Any:
        def counted() -> Iterator[pb.RunTaskRequest]:
            for request in requests:
                if request.WhichOneof("part") == "parameter_chunk":
                    self.chunks += 1
                    self.bytes += len(request.parameter_chunk.data)
                yield request

        return continuation(details, counted())

    def take(self) -> tuple[int, int]:
        counted = (self.chunks, self.bytes)
        self.chunks = self.bytes = 0
        return counted


class RawTask:
    """One RunTask call driven by hand: the test decides what is sent, and when."""

    def __init__(self, stub: pb_grpc.AgentStub, message: pb.TaskSpec, timeout: float = 60) -> None:
        self._outbox: queue.Queue[pb.RunTaskRequest | None] = queue.Queue()
        self._outbox.put(pb.RunTaskRequest(spec=message))
        self.call = stub.RunTask(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[pb.RunTaskRequest]:
        while (item := self._outbox.get()) is not None:
            yield item

    def send(self, index: int, offset: int, data: bytes) -> None:
        chunk = pb.TensorChunk(tensor_index=index, offset=offset, data=data)
        self._outbox.put(pb.RunTaskRequest(parameter_chunk=chunk))

    def close(self) -> None:
        self._outbox.put(None)

    def next_event(self) -> pb.TaskEvent:
        return next(self.call)

    def rest(self) -> list[pb.TaskEvent]:
        return list(self.call)

    def cancel(self) -> None:
        self.close()
        self.call.cancel()


def with_headers(message: pb.TaskSpec, parameters: list[tuple[str, np.ndarray]], hashed: bool = True) -> pb.TaskSpec:
    message = pb.TaskSpec.FromString(message.SerializeToString())
    for header in ParameterSet.of(parameters).tensors:
        copy = pb.TensorHeader.FromString(header.header.SerializeToString())
        if not hashed:
            copy.sha256 = b""
        message.parameters.append(copy)
    return message


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def budget(agent: Agent) -> pb.Budget:
    return agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)


# ------------------------------------------------------------------ parameters held per run


@pytest.fixture
def started(tmp_path: Path, pki: Pki, publisher: AgentKey) -> Iterator[Started]:
    agent = start(tmp_path, pki, publisher)
    yield agent
    agent.stop()


def test_a_run_sends_each_parameter_value_once(started: Started, pki: Pki) -> None:
    agent = started.agent
    counter = ChunkCounter()
    stub = pb_grpc.AgentStub(grpc.intercept_channel(agent.channel, counter))

    def task(message: pb.TaskSpec, parameters: list[tuple[str, Any]] = PARAMETERS) -> TaskRun:
        return run_task(stub, message, parameters, timeout=60)

    first = task(quiet(agent))
    assert first.parameters_sent == ("w", "b") and counter.take() == (2, 20)
    again = task(quiet(agent, round=2))
    assert again.parameters_sent == () and counter.take() == (0, 0)
    assert set(again.tensors) == {"w", "b"}  # computed on the parameters the agent held
    # The evaluation of the same model shares them (same run, same package).
    evaluated = task(quiet(agent, pb.TASK_KIND_DP_EVALUATE))
    assert evaluated.parameters_sent == () and counter.take() == (0, 0)
    # One tensor changed (the other frozen): only that one travels.
    changed = [("w", np.arange(4, dtype=np.float32)), PARAMETERS[1]]
    assert task(quiet(agent, round=3), changed).parameters_sent == ("w",)
    assert counter.take() == (1, 16)
    # Another run, or another package in the same run, starts from nothing.
    assert task(quiet(agent, run_id="run-2"), changed).parameters_sent == ("w", "b")
    other_package = quiet(agent, package_digest=started.packages["logistic-1.0.1"])
    assert task(other_package, changed).parameters_sent == ("w", "b")
    # No run id: nothing is kept.
    assert task(quiet(agent, run_id=""), changed).parameters_sent == ("w", "b")
    assert task(quiet(agent, run_id=""), changed).parameters_sent == ("w", "b")
    assert counter.take()[0] == 8


def test_another_coordinator_cannot_use_a_runs_parameters(started: Started, pki: Pki) -> None:
    agent = started.agent
    run_task(agent.stub, quiet(agent), PARAMETERS, timeout=60)
    other = secure_channel(pki, agent.address, "cn-only")  # allowed dp_gradient on cohort, same run id
    try:
        result = run_task(pb_grpc.AgentStub(other), quiet(agent), PARAMETERS, timeout=60)
    finally:
        other.close()
    assert result.parameters_sent == ("w", "b")


def test_a_tensor_declared_without_sha256_is_always_sent(started: Started) -> None:
    agent = started.agent
    for round_number in (1, 2):
        task = RawTask(agent.stub, with_headers(quiet(agent, round=round_number), PARAMETERS, hashed=False))
        try:
            accepted = task.next_event().accepted
            assert list(accepted.parameters_needed) == [0, 1]
            for index, (_, array) in enumerate(PARAMETERS):
                task.send(index, 0, bytes(to_wire(array, "float32")))
            task.close()
            assert task.rest()[-1].WhichOneof("event") == "completed"
        finally:
            task.cancel()


def test_the_least_recently_used_run_is_evicted(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    # 1 MiB holds two runs of this model's ~460 KB parameters, not three.
    started = start(tmp_path, pki, publisher, server="parameter_cache_mb = 1\n")
    agent = started.agent
    parameters = mlp_parameters()

    def sent(run_id: str) -> tuple[str, ...]:
        message = quiet(agent, pb.TASK_KIND_DP_EVALUATE, run_id=run_id, package_digest=started.packages["mlp"])
        return run_task(agent.stub, message, parameters, timeout=120).parameters_sent

    everything = tuple(p.name for p in MLP.parameters)
    try:
        assert [sent("a"), sent("b"), sent("c")] == [everything] * 3
        assert sent("b") == ()  # still held; now the most recently used
        assert sent("a") == everything  # evicted when "c" came
    finally:
        started.stop()


# ------------------------------------------------------------------ stalls, agent side


def test_a_slow_upload_that_keeps_moving_outlasts_the_idle_period(
    tmp_path: Path, pki: Pki, publisher: AgentKey
) -> None:
    started = start(tmp_path, pki, publisher, server="stream_idle_seconds = 1\n")
    agent = started.agent
    task = RawTask(agent.stub, with_headers(quiet(agent), PARAMETERS))
    try:
        assert list(task.next_event().accepted.parameters_needed) == [0, 1]
        began = time.monotonic()
        w = bytes(to_wire(PARAMETERS[0][1], "float32"))
        for offset in range(0, len(w), 4):  # one 4-byte chunk every 0.3 s
            task.send(0, offset, w[offset : offset + 4])
            time.sleep(0.3)
        task.send(1, 0, bytes(to_wire(PARAMETERS[1][1], "float32")))
        time.sleep(0.3)
        task.close()
        assert time.monotonic() - began > 1.0  # longer than the idle period in total
        events = task.rest()
        assert events[-1].WhichOneof("event") == "completed"
    finally:
        task.cancel()
        started.stop()


def test_a_stalled_upload_is_cut_off_with_a_reason_and_released(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    started = start(tmp_path, pki, publisher, server="stream_idle_seconds = 1\n")
    agent = started.agent
    task = RawTask(agent.stub, with_headers(quiet(agent), PARAMETERS))
    try:
        task.next_event()
        task.send(0, 0, b"\0" * 4)  # then nothing more
        with pytest.raises(grpc.RpcError) as cut:
            task.rest()
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no data for 1 s during the parameter upload" in (cut.value.details() or "")
        assert wait_for(lambda: bool(agent.audit("task.failed")))
        failed = agent.audit("task.failed")[-1]
        assert failed["failure"] == "stalled" and failed["charged"] is False
        assert "no data for 1 s" in failed["reason"]
        assert (budget(agent).tasks_charged, budget(agent).epsilon_reserved) == (0, 0.0)
        assert run_task(agent.stub, quiet(agent), PARAMETERS, timeout=60).task_id  # still serving
    finally:
        task.cancel()
        started.stop()


def test_a_coordinator_that_stops_reading_the_result_does_not_hold_a_server_thread(
    tmp_path: Path, pki: Pki, publisher: AgentKey
) -> None:
    # One server thread: while the stalled call held it, nothing else could be served.
    started = start(tmp_path, pki, publisher, server="stream_idle_seconds = 1\nmax_workers = 1\n")
    agent = started.agent
    credentials = pki.credentials()
    # Without BDP probing the flow-control window stays at 64 KiB: the agent's first
    # result chunk (256 KiB) cannot leave while this client does not read.
    narrow = grpc.secure_channel(
        agent.address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.http2.bdp_probe", 0)],
    )
    message = with_headers(quiet(agent, package_digest=started.packages["mlp"]), mlp_parameters())
    task = RawTask(pb_grpc.AgentStub(narrow), message)
    try:
        assert list(task.next_event().accepted.parameters_needed) == [0, 1, 2, 3]
        for index, (_, array) in enumerate(mlp_parameters()):
            task.send(index, 0, bytes(to_wire(array, "float32")))
        task.close()
        while task.next_event().WhichOneof("event") != "result_header":
            pass
        # This client now stops reading. The agent cuts the call off after 1 s, which frees its only thread.
        with AgentClient(agent.address, credentials, server_name="localhost", timeout=30) as client:
            assert client.get_info().agent_id == "hospital-test"
        with pytest.raises(grpc.RpcError) as cut:
            task.rest()
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no data for 1 s: the result was not read" in (cut.value.details() or "")
        assert budget(agent).tasks_charged == 1  # the result existed: it was paid for
    finally:
        task.cancel()
        narrow.close()
        started.stop()


# ------------------------------------------------------------------ message size limits


def test_a_message_over_the_agents_limit_is_refused_and_the_agent_goes_on(
    tmp_path: Path, pki: Pki, publisher: AgentKey
) -> None:
    started = start(tmp_path, pki, publisher, server=f"max_message_bytes = {2 * 1024 * 1024}\n")
    agent = started.agent
    task = RawTask(agent.stub, with_headers(quiet(agent), PARAMETERS))
    try:
        task.next_event()
        task.send(0, 0, b"\0" * (3 * 1024 * 1024))
        with pytest.raises(grpc.RpcError) as refused:
            task.rest()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max (3145" in (refused.value.details() or "")
        assert wait_for(lambda: bool(agent.audit("task.failed")))
        assert agent.audit("task.failed")[-1]["charged"] is False
        assert budget(agent).epsilon_reserved == 0.0
        assert run_task(agent.stub, quiet(agent, run_id="after"), PARAMETERS, timeout=60).parameters_sent == ("w", "b")
    finally:
        task.cancel()
        started.stop()


def test_a_coordinator_with_a_small_receive_limit_gets_a_clear_error(started: Started, pki: Pki) -> None:
    agent = started.agent
    credentials = pki.credentials()
    small = grpc.secure_channel(
        agent.address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.max_receive_message_length", 64 * 1024)],
    )
    message = quiet(agent, package_digest=started.packages["mlp"])
    try:
        with pytest.raises(TaskCallError) as refused:
            run_task(pb_grpc.AgentStub(small), message, mlp_parameters(), timeout=120)
    finally:
        small.close()
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Received message larger than max" in str(refused.value)
    assert "this coordinator's own message size limit (max_message_bytes)" in str(refused.value)
    assert "at least 2 MiB" in str(refused.value)
    # The typed client says the same about its own send limit.
    with AgentClient(
        agent.address, credentials, server_name="localhost", timeout=60, max_message_bytes=64 * 1024
    ) as client, pytest.raises(AgentRpcError) as too_small:
        client.run_task(quiet(agent, run_id="small-client", package_digest=started.packages["mlp"]), mlp_parameters())
    assert too_small.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Sent message larger than max" in too_small.value.details, too_small.value.details
    assert "at least 2 MiB" in too_small.value.details
    assert run_task(agent.stub, quiet(agent), PARAMETERS, timeout=60).task_id  # the agent goes on


# ------------------------------------------------------------------ configuration

CONFIG = """
[agent]
id = "a"
state_dir = "/var/lib/edge-agent"

[tls]
cert_file = "a.crt"
key_file = "a.key"
client_ca_file = "ca.crt"

[governance]
policy_file = "policy.toml"

[server]
"""


def test_transport_settings_have_defaults_and_are_checked() -> None:
    source = Path("/etc/edge-agent/agent.toml")
    server = parse_config(CONFIG, source).server
    assert (server.stream_idle_seconds, server.parameter_cache_mb, server.parameter_cache_idle_seconds) == (
        30.0,
        2048,
        1800.0,
    )
    assert (server.warm_workers, server.warm_worker_idle_seconds) == (4, 300.0)
    changed = parse_config(
        CONFIG + "stream_idle_seconds = 5\nparameter_cache_mb = 0\nparameter_cache_idle_seconds = 60\n"
        "warm_workers = 0\nwarm_worker_idle_seconds = 10\n",
        source,
    ).server
    assert (changed.warm_workers, changed.warm_worker_idle_seconds) == (0, 10.0)
    assert (changed.stream_idle_seconds, changed.parameter_cache_mb, changed.parameter_cache_idle_seconds) == (
        5.0,
        0,
        60.0,
    )
    for line, key, problem in (
        ("stream_idle_seconds = 0.5", "server.stream_idle_seconds", "between 1.0 and 86400.0"),
        ("stream_idle_seconds = \"30\"", "server.stream_idle_seconds", "a number"),
        ("parameter_cache_mb = -1", "server.parameter_cache_mb", "between 0 and"),
        ("parameter_cache_idle_seconds = 0", "server.parameter_cache_idle_seconds", "between 1.0 and"),
        ("max_message_bytes = 65536", "server.max_message_bytes", "at least 2097152 (2 MiB): tensors"),
        ("warm_workers = -1", "server.warm_workers", "between 0 and 64"),
        ("warm_worker_idle_seconds = 0", "server.warm_worker_idle_seconds", "between 1.0 and"),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_config(CONFIG + line + "\n", source)
        assert refused.value.key == key and problem in str(refused.value)
        assert str(refused.value).startswith(f"{source}: {key}: ")


def test_sha256_is_declared_for_every_tensor() -> None:
    prepared = ParameterSet.of(PARAMETERS)
    for (name, array), tensor in zip(PARAMETERS, prepared.tensors, strict=True):
        assert tensor.header.name == name
        assert tensor.header.sha256 == hashlib.sha256(array.astype("<f4").tobytes()).digest()
