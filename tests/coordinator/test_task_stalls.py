"""Progress-aware deadlines on the coordinator: a stalled agent is cut off, a slow but moving one is not.

The agent here is a scripted gRPC peer (tests/coordinator/peers.py); the
coordinator is the product's AgentClient. Windows are generous: they only
separate "cut off after the 1 s stall limit" from "never".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.config.errors import ConfigError
from agent.tasks.tensors import TensorDecl, chunk_views, to_wire
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.federation import parse_federation
from edge_sponsor.coordinator.tasks import TaskRun
from tests.conftest import Pki
from tests.coordinator.peers import MIB, ScriptedAgent, serving

SPEC = pb.TaskSpec(
    kind=pb.TASK_KIND_DP_GRADIENT,
    package_digest="sha256:" + "0" * 64,
    dataset_id="cohort",
    hyperparameters=pb.DPHyperparameters(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5),
    run_id="run-1",
)
RESULT = np.arange(160_000, dtype=np.float32)  # 640 KB
RESULT_DECL = TensorDecl("w", "float32", RESULT.shape)


def accepted(needed: list[int] | None = None) -> pb.TaskEvent:
    return pb.TaskEvent(accepted=pb.TaskAccepted(task_id="t-1", parameters_needed=needed or []))


def progress(fraction: float, stage: str = "computing") -> pb.TaskEvent:
    return pb.TaskEvent(progress=pb.TaskProgress(fraction=fraction, stage=stage))


def result_header() -> pb.TaskEvent:
    header = pb.TensorHeader(name="w", dtype=pb.DTYPE_FLOAT32, shape=[RESULT.size], byte_length=RESULT.nbytes)
    return pb.TaskEvent(result_header=pb.TaskResultHeader(tensors=[header]))


def result_chunks(chunk_bytes: int) -> Iterator[pb.TaskEvent]:
    for offset, data in chunk_views(to_wire(RESULT, "float32"), chunk_bytes):
        yield pb.TaskEvent(result_chunk=pb.TensorChunk(tensor_index=0, offset=offset, data=bytes(data)))


COMPLETED = pb.TaskEvent(completed=pb.TaskCompleted(task_id="t-1", epsilon_charged=0.1, delta=1e-5))


def run(address: str, pki: Pki, parameters: list[tuple[str, np.ndarray]] | None = None, **limits: float) -> TaskRun:
    with AgentClient(address, pki.credentials(), server_name="localhost") as client:
        return client.run_task(SPEC, parameters or [], expected=[RESULT_DECL], **limits)


def cut_off(address: str, pki: Pki, parameters: list[tuple[str, np.ndarray]] | None = None, **limits: float) -> str:
    """The details of the DEADLINE_EXCEEDED the coordinator reports; the run must end within a generous window."""
    began = time.monotonic()
    with pytest.raises(AgentRpcError) as failed:
        run(address, pki, parameters, **limits)
    assert time.monotonic() - began < 20
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    return failed.value.details


def test_an_agent_that_stops_sending_mid_result_is_cut_off(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        yield accepted()
        yield progress(0.0)
        yield result_header()
        yield next(result_chunks(64 * 1024))
        peer.hold(context)

    peer = ScriptedAgent(script)
    with serving(peer, pki) as address:
        details = cut_off(address, pki, stall_seconds=1.0)
        assert "no data for 1 s" in details and "the coordinator cancelled the task" in details
        assert peer.cut_off.wait(timeout=10)  # the agent saw the call end: nothing left hanging


def test_an_agent_that_stops_taking_parameters_is_cut_off(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        next(requests)
        yield accepted([0])
        peer.hold(context)  # never reads the upload: flow control stops the coordinator's sends

    peer = ScriptedAgent(script)
    with serving(peer, pki) as address:
        details = cut_off(address, pki, [("w", np.zeros(4 * MIB, np.float32))], stall_seconds=1.0)
        assert "no data for 1 s" in details and "no parameter chunk was taken" in details


def test_a_slow_result_that_keeps_moving_is_not_cut_off(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        yield accepted()
        yield result_header()
        for chunk in result_chunks(64 * 1024):  # ten chunks, 0.3 s apart: 3 s in all
            time.sleep(0.3)
            yield chunk
        yield COMPLETED

    with serving(ScriptedAgent(script), pki) as address:
        began = time.monotonic()
        result = run(address, pki, stall_seconds=1.0)
        assert time.monotonic() - began > 2.0  # longer than the stall limit in total
    np.testing.assert_array_equal(result.tensors["w"], RESULT)


def test_a_long_computation_that_reports_progress_is_not_cut_off(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        yield accepted()
        for step in range(10):
            time.sleep(0.3)
            yield progress(step / 10)
        yield result_header()
        yield from result_chunks(1 * MIB)
        yield COMPLETED

    with serving(ScriptedAgent(script), pki) as address:
        result = run(address, pki, stall_seconds=1.0)
    assert len(result.progress) == 10
    np.testing.assert_array_equal(result.tensors["w"], RESULT)


def test_the_overall_cap_still_ends_a_task_that_keeps_moving(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        yield accepted()
        while context.is_active():
            time.sleep(0.2)
            yield progress(0.5)

    with serving(ScriptedAgent(script), pki) as address:
        details = cut_off(address, pki, stall_seconds=1.0, timeout=2.0)
    assert "did not finish within its overall deadline of 2 s" in details


def test_an_agent_asking_for_parameters_it_was_not_offered_is_a_protocol_error(pki: Pki) -> None:
    def script(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        next(requests)
        yield accepted([0, 7])
        peer.hold(context, seconds=10)

    peer = ScriptedAgent(script)
    with serving(peer, pki) as address, pytest.raises(AgentRpcError) as failed:
        run(address, pki, [("w", np.zeros(4, np.float32))], stall_seconds=5.0)
    assert failed.value.code == grpc.StatusCode.INTERNAL
    assert "asked for parameters [0, 7] of 1" in failed.value.details


FEDERATION = """
[federation]
name = "study"
ca_file = "ca.crt"
cert_file = "c.crt"
key_file = "c.key"

[[agents]]
name = "a"
address = "10.0.0.1:7443"
dataset = "d"

[training]
"""


def test_the_federation_file_sets_stall_and_overall_limits(tmp_path: Path) -> None:
    source = tmp_path / "federation.toml"
    plan = parse_federation(FEDERATION, source).training
    assert (plan.task_stall_seconds, plan.task_deadline_seconds) == (60.0, None)
    plan = parse_federation(FEDERATION + "task_stall_seconds = 300\ntask_deadline_seconds = 7200\n", source).training
    assert (plan.task_stall_seconds, plan.task_deadline_seconds) == (300.0, 7200.0)
    for line, key, problem in (
        ("task_stall_seconds = 5", "training.task_stall_seconds", "must be between 15.0 and 86400.0"),
        ("task_deadline_seconds = 0", "training.task_deadline_seconds", "must be between 0.1 and"),
        ("stall_seconds = 30", "training.stall_seconds", "unknown key"),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_federation(FEDERATION + line + "\n", source)
        assert refused.value.key == key and problem in str(refused.value)
