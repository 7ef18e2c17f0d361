"""The embedded defaults: a usable local agent with no config file at all.

Only this path ever generates keys or certificates on its own; a production
config that points at missing files is an error instead.
"""

from __future__ import annotations

from pathlib import Path

from agent.config.model import (
    AgentConfig,
    AuditConfig,
    IdentityConfig,
    LoggingConfig,
    ServerConfig,
    TlsConfig,
)

DEFAULT_STATE_DIR = Path(".edge-agent")
DEV_PKI_DIRNAME = "dev-pki"


def development_config(
    state_dir: Path = DEFAULT_STATE_DIR,
    listen: str = "127.0.0.1:7443",
    log_format: str = "console",
) -> AgentConfig:
    state_dir = state_dir.expanduser().resolve()
    pki = state_dir / DEV_PKI_DIRNAME
    return AgentConfig(
        agent_id="dev-agent",
        state_dir=state_dir,
        server=ServerConfig(listen=listen, grace_seconds=10.0),
        tls=TlsConfig(
            cert_file=pki / "agent.crt",
            key_file=pki / "agent.key",
            client_ca_file=pki / "ca.crt",
        ),
        identity=IdentityConfig(key_file=state_dir / "agent-identity.key"),
        logging=LoggingConfig(level="info", format=log_format),
        audit=AuditConfig(directory=state_dir / "audit"),
        datasets=(),
        source=None,
    )
