"""One entry of the audit log, as written or as read back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.audit.canonical import RESERVED_KEYS


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    kind: str
    fields: Mapping[str, Any]
    prev: str
    hash: str
    # Where the record was read from; None for a record just appended.
    file: str | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        """The entry exactly as stored: header, fields, prev, hash."""
        entry: dict[str, Any] = {"seq": self.seq, "time": self.time, "kind": self.kind, **self.fields}
        entry["prev"] = self.prev
        entry["hash"] = self.hash
        return entry

    def log_fields(self) -> dict[str, Any]:
        """For structlog: `log.info(record.kind, **record.log_fields())`."""
        return {"audit_seq": self.seq, **self.fields}

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], file: str | None = None, line: int | None = None) -> AuditRecord:
        return cls(
            seq=entry["seq"],
            time=entry["time"],
            kind=entry["kind"],
            fields={key: value for key, value in entry.items() if key not in RESERVED_KEYS},
            prev=entry["prev"],
            hash=entry["hash"],
            file=file,
            line=line,
        )


def format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit clock returned a naive datetime; it must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment
