"""A throw-away PKI for development and demos: one CA, the agent's server
certificate and one coordinator client certificate, all in one directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.identity.certificates import CertificateAuthority

DEV_COORDINATOR_URI = "urn:edge-agent:coordinator:dev"


@dataclass(frozen=True)
class DevelopmentPki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def agent_cert(self) -> Path:
        return self.directory / "agent.crt"

    @property
    def agent_key(self) -> Path:
        return self.directory / "agent.key"

    @property
    def coordinator_cert(self) -> Path:
        return self.directory / "coordinator.crt"

    @property
    def coordinator_key(self) -> Path:
        return self.directory / "coordinator.key"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.agent_cert,
            self.agent_key,
            self.coordinator_cert,
            self.coordinator_key,
        )

    def complete(self) -> bool:
        return all(path.is_file() for path in self.files())


def ensure_development_pki(
    directory: Path,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    coordinator_uri: str = DEV_COORDINATOR_URI,
) -> tuple[DevelopmentPki, bool]:
    """Reuses a complete PKI in `directory` or creates a new one. Returns (pki, created).

    One CA signs both sides here for convenience; in production the agent's
    server certificate and the coordinators' CA are usually different PKIs.
    """
    pki = DevelopmentPki(directory)
    if pki.complete():
        return pki, False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.create("Edge Agent development CA")
    server = ca.issue_server(hostnames=hostnames, addresses=addresses)
    client = ca.issue_client("edge-agent development coordinator", uri=coordinator_uri)
    # Leaves first, CA last: complete() only becomes true once everything exists.
    server.write(pki.agent_cert, pki.agent_key)
    client.write(pki.coordinator_cert, pki.coordinator_key)
    ca.write(pki.ca_cert, pki.ca_key)
    return pki, True
