"""Tamper-evident audit log: hash chain, signed checkpoints and head, verifier, reports."""

from agent.audit.errors import (
    AuditClosedError,
    AuditCorruptError,
    AuditDataError,
    AuditError,
    AuditInputError,
    AuditKeyError,
    AuditLogNotFoundError,
)
from agent.audit.log import AuditLog
from agent.audit.record import AuditRecord
from agent.audit.verify import Problem, VerificationResult, verify_log

__all__ = [
    "AuditClosedError",
    "AuditCorruptError",
    "AuditDataError",
    "AuditError",
    "AuditInputError",
    "AuditKeyError",
    "AuditLog",
    "AuditLogNotFoundError",
    "AuditRecord",
    "Problem",
    "VerificationResult",
    "verify_log",
]
