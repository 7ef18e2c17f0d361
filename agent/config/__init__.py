"""Agent configuration: the TOML file, its validation and the embedded defaults."""

from agent.config.development import development_config
from agent.config.errors import ConfigError
from agent.config.loader import load_config, parse_config
from agent.config.model import (
    AgentConfig,
    AuditConfig,
    IdentityConfig,
    LoggingConfig,
    ServerConfig,
    TlsConfig,
)

__all__ = [
    "AgentConfig",
    "AuditConfig",
    "ConfigError",
    "IdentityConfig",
    "LoggingConfig",
    "ServerConfig",
    "TlsConfig",
    "development_config",
    "load_config",
    "parse_config",
]
