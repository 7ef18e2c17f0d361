"""Typed, validated configuration values. Built by loader.py or development.py."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from agent.datasets import DatasetSpec

MIB = 1024 * 1024
# Tensors and packages travel in chunks of up to 1 MiB; a message limit below
# this would refuse the protocol's own messages.
MIN_MESSAGE_BYTES = 2 * MIB

# RFC 1123 host names (labels of letters, digits and inner hyphens).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class ListenAddressError(Exception):
    """A listen address that is not HOST:PORT, [IPV6]:PORT with a port in 0..65535."""


def parse_listen_address(value: str) -> str:
    """Checks a listen address and returns it unchanged.

    The one parser for `server.listen` and `serve --listen`. gRPC itself
    accepts far too much: port 99999 silently becomes 34463 (it wraps at
    65536), and `::1:0` or garbage only fail later as a bare "failed to bind".
    """
    example = "e.g. 0.0.0.0:7443, localhost:7443 or [::1]:7443"
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ListenAddressError(f"expected HOST:PORT ({example}), got {value!r}")
    if not port.isascii() or not port.isdigit():
        raise ListenAddressError(f"expected HOST:PORT with a numeric port ({example}), got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ListenAddressError(f"port must be between 0 and 65535, got {port} in {value!r}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            ipaddress.IPv6Address(inner or "")
        except ValueError:
            raise ListenAddressError(f"expected [IPV6]:PORT ({example}), got {value!r}") from None
        return value
    if ":" in host:
        raise ListenAddressError(f"an IPv6 address needs brackets, e.g. [::1]:{port}; got {value!r}")
    if not _HOSTNAME.match(host):
        raise ListenAddressError(f"{host!r} is not an IPv4 address or host name ({example})")
    return value


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
    # A RunTask stream on which nothing moves for this long (a parameter upload
    # that stops, a coordinator that stops reading its events or result) is cut
    # off: it would otherwise hold a server thread, and a budget reservation.
    stream_idle_seconds: float = 30.0
    # Parameters kept per (coordinator, run, package) so that the next task of
    # the run is not sent them again; 0 disables. Runs idle this long are dropped.
    parameter_cache_mb: int = 2048
    parameter_cache_idle_seconds: float = 1800.0
    # Task workers kept warm between the tasks of a run (compiled graph and
    # onnxruntime session ready), at most this many, each for this long idle.
    warm_workers: int = 4
    warm_worker_idle_seconds: float = 300.0


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
    # The key's fingerprint as agent.toml pins it, outside the state directory:
    # the daemon refuses any other key and `audit verify` trusts only this one.
    # None: not pinned (installs that predate pinning): serve warns, doctor reports it.
    pinned_fingerprint: str | None = None


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
class MetricsConfig:
    # HOST:PORT of the Prometheus /metrics listener (plain HTTP, no
    # authentication: keep it on loopback or a management network); None:
    # no listener. The packaged agent.toml sets 127.0.0.1:9464.
    listen: str | None = None


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
    metrics: MetricsConfig = MetricsConfig()
    # The file this came from; None for the embedded development defaults.
    source: Path | None = None

    @property
    def development(self) -> bool:
        return self.source is None

    @property
    def dataset_registry_file(self) -> Path:
        return self.state_dir / "datasets.sqlite"
