"""Shared fixtures: a real PKI, config files, and real agents on loopback ports."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.audit.log import AuditLog
from agent.config import load_config
from agent.governance.in_force import PolicyInForce
from agent.governance.loader import load_policy
from agent.identity.agent_key import generate_key_file, load_key_file
from agent.identity.certificates import CertificateAuthority
from agent.observability.logging import configure_logging
from agent.server.assembly import assemble_service
from agent.server.daemon import AgentDaemon
from agent.server.tls import load_server_tls
from edge_sponsor.coordinator.client import AgentClient, ClientCredentials
from tests.headless_chromium import chromium_or_skip

REPO = Path(__file__).resolve().parent.parent
COORDINATOR_URI = "spiffe://pharma.example/coordinator/eu-1"


@dataclass(frozen=True)
class Pki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def credentials(self, who: str = "coordinator") -> ClientCredentials:
        return ClientCredentials.from_files(self.path("ca.crt"), self.path(f"{who}.crt"), self.path(f"{who}.key"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA for the agent and its coordinators, plus bad client certificates."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("Test hospital CA")
    ca.write(directory / "ca.crt", directory / "ca.key")
    ca.issue_server().write(directory / "agent.crt", directory / "agent.key")
    ca.issue_client("coordinator-eu-1", uri=COORDINATOR_URI).write(
        directory / "coordinator.crt", directory / "coordinator.key"
    )
    ca.issue_client("cn-only-coordinator").write(directory / "cn-only.crt", directory / "cn-only.key")
    now = dt.datetime.now(dt.UTC)
    ca.issue_client(
        "expired-coordinator",
        uri="spiffe://pharma.example/coordinator/old",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    ).write(directory / "expired.crt", directory / "expired.key")
    foreign = CertificateAuthority.create("Some other CA")
    foreign.issue_client("intruder", uri="spiffe://evil.example/coordinator").write(
        directory / "foreign.crt", directory / "foreign.key"
    )
    return Pki(directory)


# Both test coordinators may use every dataset; datasets get a wildcard rule.
DEFAULT_POLICY = f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["*"]
task_kinds = ["dp_gradient", "dp_local_training", "dp_evaluate"]

[[coordinators]]
identity = "cn-only-coordinator"
datasets = ["*"]
task_kinds = ["dp_evaluate"]

[[datasets]]
id = "*"
epsilon_budget = 5.0
forbidden_columns = ["patient_id"]
"""


def write_config(
    directory: Path,
    pki: Pki,
    *,
    listen: str = "127.0.0.1:0",
    extra: str = "",
    grace_seconds: float = 10.0,
    policy: str = DEFAULT_POLICY,
    agent_id: str = "hospital-test",
) -> Path:
    """A production-style agent.toml and policy.toml, with an identity key created beforehand."""
    (directory / "policy.toml").write_text(policy)
    state = directory / "state"
    key_file = directory / "identity.key"
    if not key_file.exists():
        generate_key_file(key_file)
    config = directory / "agent.toml"
    config.write_text(
        f"""
[agent]
id = "{agent_id}"
state_dir = "{state}"

[identity]
key_file = "{key_file}"

[server]
listen = "{listen}"
grace_seconds = {grace_seconds}

[tls]
cert_file = "{pki.path("agent.crt")}"
key_file = "{pki.path("agent.key")}"
client_ca_file = "{pki.path("ca.crt")}"

[governance]
policy_file = "{directory / 'policy.toml'}"

[logging]
format = "json"
{extra}
"""
    )
    return config


@dataclass
class RunningAgent:
    address: str
    port: int
    config_path: Path
    daemon: InProcessAgent | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def client(self, pki: Pki, who: str = "coordinator", timeout: float = 10.0) -> AgentClient:
        return AgentClient(self.address, pki.credentials(who), server_name="localhost", timeout=timeout)


@dataclass
class InProcessAgent:
    daemon: AgentDaemon
    port: int
    audit: AuditLog
    policy: PolicyInForce

    def stop(self) -> None:
        self.daemon.stop()
        self.audit.close()


def start_in_process(config_path: Path) -> InProcessAgent:
    """The real object graph of `edge-agent serve`, built in this process."""
    config = load_config(config_path)
    logger = configure_logging("warning", "json")
    key = load_key_file(config.identity.key_file)
    assert config.policy_file is not None
    policy_file = config.policy_file
    policy = PolicyInForce(load_policy(policy_file), lambda: load_policy(policy_file))
    audit = AuditLog.open(config.audit.directory, key, checkpoint_every=config.audit.checkpoint_every)
    service = assemble_service(config, key=key, policy=policy, audit=audit, logger=logger, version="test")
    daemon = AgentDaemon(config.server, load_server_tls(config.tls, config.source), service, logger)
    try:
        port = daemon.start().port
    except BaseException:
        audit.close()
        raise
    return InProcessAgent(daemon, port, audit, policy)


@pytest.fixture
def agent_config(tmp_path: Path, pki: Pki) -> Path:
    return write_config(tmp_path, pki)


@pytest.fixture
def running_agent(agent_config: Path) -> Iterator[RunningAgent]:
    """A real gRPC server with mTLS on a loopback port, in this process."""
    agent = start_in_process(agent_config)
    try:
        yield RunningAgent(f"127.0.0.1:{agent.port}", agent.port, agent_config, daemon=agent)
    finally:
        agent.stop()


def spawn_agent(args: list[str], workdir: Path, timeout: float = 30.0) -> RunningAgent:
    """`edge-agent serve ARGS` as a separate process; waits until it listens."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log_path = workdir / "agent.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", *args, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"agent exited with {process.returncode}:\n{log_path.read_text()}")
        if port_file.exists() and port_file.read_text().strip().isdigit():
            port = int(port_file.read_text())
            return RunningAgent(f"127.0.0.1:{port}", port, workdir, process=process, log_path=log_path)
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"agent did not listen within {timeout} s:\n{log_path.read_text()}")


def stop_agent(agent: RunningAgent, timeout: float = 30.0) -> int:
    process = agent.process
    if process is None:
        raise ValueError("not a spawned agent")
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def spawned_agent(tmp_path: Path, pki: Pki) -> Iterator[RunningAgent]:
    config = write_config(tmp_path, pki)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    try:
        yield agent
    finally:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the report tests (installed from Debian as root when missing)."""
    return chromium_or_skip()
