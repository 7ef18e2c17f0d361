"""Reads policy.toml into a Policy, rejecting anything it does not understand."""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config.errors import ConfigError
from agent.config.toml_table import TomlTable, decode_utf8, read_toml_file
from agent.governance.model import (
    ANY_DATASET,
    DEFAULT_MAX_ROWS_PER_UNIT,
    DEFAULT_MIN_CELL_SIZE,
    MAX_ROWS_PER_UNIT_RANGE,
    MIN_CELL_SIZE_RANGE,
    Bounds,
    CoordinatorRule,
    DatasetRule,
    Limits,
    PackageRules,
    Policy,
    PublisherRule,
    ReviewerRule,
)
from agent.identity.agent_key import fingerprint
from agent.tasks.kinds import registry

DEFAULT_MIN_COHORT = 10


def _names(table: TomlTable, name: str) -> frozenset[str] | None:
    values = table.string_list(name)
    return None if values is None else frozenset(values)


def _task_kinds(table: TomlTable) -> frozenset[str]:
    values = table.string_list("task_kinds") or ()
    known = registry.names()
    for index, value in enumerate(values):
        if value not in known:
            raise table.error(f"task_kinds[{index}]", f"unknown task kind {value!r}; known: {', '.join(known)}")
    return frozenset(values)


def _coordinator(table: TomlTable) -> CoordinatorRule:
    # Identity first: an error about a rule should name whose rule it is.
    identity = table.required_string("identity")
    datasets = table.string_list("datasets")
    if not datasets:
        raise table.error("datasets", 'must list the dataset ids this coordinator may use (or ["*"])')
    rule = CoordinatorRule(
        identity=identity,
        datasets=frozenset(datasets),
        task_kinds=_task_kinds(table),
        max_tasks_per_hour=table.optional_integer("max_tasks_per_hour", 0, 10**9),
        max_tasks_per_day=table.optional_integer("max_tasks_per_day", 0, 10**9),
        valid_from=table.instant("valid_from"),
        valid_until=table.instant("valid_until", end_of_day=True),
    )
    if rule.valid_from and rule.valid_until and rule.valid_until <= rule.valid_from:
        raise table.error("valid_until", "must be after valid_from")
    table.finish()
    return rule


def _bounds(table: TomlTable, name: str, default: Bounds, lowest: float, highest: float) -> Bounds:
    sub = table.table(name)
    minimum = sub.optional_number("min", lowest, highest)
    maximum = sub.optional_number("max", lowest, highest)
    sub.finish()
    bounds = Bounds(
        minimum=default.minimum if minimum is None else minimum,
        maximum=default.maximum if maximum is None else maximum,
    )
    if bounds.minimum is not None and bounds.maximum is not None and bounds.minimum > bounds.maximum:
        raise sub.error("min", f"is greater than max ({bounds.minimum:g} > {bounds.maximum:g})")
    return bounds


def _hyperparameter_bounds(table: TomlTable) -> dict[str, Bounds]:
    """One optional ``{ min, max }`` per hyperparameter some task kind takes; unset sides keep its default."""
    bounds = {
        declared.name: _bounds(table, declared.name, declared.policy_default, *declared.policy_range)
        for declared in registry.hyperparameters()
    }
    table.finish()
    return bounds


def _dataset(table: TomlTable) -> DatasetRule:
    dataset_id = table.required_string("id")
    exposed = _names(table, "exposed_columns")
    forbidden = _names(table, "forbidden_columns") or frozenset()
    labels = _names(table, "label_columns")
    if exposed is not None and exposed & forbidden:
        overlap = ", ".join(sorted(exposed & forbidden))
        raise table.error("exposed_columns", f"lists forbidden columns: {overlap}")
    if labels is not None and labels & forbidden:
        raise table.error("label_columns", f"lists forbidden columns: {', '.join(sorted(labels & forbidden))}")
    epsilon = table.optional_number("epsilon_budget", 0.0, 100.0)
    if epsilon is None or epsilon <= 0:
        raise table.error("epsilon_budget", "is required: the total privacy budget (epsilon > 0) of this dataset")
    delta = table.number("delta", 1e-5, 0.0, 0.1)
    if delta <= 0 or not math.isfinite(delta):
        raise table.error("delta", "must be greater than 0 (e.g. 1e-5, below 1/rows)")
    rule = DatasetRule(
        dataset_id=dataset_id,
        exposed_columns=exposed,
        forbidden_columns=forbidden,
        label_columns=labels,
        min_cohort_size=table.integer("min_cohort_size", DEFAULT_MIN_COHORT, 1, 10**9),
        epsilon_budget=epsilon,
        delta=delta,
        budget_group=table.string("budget_group", dataset_id) or dataset_id,
        purposes=_names(table, "purposes") or frozenset(),
        agreement_expires=table.date("agreement_expires"),
        bounds=_hyperparameter_bounds(table.table("bounds")),
        require_privacy_unit=table.boolean("require_privacy_unit", False),
        max_rows_per_unit=table.integer("max_rows_per_unit", DEFAULT_MAX_ROWS_PER_UNIT, *MAX_ROWS_PER_UNIT_RANGE),
        min_cell_size=table.integer("min_cell_size", DEFAULT_MIN_CELL_SIZE, *MIN_CELL_SIZE_RANGE),
    )
    table.finish()
    return rule


def parse_public_key(text: str) -> bytes:
    """A raw 32-byte Ed25519 key from base64 or a PEM SubjectPublicKeyInfo block."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(stripped.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = base64.b64decode(stripped, validate=True)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this has {len(raw)}")
    return raw


def _public_key(table: TomlTable, base: Path) -> bytes:
    """The table's raw Ed25519 key, from ``public_key`` (base64 or PEM) or ``public_key_file``."""
    inline = table.string("public_key")
    key_file = table.string("public_key_file")
    if (inline is None) == (key_file is None):
        raise table.error("public_key", "give exactly one of public_key (base64 or PEM) or public_key_file")
    key_name = "public_key" if inline is not None else "public_key_file"
    try:
        if inline is not None:
            text = inline
        else:
            path = table.path("public_key_file", base)
            text = path.read_text(encoding="utf-8")
        return parse_public_key(text)
    except OSError as exc:
        raise table.error(key_name, f"cannot read {key_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise table.error(key_name, f"not an Ed25519 public key: {exc}") from None


def _publisher(table: TomlTable, base: Path) -> PublisherRule:
    name = table.required_string("name")
    namespaces = table.string_list("namespaces")
    raw = _public_key(table, base)
    rule = PublisherRule(
        name=name,
        key_id=fingerprint(Ed25519PublicKey.from_public_bytes(raw)),
        public_key=raw,
        expires=table.instant("expires", end_of_day=True),
        revoked=table.boolean("revoked", False),
        namespaces=None if namespaces is None else frozenset(namespaces),
    )
    table.finish()
    return rule


def _reviewer(table: TomlTable, base: Path) -> ReviewerRule:
    name = table.required_string("name")
    raw = _public_key(table, base)
    table.finish()
    return ReviewerRule(name=name, key_id=fingerprint(Ed25519PublicKey.from_public_bytes(raw)), public_key=raw)


def _unique_keys(key_ids: list[str], section: str, source: Path) -> None:
    seen: set[str] = set()
    for index, key_id in enumerate(key_ids):
        if key_id in seen:
            raise ConfigError(source, f"{section}[{index}]", f"key {key_id} is listed twice")
        seen.add(key_id)


def parse_policy(data: bytes, source: Path) -> Policy:
    root = TomlTable.parse(decode_utf8(data, source), source)
    base = source.parent.resolve()

    coordinators: dict[str, CoordinatorRule] = {}
    for table in root.tables("coordinators"):
        rule = _coordinator(table)
        if rule.identity in coordinators:
            raise table.error("identity", f"coordinator {rule.identity!r} is listed twice")
        coordinators[rule.identity] = rule

    datasets: dict[str, DatasetRule] = {}
    for table in root.tables("datasets"):
        dataset = _dataset(table)
        if dataset.dataset_id in datasets:
            raise table.error("id", f"dataset {dataset.dataset_id!r} is listed twice")
        datasets[dataset.dataset_id] = dataset

    for identity, coordinator in coordinators.items():
        unknown = sorted(d for d in coordinator.datasets if d != ANY_DATASET and d not in datasets)
        if unknown and ANY_DATASET not in datasets:
            raise ConfigError(
                source,
                "coordinators",
                f"coordinator {identity!r} names datasets without a [[datasets]] rule: {', '.join(unknown)}",
            )

    publishers = tuple(_publisher(t, base) for t in root.tables("publishers"))
    _unique_keys([p.key_id for p in publishers], "publishers", source)
    reviewers = tuple(_reviewer(t, base) for t in root.tables("reviewers"))
    _unique_keys([r.key_id for r in reviewers], "reviewers", source)

    packages_table = root.table("packages")
    packages = PackageRules(
        require_approval=packages_table.boolean("require_approval", True),
        allowed_names=tuple(packages_table.string_list("allowed_names") or ()),
    )
    packages_table.finish()

    limits_table = root.table("limits")
    d = Limits()
    limits = Limits(
        max_concurrent_tasks=limits_table.integer("max_concurrent_tasks", d.max_concurrent_tasks, 1, 256),
        task_memory_mb=limits_table.integer("task_memory_mb", d.task_memory_mb, 64, 1024 * 1024),
        task_seconds=limits_table.integer("task_seconds", d.task_seconds, 1, 7 * 86400),
        max_accounting_settings=limits_table.integer("max_accounting_settings", d.max_accounting_settings, 1, 4096),
    )
    limits_table.finish()
    root.finish()
    return Policy(
        coordinators=coordinators,
        datasets=datasets,
        publishers=publishers,
        reviewers=reviewers,
        packages=packages,
        limits=limits,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        source=str(source),
    )


def load_policy(path: Path) -> Policy:
    data = read_toml_file(path, missing="policy file not found")
    return parse_policy(data, path)
