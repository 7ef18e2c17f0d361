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

from agent.audit.errors import AuditDataError, AuditLogNotFoundError
from agent.audit.events import Role, value, with_role
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
    # A run id (the coordinator's, for one training or study).
    run: str | None = None
    # Kinds; a family ("task") matches each of its kinds (task.started, task.finished, ...).
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
        wanted = (
            (Role.COORDINATOR, self.coordinator, _equal),
            (Role.DATASET, self.dataset, _equal),
            (Role.RUN, self.run, _equal),
            (Role.PACKAGE, self.package, _digest_prefix),
        )
        return all(
            target is None or any(test(value(record, field), target) for field in with_role(role))
            for role, target, test in wanted
        )


def select(records: Iterable[AuditRecord], query: AuditQuery) -> Iterator[AuditRecord]:
    return (record for record in records if query.matches(record))


def _equal(found: Any, wanted: str) -> bool:
    return isinstance(found, str) and found == wanted


def _digest_prefix(found: Any, wanted: str) -> bool:
    """`wanted` is a digest or a prefix of its hex, with or without "sha256:"."""
    wanted = wanted.lower().removeprefix("sha256:")
    return isinstance(found, str) and bool(wanted) and found.lower().removeprefix("sha256:").startswith(wanted)
