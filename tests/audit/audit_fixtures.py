"""Fixtures of the audit tests: real keys, real directories, a deterministic clock."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.audit import AuditLog, events
from agent.audit.canonical import entry_hash, line_bytes
from agent.identity.agent_key import AgentKey

START = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


class SteppingClock:
    """A clock that advances by a fixed step at every reading."""

    def __init__(self, start: dt.datetime = START, step: dt.timedelta = dt.timedelta(minutes=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> dt.datetime:
        current = self.now
        self.now += self.step
        return current


@pytest.fixture(scope="session")
def agent_key() -> AgentKey:
    return AgentKey(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def other_key() -> AgentKey:
    return AgentKey(Ed25519PrivateKey.generate())


def write_log(
    directory: Path,
    key: AgentKey,
    count: int,
    *,
    checkpoint_every: int = 5,
    max_file_bytes: int = 64 * 1024 * 1024,
    close: bool = True,
    clock: Callable[[], dt.datetime] | None = None,
) -> None:
    log = AuditLog.open(
        directory, key, checkpoint_every=checkpoint_every, max_file_bytes=max_file_bytes, clock=clock or SteppingClock()
    )
    for index in range(count):
        log.append(
            "rpc.decision",
            method="ListDatasets",
            caller=f"spiffe://pharma.example/coordinator/{index % 3}",
            allowed=index % 4 != 0,
            rule="coordinator.authorised" if index % 4 else "coordinator.unknown",
            reason="ok" if index % 4 else "not in the policy",
            n=index,
        )
    log.close(final_checkpoint=close)


def log_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def rechain(lines: list[bytes], start: int, prev: str | None = None) -> list[bytes]:
    """Recomputes hashes and prev links from line `start` on, as a keyless attacker would."""
    out = list(lines[:start])
    if prev is None:
        prev = json.loads(lines[start - 1])["hash"] if start > 0 else "0" * 64
    for raw in lines[start:]:
        entry: dict[str, Any] = json.loads(raw)
        entry["prev"] = prev
        if entry["kind"] == "audit.checkpoint":
            entry["covers_hash"] = prev  # (the signature then no longer fits)
        entry["hash"] = entry_hash(entry)
        prev = entry["hash"]
        out.append(line_bytes(entry))
    return out


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "audit"


XSS_CALLER = '<script>alert("caller")</script>'
XSS_CORRELATION = '"><img src=x onerror=alert(1)>'
XSS_DATASET = "<b>bold</b>&co"


def write_usage_log(directory: Path, key: AgentKey) -> None:
    """A week of use: two datasets spending budget, denials, packages, with hostile strings.

    Written with the vocabulary's typed events, as the daemon writes them.
    """
    clock = SteppingClock(START, dt.timedelta(hours=2))
    coordinator = "spiffe://pharma.example/coordinator/eu-1"
    with AuditLog.open(directory, key, checkpoint_every=10, clock=clock) as log:
        log.record(
            events.AgentStarted(
                version="1.0", agent_id="hospital-a", fingerprint=key.fingerprint, port=7443, config="agent.toml"
            )
        )
        log.record(events.PolicyLoaded(policy_digest="sha256:" + "ab" * 32, source="/etc/edge-agent/policy.toml"))
        reviewed = (
            (events.PackageApproved, "survival-mlp", "1.2.0", "12", "reviewed <ok>"),
            (events.PackageRejected, "<i>exfil</i>", "0.1", "34", "asks for identifiers"),
        )
        for decision, name, version, digest, reason in reviewed:
            log.record(
                decision(
                    package_name=name,
                    package_version=version,
                    package_digest="sha256:" + digest * 32,
                    reviewer="dr.officer",
                    reviewer_key_id="SHA256:reviewer",
                    reason=reason,
                )
            )
        for day in range(6):
            for dataset, limit, eps in (("onco", 3.0, 0.4), ("labs", 1.0, 0.15), (XSS_DATASET, 2.0, 0.2)):
                if dataset == XSS_DATASET and day % 2:
                    continue
                about = events.TaskAbout(
                    task_id=f"t{day}{dataset}",
                    coordinator=coordinator if day % 3 else XSS_CALLER,
                    dataset=dataset,
                    budget_group=dataset,
                    package_digest="sha256:" + "12" * 32,
                    package_name="survival-mlp",
                    package_version="1.2.0",
                    task_kind="dp_gradient",
                    purpose="survival model",
                    run_id=f"run-{dataset}",
                    round=day,
                    correlation_id=XSS_CORRELATION if day == 2 else f"run-{day}",
                    # onco declares its patients; labs and the XSS dataset are counted row by row.
                    privacy_unit="patient_id" if dataset == "onco" else None,
                    max_rows_per_unit=64 if dataset == "onco" else None,
                    unit_count=(1000, 2000) if dataset == "onco" else (5000, 10000),
                )
                log.record(
                    events.TaskStarted(
                        **about,
                        hyperparameters={"noise_multiplier": 1.1, "sampling_rate": 0.01, "clip_norm": 1.0},
                        epsilon_reserved=eps * (day + 1),
                        delta=1e-5,
                    )
                )
                log.record(
                    events.TaskFinished(
                        **about,
                        epsilon_charged=eps,
                        budget_epsilon_spent=eps * (day + 1) if dataset != XSS_DATASET else eps * (day // 2 + 1),
                        budget_epsilon_limit=limit,
                        delta=1e-5,
                        released=("weights",),
                    )
                )
            log.record(
                events.RpcDecision(
                    method="StartTask",
                    coordinator=XSS_CALLER,
                    allowed=False,
                    outcome="forbidden",
                    rule="coordinator.unknown",
                    reason="coordinator <not> in policy",
                    dataset="onco",
                    policy_digest="sha256:" + "ab" * 32,
                )
            )
        failed = events.TaskAbout(
            task_id="tx",
            coordinator="c",
            dataset="labs",
            budget_group="labs",
            package_digest="sha256:" + "12" * 32,
            package_name="survival-mlp",
            package_version="1.2.0",
            task_kind="dp_gradient",
            purpose=None,
            run_id=None,
            round=None,
            correlation_id=None,
            privacy_unit=None,
            max_rows_per_unit=None,
            unit_count=None,
        )
        log.record(
            events.TaskFailed(
                **failed,
                failure="memory",
                rule=None,
                reason="worker ran out of memory",
                charged=False,
                epsilon_charged=0.0,
                budget_epsilon_spent=None,
                budget_epsilon_limit=1.0,
                delta=1e-5,
            )
        )
