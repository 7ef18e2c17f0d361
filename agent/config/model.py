"""Typed, validated configuration values. Built by loader.py or development.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.datasets import DatasetSpec

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # host:port; port 0 asks the OS for a free port (tests, demo).
    listen: str = "127.0.0.1:7443"
    max_message_bytes: int = 16 * MIB
    max_workers: int = 16
    # SIGTERM lets in-flight calls finish for this long before cutting them.
    grace_seconds: float = 30.0
    # Hospital firewalls drop idle TCP flows after a few minutes; pinging
    # idle clients every minute keeps the flow alive and notices dead peers.
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Coordinators may ping this often without being told "too many pings".
    min_client_ping_interval_seconds: float = 10.0


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    # CA that signs coordinator client certificates; only its leaves connect.
    client_ca_file: Path


@dataclass(frozen=True)
class IdentityConfig:
    # Ed25519 key that identifies this agent and signs its audit checkpoints.
    key_file: Path


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    # "json" for journald and log shippers, "console" for people.
    format: str = "json"


@dataclass(frozen=True)
class AuditConfig:
    # The tamper-evident log; keep it on storage that is backed up.
    directory: Path
    # A signed checkpoint every this many entries (and at every shutdown).
    checkpoint_every: int = 100


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    state_dir: Path
    server: ServerConfig
    tls: TlsConfig
    identity: IdentityConfig
    logging: LoggingConfig
    audit: AuditConfig
    datasets: tuple[DatasetSpec, ...]
    # policy.toml; None only for development instances (embedded policy).
    policy_file: Path | None = None
    # The file this came from; None for the embedded development defaults.
    source: Path | None = None

    @property
    def development(self) -> bool:
        return self.source is None

    @property
    def dataset_registry_file(self) -> Path:
        return self.state_dir / "datasets.sqlite"
