"""`edge-agent serve` as a real process: start-up errors, signals, development mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sponsor.coordinator.client import AgentClient, ClientCredentials
from tests.conftest import Pki, RunningAgent, spawn_agent, stop_agent, write_config


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def test_sigterm_lets_an_in_flight_call_finish_then_exits_zero(spawned_agent: RunningAgent, pki: Pki) -> None:
    first_sent = threading.Event()
    resume = threading.Event()

    def slow_upload() -> Iterator[bytes]:
        yield b"a" * 1000
        first_sent.set()
        resume.wait(20)
        for _ in range(4):
            yield b"b" * 1000

    result: dict[str, object] = {}

    def call() -> None:
        with spawned_agent.client(pki, timeout=30) as client:
            try:
                result["summary"] = client.probe_transport(slow_upload())
            except Exception as exc:  # recorded and checked below
                result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    assert first_sent.wait(10)
    time.sleep(0.3)  # let the first chunk reach the handler
    assert spawned_agent.process is not None
    spawned_agent.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the agent is now draining
    assert spawned_agent.process.poll() is None, "the agent quit before the in-flight call ended"
    resume.set()
    caller.join(20)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.chunks_received == 5  # type: ignore[attr-defined]
    assert summary.bytes_received == 5000  # type: ignore[attr-defined]
    assert spawned_agent.process.wait(20) == 0


def test_sigint_stops_an_idle_agent_with_exit_zero(spawned_agent: RunningAgent) -> None:
    assert spawned_agent.process is not None
    spawned_agent.process.send_signal(signal.SIGINT)
    assert spawned_agent.process.wait(20) == 0


def test_sighup_does_not_kill_the_agent(spawned_agent: RunningAgent, pki: Pki) -> None:
    assert spawned_agent.process is not None
    spawned_agent.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    with spawned_agent.client(pki) as client:
        assert client.get_info().agent_id == "hospital-test"
    assert stop_agent(spawned_agent) == 0


def test_logs_are_json_lines_on_stderr(spawned_agent: RunningAgent, pki: Pki) -> None:
    with spawned_agent.client(pki) as client:
        client.get_info()
    assert stop_agent(spawned_agent) == 0
    assert spawned_agent.log_path is not None
    events = [json.loads(line) for line in spawned_agent.log_path.read_text().splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert "agent.started" in names and "server.stopped" in names
    rpc = next(e for e in events if e["event"] == "rpc" and e["method"].endswith("/GetInfo"))
    assert rpc["caller"] == "spiffe://pharma.example/coordinator/eu-1"
    assert rpc["status"] == "OK"
    assert all("timestamp" in e and "level" in e for e in events)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[server]\nlisten = 7443\n", "server.listen: expected a string"),
        ("[bogus]\nx = 1\n", "bogus: unknown key"),
        ("[agent\n", "not valid TOML"),
    ],
    ids=["wrong-type", "unknown-table", "broken-toml"],
)
def test_malformed_config_exits_2_and_starts_nothing(tmp_path: Path, pki: Pki, extra: str, message: str) -> None:
    config = write_config(tmp_path, pki)
    text = config.read_text()
    if extra.startswith("[server]"):
        text = text.replace('listen = "127.0.0.1:0"', "listen = 7443")
    else:
        text += extra
    config.write_text(text)
    port_file = tmp_path / "port"
    result = run_cli("serve", "--config", str(config), "--port-file", str(port_file))
    assert result.returncode == 2, result.stderr
    assert str(config) in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not port_file.exists()
    assert not (tmp_path / "state").exists()


def test_missing_identity_key_in_production_is_an_error_not_a_new_key(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    (tmp_path / "identity.key").unlink()
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "identity key not found" in result.stderr
    assert "edge-agent keys generate" in result.stderr
    assert not (tmp_path / "identity.key").exists()


def test_mismatched_tls_key_is_reported_with_the_file(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    config.write_text(config.read_text().replace(str(pki.path("agent.key")), str(pki.path("coordinator.key"))))
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "tls.key_file" in result.stderr and "does not match the certificate" in result.stderr


def test_port_already_in_use_exits_1(spawned_agent: RunningAgent, pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other, pki, listen=f"127.0.0.1:{spawned_agent.port}")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{spawned_agent.port}" in result.stderr


def test_development_mode_generates_credentials_once_and_serves(tmp_path: Path) -> None:
    state = tmp_path / "dev-state"
    agent = spawn_agent(["--state-dir", str(state), "--listen", "127.0.0.1:0"], tmp_path)
    try:
        assert agent.log_path is not None
        banner = agent.log_path.read_text()
        assert "DEVELOPMENT instance" in banner
        assert str(state / "dev-pki" / "coordinator.crt") in banner
        pki = state / "dev-pki"
        assert oct((pki / "coordinator.key").stat().st_mode & 0o777) == "0o600"
        credentials = ClientCredentials.from_files(pki / "ca.crt", pki / "coordinator.crt", pki / "coordinator.key")
        with AgentClient(agent.address, credentials, timeout=10) as client:
            info = client.get_info()
        assert info.agent_id == "dev-agent"
        assert info.caller_identity == "urn:edge-agent:coordinator:dev"
        first_key = (state / "agent-identity.key").read_bytes()
    finally:
        assert stop_agent(agent) == 0
    # A restart reuses the PKI and the identity key instead of minting new ones.
    agent = spawn_agent(["--state-dir", str(state), "--listen", "127.0.0.1:0"], tmp_path)
    try:
        assert agent.log_path is not None
        assert "(created now)" not in agent.log_path.read_text()
        assert (state / "agent-identity.key").read_bytes() == first_key
    finally:
        assert stop_agent(agent) == 0
