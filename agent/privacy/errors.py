"""Typed errors of privacy accounting and of the budget ledger.

The server maps them to gRPC statuses: BudgetExceededError is
RESOURCE_EXHAUSTED, MechanismError is INVALID_ARGUMENT, TaskStateError and
DuplicateTaskError are FAILED_PRECONDITION, LedgerError is INTERNAL,
RateLimitError is RESOURCE_EXHAUSTED, AccountingSettingsError is
FAILED_PRECONDITION. Messages never contain data values, only budget figures,
task ids and file names.
"""

from __future__ import annotations

from datetime import UTC, datetime


class PrivacyError(Exception):
    """Base of every error raised by agent.privacy."""


class MechanismError(PrivacyError, ValueError):
    """A mechanism description that cannot be accounted (sigma ≤ 0, q outside (0, 1], ...)."""


class LedgerError(PrivacyError):
    """The ledger file cannot be read or written; the message names the file."""


class DuplicateTaskError(PrivacyError):
    """A reservation already exists for this task id (ids are never reused)."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class UnknownTaskError(PrivacyError):
    """No reservation exists for this task id."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskStateError(PrivacyError):
    """The transition is not allowed from the task's state (e.g. releasing a committed task)."""

    def __init__(self, task_id: str, state: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.state = state


class BudgetExceededError(PrivacyError):
    """Reserving the task would take the budget group's ε above its limit.

    ``spent`` is the ε of committed tasks alone, ``with_reserved`` the ε of
    committed plus in-flight tasks, ``requested`` the ε the group would reach
    with this task. ε does not add up, so ``remaining`` (limit minus
    ``with_reserved``) says how far the group is from its limit, not the ε of
    the largest task that would still fit.
    """

    def __init__(
        self,
        budget_group: str,
        *,
        spent: float,
        with_reserved: float,
        requested: float,
        limit: float,
        delta: float,
    ) -> None:
        self.budget_group = budget_group
        self.spent = spent
        self.with_reserved = with_reserved
        self.requested = requested
        self.limit = limit
        self.delta = delta
        super().__init__(
            f"privacy budget of group {budget_group!r} exceeded: this task would bring ε to "
            f"{requested:.4f} > limit {limit:.4f} (δ={delta:g}); spent ε={spent:.4f}, "
            f"with tasks in flight ε={with_reserved:.4f}, remaining ε={self.remaining:.4f}"
        )

    @property
    def reserved(self) -> float:
        """ε added by the tasks in flight on top of the committed ones."""
        return max(self.with_reserved - self.spent, 0.0)

    @property
    def remaining(self) -> float:
        return max(self.limit - self.with_reserved, 0.0)


class RateLimitError(PrivacyError):
    """The coordinator already started as many tasks in the window as the policy allows.

    ``retry_at`` is when the oldest of those tasks leaves the window, i.e. the
    earliest moment another reservation can succeed.
    """

    def __init__(self, coordinator: str, *, maximum: int, per: str, started: int, retry_at: datetime) -> None:
        self.coordinator = coordinator
        self.maximum = maximum
        self.per = per
        self.started = started
        self.retry_at = retry_at
        super().__init__(
            f"coordinator {coordinator!r} may start at most {maximum} tasks per {per}; {started} were started "
            f"in the last {per}, the next may start at {retry_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )


class AccountingSettingsError(PrivacyError):
    """The task would add one (q, sigma) setting too many to its budget group's history.

    Every distinct setting costs the accountant a PLD of its own on every
    reservation, so their number is capped to keep reservations fast.
    """

    def __init__(self, budget_group: str, *, maximum: int) -> None:
        self.budget_group = budget_group
        self.maximum = maximum
        super().__init__(
            f"budget group {budget_group!r} has already been charged with {maximum} distinct (sampling rate, "
            f"noise multiplier) settings, the most this agent's policy allows (limits.max_accounting_settings); "
            f"reuse the settings of earlier tasks"
        )
