"""Reading the log back and filtering it (for `audit show` and reports).

Reading does not verify: run `verify_log` for that. A line that is not an
entry raises AuditDataError naming the file and line.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audit import events
from agent.audit.errors import AuditDataError, AuditLogNotFoundError
from agent.audit.record import AuditRecord, parse_time
from agent.audit.storage import list_log_files


def read_records(directory: Path) -> Iterator[AuditRecord]:
    """Every complete entry, in log order (an unterminated last line is skipped)."""
    if not directory.is_dir():
        raise AuditLogNotFoundError(f"{directory}: no such audit directory")
    for _, path in list_log_files(directory):
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    return
                yield _parse(path, number, raw)


def _parse(path: Path, number: int, raw: bytes) -> AuditRecord:
    try:
        entry: Any = json.loads(raw.decode("ascii"))
        return AuditRecord.from_entry(entry, file=path.name, line=number)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AuditDataError(
            f"{path}:{number}: not a valid audit entry ({type(exc).__name__}); run `edge-agent audit verify`"
        ) from None


@dataclass(frozen=True)
class AuditQuery:
    """Filters; each one given must match. Times: `since` inclusive, `until` exclusive."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    coordinator: str | None = None
    dataset: str | None = None
    # A package digest, "sha256:<hex>" or a prefix of it (with or without "sha256:").
    package: str | None = None
    # Kinds; "task" matches task.started, task.finished and task.failed.
    kinds: tuple[str, ...] = ()

    def matches(self, record: AuditRecord) -> bool:
        if self.since is not None or self.until is not None:
            try:
                moment = parse_time(record.time)
            except ValueError:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment >= self.until:
                return False
        if self.kinds and not any(record.kind == k or record.kind.startswith(k.rstrip(".*") + ".") for k in self.kinds):
            return False
        if self.coordinator is not None and not _any_equal(record, events.COORDINATOR_FIELDS, self.coordinator):
            return False
        if self.dataset is not None and not _any_equal(record, events.DATASET_FIELDS, self.dataset):
            return False
        return self.package is None or _package_matches(record, self.package)


def select(records: Iterable[AuditRecord], query: AuditQuery) -> Iterator[AuditRecord]:
    return (record for record in records if query.matches(record))


def _any_equal(record: AuditRecord, names: tuple[str, ...], wanted: str) -> bool:
    return any(record.get(name) == wanted for name in names)


def _package_matches(record: AuditRecord, wanted: str) -> bool:
    wanted = wanted.lower().removeprefix("sha256:")
    for name in events.PACKAGE_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and wanted and value.lower().removeprefix("sha256:").startswith(wanted):
            return True
    return False
