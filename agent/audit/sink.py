"""What the gRPC layer needs of the audit log: somewhere to append security-relevant events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class AuditSink(Protocol):
    def append(self, kind: str, **fields: Any) -> object: ...

    def append_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> object:
        """Appends (kind, fields) pairs in order, durably, as one write."""
        ...
