"""Reads agent.toml into an AgentConfig, rejecting anything it does not understand.

Unknown keys are errors, not warnings: a misspelt `lisen` silently ignored
would leave the agent listening where the operator did not intend.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.config.errors import ConfigError
from agent.config.model import (
    MIN_MESSAGE_BYTES,
    AgentConfig,
    AuditConfig,
    IdentityConfig,
    ListenAddressError,
    LoggingConfig,
    MetricsConfig,
    ServerConfig,
    TlsConfig,
    parse_listen_address,
)
from agent.config.toml_table import TomlTable, decode_utf8, read_toml_file
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
# agent.identity.agent_key.fingerprint: SHA256 of the raw key, unpadded base64.
FINGERPRINT_PATTERN = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def _listen_address(table: TomlTable, default: str) -> str:
    value = table.string("listen", default) or default
    try:
        return parse_listen_address(value)
    except ListenAddressError as exc:
        raise table.error("listen", str(exc)) from None


def _server(table: TomlTable) -> ServerConfig:
    d = ServerConfig()
    config = ServerConfig(
        listen=_listen_address(table, d.listen),
        max_message_bytes=_max_message_bytes(table, d.max_message_bytes),
        max_workers=table.integer("max_workers", d.max_workers, 1, 1024),
        grace_seconds=table.number("grace_seconds", d.grace_seconds, 0.0, 3600.0),
        keepalive_time_seconds=table.number("keepalive_time_seconds", d.keepalive_time_seconds, 1.0, 86400.0),
        keepalive_timeout_seconds=table.number("keepalive_timeout_seconds", d.keepalive_timeout_seconds, 1.0, 3600.0),
        min_client_ping_interval_seconds=table.number(
            "min_client_ping_interval_seconds", d.min_client_ping_interval_seconds, 1.0, 3600.0
        ),
        stream_idle_seconds=table.number("stream_idle_seconds", d.stream_idle_seconds, 1.0, 86400.0),
        parameter_cache_mb=table.integer("parameter_cache_mb", d.parameter_cache_mb, 0, 1024 * 1024),
        warm_workers=table.integer("warm_workers", d.warm_workers, 0, 64),
        warm_worker_idle_seconds=table.number("warm_worker_idle_seconds", d.warm_worker_idle_seconds, 1.0, 86400.0),
        parameter_cache_idle_seconds=table.number(
            "parameter_cache_idle_seconds", d.parameter_cache_idle_seconds, 1.0, 7 * 86400.0
        ),
    )
    table.finish()
    return config


def _max_message_bytes(table: TomlTable, default: int) -> int:
    value = table.integer("max_message_bytes", default, 1, 2**31 - 1)
    if value < MIN_MESSAGE_BYTES:
        raise table.error(
            "max_message_bytes",
            f"must be at least {MIN_MESSAGE_BYTES} (2 MiB): tensors and packages travel in chunks of up to "
            f"1 MiB plus framing; got {value}",
        )
    return value


def _metrics(table: TomlTable) -> MetricsConfig:
    # An absent table or an empty listen means no metrics listener.
    value = table.string("listen", "") or ""
    try:
        config = MetricsConfig(listen=parse_listen_address(value) if value else None)
    except ListenAddressError as exc:
        raise table.error("listen", str(exc)) from None
    table.finish()
    return config


def _pinned_fingerprint(table: TomlTable) -> str | None:
    value = table.string("pinned_fingerprint")
    if value is None:
        return None
    if not FINGERPRINT_PATTERN.match(value):
        raise table.error(
            "pinned_fingerprint",
            f"expected the key's fingerprint as `edge-agent keys generate` prints it (SHA256: and 43 base64 "
            f"characters); got {value!r}",
        )
    return value


def _tls(table: TomlTable, base: Path) -> TlsConfig:
    config = TlsConfig(
        cert_file=table.path("cert_file", base),
        key_file=table.path("key_file", base),
        client_ca_file=table.path("client_ca_file", base),
    )
    table.finish()
    return config


def _logging(table: TomlTable) -> LoggingConfig:
    d = LoggingConfig()
    config = LoggingConfig(
        level=table.choice("level", d.level, LOG_LEVELS),
        format=table.choice("format", d.format, LOG_FORMATS),
    )
    table.finish()
    return config


def _dataset(table: TomlTable, base: Path) -> DatasetSpec:
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
    columns = table.string_list("columns")
    unit = table.string("privacy_unit")
    if unit is not None and not unit.strip():
        raise table.error("privacy_unit", "must name a column (e.g. \"patient_id\") or be left out")
    if unit is not None and columns is not None and unit in columns:
        raise table.error(
            "columns",
            f"lists {unit!r}, the privacy_unit: the unit column identifies a person and can never be exposed",
        )
    try:
        spec = DatasetSpec(
            id=dataset_id,
            path=path,
            format=fmt,
            description=table.string("description", "") or "",
            columns=columns,
            privacy_unit=unit,
        )
    except DatasetSpecError as exc:
        raise table.error("columns", str(exc)) from None
    table.finish()
    return spec


def parse_config(text: str, source: Path) -> AgentConfig:
    """Parses and validates config text; `source` names the file in errors."""
    root = TomlTable.parse(text, source)
    base = source.parent.resolve()

    agent = root.table("agent")
    agent_id = agent.required_string("id")
    if not AGENT_ID_PATTERN.match(agent_id):
        raise agent.error(
            "id", f"must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric; got {agent_id!r}"
        )
    state_dir = agent.path("state_dir", base)
    agent.finish()

    identity_table = root.table("identity")
    identity = IdentityConfig(
        key_file=identity_table.path("key_file", base, default=state_dir / "agent-identity.key"),
        pinned_fingerprint=_pinned_fingerprint(identity_table),
    )
    identity_table.finish()

    if "tls" not in root.data:
        raise ConfigError(
            source,
            "tls",
            "is required: mutual TLS needs cert_file, key_file and client_ca_file "
            "(run `edge-agent dev-certs` for a development PKI)",
        )

    governance = root.table("governance")
    # Required: an agent without a policy file would either allow nothing
    # (useless) or something implicit (dangerous); make the operator choose.
    policy_file = governance.path("policy_file", base)
    governance.finish()

    audit_table = root.table("audit")
    audit = AuditConfig(
        directory=audit_table.path("directory", base, default=state_dir / "audit"),
        checkpoint_every=audit_table.integer("checkpoint_every", 100, 1, 1_000_000),
    )
    audit_table.finish()

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
        audit=audit,
        datasets=datasets,
        policy_file=policy_file,
        metrics=_metrics(root.table("metrics")),
        source=source,
    )
    root.finish()
    return config


def load_config(path: Path) -> AgentConfig:
    """Loads a config file; every failure is a ConfigError naming the file."""
    text = decode_utf8(read_toml_file(path), path)
    return parse_config(text, path)
