"""Draining and stopping: health watches, the grace bound, a second signal, and how calls end.

In-process agents where a hook is needed, real `edge-agent serve` processes
where the process lifetime is what is tested.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.audit.log import AuditLog
from agent.audit.verify import verify_log
from agent.config import load_config
from agent.governance.in_force import PolicyInForce
from agent.governance.loader import load_policy
from agent.identity.agent_key import load_key_file
from agent.observability.logging import _processors
from agent.server.assembly import assemble_service
from agent.server.daemon import AgentDaemon, max_health_watches
from agent.server.tls import load_server_tls
from edge_sponsor.coordinator.client import AgentRpcError
from tests.conftest import Pki, RunningAgent, spawn_agent, write_config


def _channel(address: str, pki: Pki, who: str = "coordinator") -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.path("ca.crt").read_bytes(),
        private_key=pki.path(f"{who}.key").read_bytes(),
        certificate_chain=pki.path(f"{who}.crt").read_bytes(),
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


def _first_status(stream: Any) -> int:
    return int(next(stream).status)


# ---------------------------------------------------------------- health watches


def test_open_health_watches_do_not_block_other_calls(running_agent: RunningAgent, pki: Pki) -> None:
    """Before: each Watch pinned one of the 16 worker threads, so 16 watchers starved GetInfo."""
    config = load_config(running_agent.config_path)
    allowed = max_health_watches(config.server)
    assert allowed >= config.server.max_workers  # enough watchers to have exhausted the pool
    with _channel(running_agent.address, pki) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        streams = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30) for _ in range(allowed)]
        try:
            assert [_first_status(s) for s in streams] == [health_pb2.HealthCheckResponse.SERVING] * allowed
            started = time.monotonic()
            info = pb_grpc.AgentStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5)
            assert info.agent_id == "hospital-test"
            assert time.monotonic() - started < 2
            # One more watcher than allowed is refused rather than queued.
            extra = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
            with pytest.raises(grpc.RpcError) as refused:
                next(extra)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for stream in streams:
                stream.cancel()


def test_a_health_watch_sees_not_serving_then_ends_when_the_agent_stops(tmp_path: Path, pki: Pki) -> None:
    """Before: the Watch stream stayed open and held the stop for the whole grace period."""
    from tests.conftest import start_in_process

    agent = start_in_process(write_config(tmp_path, pki, grace_seconds=20))
    seen: list[int] = []
    ended = threading.Event()
    with _channel(f"127.0.0.1:{agent.port}", pki) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        seen.append(_first_status(stream))

        def read_rest() -> None:
            seen.extend(int(r.status) for r in stream)  # ends with OK when the agent closes it
            ended.set()

        reader = threading.Thread(target=read_rest)
        reader.start()
        started = time.monotonic()
        agent.stop()
        stop_took = time.monotonic() - started
        reader.join(5)
    assert ended.is_set()
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    assert stop_took < 3, f"the stop waited {stop_took:.1f} s for a health watch"


# ---------------------------------------------------------------- INTERNAL masking


class _LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
            structlog.PrintLogger(self.stream),
            processors=_processors("json"),
            wrapper_class=structlog.make_filtering_bound_logger(0),
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def agent_whose_get_info_crashes(tmp_path: Path, pki: Pki) -> Iterator[tuple[str, _LogCapture]]:
    config = load_config(write_config(tmp_path, pki))
    capture = _LogCapture()
    key = load_key_file(config.identity.key_file)
    assert config.policy_file is not None
    policy = PolicyInForce(load_policy(config.policy_file))
    audit = AuditLog.open(config.audit.directory, key)
    service = assemble_service(config, key=key, policy=policy, audit=audit, logger=capture.logger, version="test")

    def crash(request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.AgentInfo:
        raise RuntimeError("cannot open /srv/hospital/secret/patients.csv: row 17 'Jane Doe'")

    service.GetInfo = crash  # type: ignore[method-assign]
    daemon = AgentDaemon(config.server, load_server_tls(config.tls, config.source), service, capture.logger)
    port = daemon.start().port
    try:
        yield f"127.0.0.1:{port}", capture
    finally:
        daemon.stop()
        audit.close()


def test_an_unexpected_exception_becomes_internal_without_internals(
    agent_whose_get_info_crashes: tuple[str, _LogCapture], pki: Pki
) -> None:
    address, capture = agent_whose_get_info_crashes
    with _channel(address, pki) as channel, pytest.raises(grpc.RpcError) as failure:
        pb_grpc.AgentStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    details = failure.value.details()
    for leak in ("/srv", "patients", "Jane", "RuntimeError", "Traceback", ".py"):
        assert leak not in details
    assert "reference" in details
    reference = details.split("reference ")[1].split(")")[0]
    logged = [e for e in capture.events() if e["event"] == "rpc.internal_error"]
    assert len(logged) == 1
    assert logged[0]["reference"] == reference
    assert "patients.csv" in json.dumps(logged[0])  # the detail is in the local log only


# ---------------------------------------------------------------- cancelled calls


def test_a_call_past_its_deadline_is_logged_as_such_not_as_an_internal_error(
    spawned_agent: RunningAgent, pki: Pki
) -> None:
    release = threading.Event()

    def stalled() -> Iterator[bytes]:
        yield b"first"
        release.wait(10)

    with spawned_agent.client(pki) as client:
        with pytest.raises(AgentRpcError) as failure:
            client.probe_transport(stalled(), timeout=0.5)
        release.set()
        assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.3)  # let the handler notice
        assert client.get_info().agent_id == "hospital-test"
    assert spawned_agent.process is not None
    spawned_agent.process.send_signal(signal.SIGTERM)
    assert spawned_agent.process.wait(20) == 0
    assert spawned_agent.log_path is not None
    text = spawned_agent.log_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    probes = [e for e in events if e["event"] == "rpc" and e["method"].endswith("/ProbeTransport")]
    # The client's own deadline timer usually fires first and cancels the
    # call, a moment before the agent's copy of the deadline runs out; the
    # agent cannot tell the two apart then, and either is fine.
    assert len(probes) == 1
    assert probes[0]["status"] in {"DEADLINE_EXCEEDED", "CANCELLED"}
    assert probes[0]["level"] == "info"
    assert not [e for e in events if e["event"] == "rpc.internal_error"]
    assert "Traceback" not in text


# ---------------------------------------------------------------- the process lifetime

# `edge-agent serve` with a GetInfo that sleeps and ignores its cancellation:
# the worst handler the grace bound has to survive.
SLOW_AGENT = """
import sys, time
from agent.server.service import AgentService

def stuck(self, request, context):
    time.sleep(600)

AgentService.GetInfo = stuck
from agent.cli.main import main
sys.exit(main())
"""


def _spawn_slow_agent(tmp_path: Path, pki: Pki, grace_seconds: float) -> tuple[subprocess.Popen[bytes], int, Path]:
    config = write_config(tmp_path, pki, grace_seconds=grace_seconds)
    port_file = tmp_path / "port"
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_AGENT, "serve", "--config", str(config), "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip().isdigit()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"agent did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, int(port_file.read_text()), log_path


def _start_stuck_call(port: int, pki: Pki) -> threading.Thread:
    def call() -> None:
        # Cut off by the stop; what matters is the agent's exit.
        with _channel(f"127.0.0.1:{port}", pki) as channel, contextlib.suppress(grpc.RpcError):
            pb_grpc.AgentStub(channel).GetInfo(pb.GetInfoRequest(), timeout=60)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    time.sleep(0.5)  # the call is now inside the stuck handler
    return caller


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def test_grace_seconds_bounds_the_stop_even_when_a_handler_ignores_cancellation(tmp_path: Path, pki: Pki) -> None:
    """Before: the interpreter joined the stuck handler thread and the agent never exited."""
    grace = 1.0
    process, port, log_path = _spawn_slow_agent(tmp_path, pki, grace)
    _start_stuck_call(port, pki)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = _wait(process, timeout=grace + 8)
    took = time.monotonic() - started
    assert code == 0, f"agent still running {took:.1f} s after SIGTERM:\n{log_path.read_text()}"
    assert took < grace + 4, f"the stop took {took:.1f} s with grace {grace} s"
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert "agent.exited" in [e["event"] for e in events]
    assert not (tmp_path / "port").exists()


def test_a_second_signal_stops_at_once_during_the_drain(tmp_path: Path, pki: Pki) -> None:
    process, port, log_path = _spawn_slow_agent(tmp_path, pki, grace_seconds=60)
    _start_stuck_call(port, pki)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert process.poll() is None, "the agent must drain, not quit, on the first signal"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = _wait(process, timeout=10)
    took = time.monotonic() - started
    assert code == 0, f"agent did not stop on the second signal:\n{log_path.read_text()}"
    assert took < 5
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    actions = [e.get("action") for e in events if e["event"] == "signal.received"]
    assert actions == ["drain", "stop now"]
    assert "server.stop_forced" in [e["event"] for e in events]


def test_signals_during_start_up_and_idle_stop_cleanly(tmp_path: Path, pki: Pki) -> None:
    """Many signals in a burst (a held Ctrl-C) end the agent with 0, no traceback, no hang."""
    agent = spawn_agent(["--config", str(write_config(tmp_path, pki))], tmp_path)
    assert agent.process is not None and agent.log_path is not None
    for _ in range(20):
        agent.process.send_signal(signal.SIGINT)
    assert _wait(agent.process, timeout=15) == 0
    assert "Traceback" not in agent.log_path.read_text()


def test_signals_repeated_until_the_agent_exits_leave_a_log_that_verifies(tmp_path: Path, pki: Pki) -> None:
    """The demo signalled each agent twice; one died between its final checkpoint and the head."""
    config = write_config(tmp_path, pki)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    assert agent.process is not None and agent.log_path is not None
    agent.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while agent.process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            agent.process.send_signal(signal.SIGTERM)
        time.sleep(0.0005)
    assert _wait(agent.process, timeout=5) == 0, agent.log_path.read_text()
    loaded = load_config(config)
    verdict = verify_log(loaded.audit.directory, [load_key_file(loaded.identity.key_file).public_key])
    assert verdict.ok, verdict.first_break
    assert verdict.notices == []


def test_while_draining_health_check_is_refused_and_the_in_flight_call_finishes(tmp_path: Path, pki: Pki) -> None:
    """What docs/operators.md says about health while draining."""
    from tests.conftest import start_in_process

    agent = start_in_process(write_config(tmp_path, pki, grace_seconds=10))
    release = threading.Event()
    result: dict[str, object] = {}

    def chunks() -> Iterator[bytes]:
        yield b"x"
        release.wait(10)
        yield b"y"

    address = f"127.0.0.1:{agent.port}"
    running = RunningAgent(address, agent.port, tmp_path)
    with running.client(pki, timeout=20) as client, running.client(pki, timeout=3) as prober:
        assert prober.health() == "SERVING"
        caller = threading.Thread(target=lambda: result.update(summary=client.probe_transport(chunks())))
        caller.start()
        time.sleep(0.5)
        stopper = threading.Thread(target=agent.stop)
        stopper.start()
        time.sleep(0.5)
        with pytest.raises(AgentRpcError) as refused:
            prober.health()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        release.set()
        caller.join(10)
        stopper.join(10)
    assert result["summary"].chunks_received == 2  # type: ignore[attr-defined]
