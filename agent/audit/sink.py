"""What the gRPC layer needs of the audit log: somewhere to append security-relevant events."""

from __future__ import annotations

from typing import Any, Protocol


class AuditSink(Protocol):
    def append(self, kind: str, **fields: Any) -> object: ...
