"""Reads agent.toml into an AgentConfig, rejecting anything it does not understand.

Unknown keys are errors, not warnings: a misspelt `lisen` silently ignored
would leave the agent listening where the operator did not intend.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.errors import ConfigError
from agent.config.model import (
    AgentConfig,
    IdentityConfig,
    LoggingConfig,
    ServerConfig,
    TlsConfig,
)
from agent.datasets import (
    DatasetFormat,
    DatasetSpec,
    DatasetSpecError,
    guess_format,
    validate_dataset_id,
)

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


class _Table:
    """A TOML table being read; remembers which keys were used and where it is."""

    def __init__(self, source: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def _get(self, name: str, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        # bool is an int in Python; a number field given `true` is a mistake.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {kind_name}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {kind_name}, got {type(value).__name__} {value!r}")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name, (str,), "a string")
        return default if value is None else str(value)

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, "is required")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self._get(name, (int,), "an integer")
        if value is None:
            return default
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {value}")
        return int(value)

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self._get(name, (int, float), "a number")
        if value is None:
            return default
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {value}")
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def path(self, name: str, base: Path, default: Path | None = None) -> Path:
        value = self.string(name)
        if value is None:
            if default is None:
                raise self.error(name, "is required")
            return default
        if not value.strip():
            raise self.error(name, "must not be empty")
        # Relative paths are relative to the config file, not to whatever
        # directory the service manager happened to start us in.
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self._get(name, (list,), "a list of strings")
        if value is None:
            return None
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{name}[{index}]", f"expected a non-empty string, got {item!r}")
        if len(set(value)) != len(value):
            raise self.error(name, "lists a column more than once")
        return tuple(value)

    def table(self, name: str) -> _Table:
        value = self._get(name, (dict,), "a table")
        return _Table(self.source, self.key(name), value or {})

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name, (list,), "an array of tables ([[...]])")
        tables = []
        for index, item in enumerate(value or []):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{index}]", "expected a table")
            tables.append(_Table(self.source, f"{self.key(name)}[{index}]", item))
        return tables

    def finish(self) -> None:
        """Rejects keys nobody asked for, suggesting the likely intended one."""
        for name in self.data:
            if name not in self.used:
                close = difflib.get_close_matches(name, sorted(self.used), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sorted(self.used))
                raise self.error(name, f"unknown key{hint} (known keys: {known})")


def _listen_address(table: _Table, default: str) -> str:
    value = table.string("listen", default) or default
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise table.error("listen", f"expected HOST:PORT (e.g. 0.0.0.0:7443), got {value!r}")
    if host.startswith("[") != host.endswith("]"):
        raise table.error("listen", f"unbalanced brackets in IPv6 address {value!r}")
    return value


def _server(table: _Table) -> ServerConfig:
    d = ServerConfig()
    config = ServerConfig(
        listen=_listen_address(table, d.listen),
        max_message_bytes=table.integer("max_message_bytes", d.max_message_bytes, 4096, 2**31 - 1),
        max_workers=table.integer("max_workers", d.max_workers, 1, 1024),
        grace_seconds=table.number("grace_seconds", d.grace_seconds, 0.0, 3600.0),
        keepalive_time_seconds=table.number("keepalive_time_seconds", d.keepalive_time_seconds, 1.0, 86400.0),
        keepalive_timeout_seconds=table.number("keepalive_timeout_seconds", d.keepalive_timeout_seconds, 1.0, 3600.0),
        min_client_ping_interval_seconds=table.number(
            "min_client_ping_interval_seconds", d.min_client_ping_interval_seconds, 1.0, 3600.0
        ),
    )
    table.finish()
    return config


def _tls(table: _Table, base: Path) -> TlsConfig:
    config = TlsConfig(
        cert_file=table.path("cert_file", base),
        key_file=table.path("key_file", base),
        client_ca_file=table.path("client_ca_file", base),
    )
    table.finish()
    return config


def _logging(table: _Table) -> LoggingConfig:
    d = LoggingConfig()
    config = LoggingConfig(
        level=table.choice("level", d.level, LOG_LEVELS),
        format=table.choice("format", d.format, LOG_FORMATS),
    )
    table.finish()
    return config


def _dataset(table: _Table, base: Path) -> DatasetSpec:
    raw_id = table.required_string("id")
    try:
        dataset_id = validate_dataset_id(raw_id)
    except DatasetSpecError as exc:
        raise table.error("id", str(exc)) from None
    path = table.path("path", base)
    raw_format = table.string("format")
    try:
        fmt = DatasetFormat.parse(raw_format) if raw_format else guess_format(path)
    except DatasetSpecError as exc:
        raise table.error("format", str(exc)) from None
    spec = DatasetSpec(
        id=dataset_id,
        path=path,
        format=fmt,
        description=table.string("description", "") or "",
        columns=table.string_list("columns"),
    )
    table.finish()
    return spec


def parse_config(text: str, source: Path) -> AgentConfig:
    """Parses and validates config text; `source` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from None
    base = source.parent.resolve()
    root = _Table(source, "", data)

    agent = root.table("agent")
    agent_id = agent.required_string("id")
    if not AGENT_ID_PATTERN.match(agent_id):
        raise agent.error(
            "id", f"must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric; got {agent_id!r}"
        )
    state_dir = agent.path("state_dir", base)
    agent.finish()

    identity_table = root.table("identity")
    identity = IdentityConfig(key_file=identity_table.path("key_file", base, default=state_dir / "agent-identity.key"))
    identity_table.finish()

    if "tls" not in data:
        raise ConfigError(
            source,
            "tls",
            "is required: mutual TLS needs cert_file, key_file and client_ca_file "
            "(run `edge-agent dev-certs` for a development PKI)",
        )

    datasets = tuple(_dataset(t, base) for t in root.tables("datasets"))
    seen: set[str] = set()
    for index, spec in enumerate(datasets):
        if spec.id in seen:
            raise ConfigError(source, f"datasets[{index}].id", f"duplicate dataset id {spec.id!r}")
        seen.add(spec.id)

    config = AgentConfig(
        agent_id=agent_id,
        state_dir=state_dir,
        server=_server(root.table("server")),
        tls=_tls(root.table("tls"), base),
        identity=identity,
        logging=_logging(root.table("logging")),
        datasets=datasets,
        source=source,
    )
    root.finish()
    return config


def load_config(path: Path) -> AgentConfig:
    """Loads a config file; every failure is a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    return parse_config(text, path)
