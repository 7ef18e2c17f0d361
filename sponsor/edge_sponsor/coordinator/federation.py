"""The federation file: which agents to dial, with which credentials, and how to train.

A TOML file read as strictly as agent.toml (unknown keys are errors naming the
file and key; relative paths are relative to the file)::

    [federation]
    name = "breast-cancer-study"
    ca_file = "pki/ca.crt"              # signed the agents' server certificates
    cert_file = "pki/coordinator.crt"   # our client certificate
    key_file = "pki/coordinator.key"

    [[agents]]
    name = "hospital-a"
    address = "10.1.2.3:7443"
    dataset = "breast-cancer"

    [training]
    algorithm = "fedsgd"
    rounds = 30
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.config.errors import ConfigError
from agent.config.toml_table import TomlTable, decode_utf8, read_toml_file

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Agents repeat a working task's progress every 10 s; a shorter stall limit would
# cut off tasks that are merely busy.
MIN_STALL_SECONDS = 15.0


class Algorithm(StrEnum):
    # One noisy clipped gradient sum per site and round, averaged on the server.
    FEDSGD = "fedsgd"
    # K local DP-SGD steps per site and round; the server averages the deltas.
    FEDAVG = "fedavg"


class ServerOptimizerKind(StrEnum):
    SGD = "sgd"
    ADAM = "adam"


@dataclass(frozen=True)
class Site:
    """One hospital's agent and the dataset the study uses there."""

    name: str
    address: str
    dataset: str


@dataclass(frozen=True)
class TrainingPlan:
    algorithm: Algorithm = Algorithm.FEDSGD
    rounds: int = 20
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    sampling_rate: float = 0.1
    # DP-FedAvg only: local DP-SGD steps and their learning rate, on the agent.
    local_steps: int = 5
    local_learning_rate: float = 0.1
    server_optimizer: ServerOptimizerKind = ServerOptimizerKind.ADAM
    server_learning_rate: float = 0.1
    # SGD only; Adam uses the usual beta1 = 0.9, beta2 = 0.999.
    momentum: float = 0.0
    # Federated evaluation (dp_evaluate) every this many rounds, and after the last.
    evaluate_every: int = 1
    evaluation_noise_multiplier: float = 5.0
    evaluation_sampling_rate: float = 1.0
    # Each evaluation also asks for the noisy count of units that lost a row to a missing value
    # (DPHyperparameters.release_dropped_units, charged); needs evaluation_sampling_rate = 1.
    evaluation_release_dropped_units: bool = False
    # A round updates the model only with results from at least this many sites
    # (the federation file's default is a majority of its agents).
    quorum: int = 1
    # A task on which nothing moved for this long (no event from the agent, no
    # parameter chunk taken by the transport) is cancelled and its site left out
    # of the round. Agents repeat their progress every 10 s while they work.
    task_stall_seconds: float = 60.0
    # An optional overall cap per task, however much it moves; None: no cap.
    task_deadline_seconds: float | None = None
    # The run stops after this many rounds in a row without a quorum.
    max_failed_rounds: int = 3
    # Recorded in every agent's audit log; checked against data-use agreements.
    purpose: str = ""


@dataclass(frozen=True)
class Federation:
    name: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    # Overrides the TLS host name check (development PKIs issue "localhost").
    server_name: str | None
    connect_seconds: float
    sites: tuple[Site, ...]
    training: TrainingPlan
    source: Path


def _site(table: TomlTable) -> Site:
    name = table.required_string("name")
    if not SITE_NAME.match(name):
        raise table.error("name", f"must be 1-64 letters, digits, '.', '_' or '-'; got {name!r}")
    address = table.required_string("address")
    if ":" not in address:
        raise table.error("address", f"expected host:port, got {address!r}")
    site = Site(name=name, address=address, dataset=table.required_string("dataset"))
    table.finish()
    return site


def _training(table: TomlTable, site_count: int) -> TrainingPlan:
    default = TrainingPlan()
    plan = TrainingPlan(
        algorithm=Algorithm(table.choice("algorithm", default.algorithm, tuple(a.value for a in Algorithm))),
        rounds=table.integer("rounds", default.rounds, 1, 100_000),
        clip_norm=table.number("clip_norm", default.clip_norm, 1e-9, 1e9),
        noise_multiplier=table.number("noise_multiplier", default.noise_multiplier, 0.0, 1e6),
        sampling_rate=table.number("sampling_rate", default.sampling_rate, 1e-9, 1.0),
        local_steps=table.integer("local_steps", default.local_steps, 1, 100_000),
        local_learning_rate=table.number("local_learning_rate", default.local_learning_rate, 1e-12, 1e6),
        server_optimizer=ServerOptimizerKind(
            table.choice("server_optimizer", default.server_optimizer, tuple(k.value for k in ServerOptimizerKind))
        ),
        server_learning_rate=table.number("server_learning_rate", default.server_learning_rate, 1e-12, 1e6),
        momentum=table.number("momentum", default.momentum, 0.0, 0.999),
        evaluate_every=table.integer("evaluate_every", default.evaluate_every, 0, 100_000),
        evaluation_noise_multiplier=table.number(
            "evaluation_noise_multiplier", default.evaluation_noise_multiplier, 0.0, 1e6
        ),
        evaluation_sampling_rate=table.number("evaluation_sampling_rate", default.evaluation_sampling_rate, 1e-9, 1.0),
        evaluation_release_dropped_units=table.boolean(
            "evaluation_release_dropped_units", default.evaluation_release_dropped_units
        ),
        quorum=table.integer("quorum", site_count // 2 + 1, 1, 10_000),
        task_stall_seconds=table.number("task_stall_seconds", default.task_stall_seconds, MIN_STALL_SECONDS, 86_400.0),
        task_deadline_seconds=table.optional_number("task_deadline_seconds", 0.1, 7 * 86_400.0),
        max_failed_rounds=table.integer("max_failed_rounds", default.max_failed_rounds, 1, 100_000),
        purpose=table.string("purpose", default.purpose) or "",
    )
    if plan.quorum > site_count:
        raise table.error("quorum", f"is {plan.quorum} but the federation lists only {site_count} agents")
    if plan.evaluation_release_dropped_units and plan.evaluation_sampling_rate != 1.0:
        # Every agent would refuse the evaluations (agent.tasks.kinds.profile): said here, before any is sent.
        raise table.error(
            "evaluation_release_dropped_units",
            "needs evaluation_sampling_rate = 1: a unit dropped for a missing value is in no sample",
        )
    table.finish()
    return plan


def parse_federation(text: str, source: Path) -> Federation:
    """Parses and checks a federation file's text; errors name `source` and the key."""
    root = TomlTable.parse(text, source)
    base = source.parent.resolve()
    header = root.table("federation")
    name = header.required_string("name")
    ca_file = header.path("ca_file", base)
    cert_file = header.path("cert_file", base)
    key_file = header.path("key_file", base)
    server_name = header.string("server_name")
    connect_seconds = header.number("connect_seconds", 10.0, 0.1, 3600.0)
    header.finish()

    site_tables = root.tables("agents")
    if not site_tables:
        raise root.error("agents", "list at least one agent as [[agents]] with name, address and dataset")
    sites = tuple(_site(table) for table in site_tables)
    names: set[str] = set()
    addresses: set[str] = set()
    for index, site in enumerate(sites):
        if site.name in names:
            raise ConfigError(source, f"agents[{index}].name", f"{site.name!r} is listed twice")
        if site.address in addresses:
            # One agent twice would count twice in the quorum and in the average.
            raise ConfigError(source, f"agents[{index}].address", f"{site.address!r} is listed twice")
        names.add(site.name)
        addresses.add(site.address)
    training = _training(root.table("training"), len(sites))
    root.finish()
    return Federation(
        name=name,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        server_name=server_name or None,
        connect_seconds=connect_seconds,
        sites=sites,
        training=training,
        source=source,
    )


def load_federation(path: Path) -> Federation:
    return parse_federation(decode_utf8(read_toml_file(path), path), path)
