"""The error a malformed task request raises, from the wire parser to the package check."""

from __future__ import annotations


class TaskSpecError(ValueError):
    """The task request is malformed or does not fit its package; the message names the field."""
