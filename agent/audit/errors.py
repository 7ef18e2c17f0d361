"""Typed errors of the audit log and its tools.

Two families, so the command line can map them to exit codes without
knowing every class:

- `AuditInputError` (exit 2): the person can fix the input — a wrong
  directory, an unreadable or wrong public-key file, a bad time filter.
- `AuditDataError` (exit 1): the log itself or the environment is at fault —
  a corrupt tail the writer will not chain onto, an unreadable file.

A log that verifies as broken is not an exception: `verify_log` returns a
result and `edge-agent audit verify` exits 1.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base of every audit-log error."""


class AuditInputError(AuditError):
    """Input the person can fix (exit code 2)."""


class AuditDataError(AuditError):
    """The log or its environment is at fault (exit code 1)."""


class AuditLogNotFoundError(AuditInputError):
    """The audit directory does not exist or holds no log."""


class AuditKeyError(AuditInputError):
    """A public-key file is missing, unreadable or not an Ed25519 key."""


class AuditCorruptError(AuditDataError):
    """The log's tail is not a valid entry; the writer refuses to chain onto it."""


class AuditClosedError(AuditError):
    """append() after close(): a programming error in the caller."""
