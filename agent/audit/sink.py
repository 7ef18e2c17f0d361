"""What the rest of the agent needs of the audit log: somewhere to record events of the vocabulary."""

from __future__ import annotations

from typing import Protocol

from agent.audit.events import AuditEvent


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> object: ...
