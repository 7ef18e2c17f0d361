"""The privacy budget ledger: what every task has cost each budget group, kept in SQLite.

This file is the security boundary of differential privacy: a result may leave
the agent only once its cost is committed here. The protocol, per task:

    reserve()  before any computation: refused if the group's ε, composed over
               every committed and in-flight task plus this one, would exceed
               the limit at the group's δ;
    commit()   after computing, before the result is sent;
    refund()   only if the task failed before any result existed.

("Release" is kept for what a task publishes; giving a reservation back is a
refund: in flight, it already counted against the group's limit.)

A reservation neither committed nor refunded when the agent died is counted
as spent by recover_abandoned() at start-up: nobody can tell whether its
result left, and the ledger must never be under-charged.

Every write is one BEGIN IMMEDIATE transaction (one writer at a time, across
threads and processes) on a WAL file with synchronous=FULL, so a commit that
returned survives a crash or power loss. Connections are reused across
operations (opening one per operation cost more than the operation), but none
is ever left inside a transaction: `edge-agent budget show` reads, and the CLI
may write, from another process, and an open read transaction would pin an old
WAL snapshot.
"""

from __future__ import annotations

import enum
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from agent.durable_sqlite import ReusedConnections
from agent.privacy.accounting import Accountant, AccountantKind, PldAccountant
from agent.privacy.errors import (
    AccountingSettingsError,
    BudgetExceededError,
    DuplicateTaskError,
    LedgerError,
    MechanismError,
    RateLimitError,
    TaskStateError,
    UnknownTaskError,
)
from agent.privacy.mechanism import Mechanism, step_counts

LEDGER_FILENAME = "privacy-ledger.sqlite"

# Bumped when the layout changes: an older agent refuses a newer file rather than misread it.
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id          TEXT PRIMARY KEY NOT NULL,
    budget_group     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    sampling_rate    REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps            INTEGER NOT NULL,
    epsilon_after    REAL NOT NULL,   -- the group's ε with this task, when reserved
    limit_epsilon    REAL NOT NULL,
    delta            REAL NOT NULL,
    accountant       TEXT NOT NULL,   -- 'pld' or 'rdp': what budget show composes with by default
    coordinator      TEXT NOT NULL,
    dataset          TEXT NOT NULL,
    correlation_id   TEXT NOT NULL,
    reserved_at      TEXT NOT NULL,
    settled_at       TEXT,
    abandoned        INTEGER NOT NULL DEFAULT 0  -- 1: found reserved at start-up, counted as spent
);
CREATE INDEX IF NOT EXISTS tasks_by_group ON tasks (budget_group, state);
"""


class TaskState(enum.Enum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    # Stored as 'released', its name before refund() was release(): the schema's CHECK
    # constraint and existing ledgers hold that string, so it stays (no migration).
    REFUNDED = "released"


@dataclass(frozen=True)
class RateLimit:
    """At most ``maximum`` reservations by one coordinator within ``window`` before now.

    Every reservation counts, refunded ones too: the task was started.
    ``per`` names the window in refusals ("hour", "day").
    """

    maximum: int
    window: timedelta
    per: str

    def __post_init__(self) -> None:
        if isinstance(self.maximum, bool) or not isinstance(self.maximum, int) or self.maximum < 0:
            raise MechanismError(f"a rate limit must be an integer ≥ 0, got {self.maximum!r}")
        if self.window <= timedelta(0):
            raise MechanismError(f"a rate-limit window must be positive, got {self.window}")


@dataclass(frozen=True)
class Reservation:
    task_id: str
    budget_group: str
    mechanism: Mechanism
    # The group's ε including this task and every other one in flight.
    epsilon_after: float
    limit_epsilon: float
    delta: float
    reserved_at: datetime
    # The same without this task: after - before is this task's share of the group's ε.
    epsilon_before: float = 0.0

    @property
    def epsilon_share(self) -> float:
        return max(0.0, self.epsilon_after - self.epsilon_before)


@dataclass(frozen=True)
class BudgetStatus:
    """What GetBudget and `budget show` report for one budget group."""

    budget_group: str
    epsilon_spent: float  # committed tasks only (including abandoned ones)
    epsilon_with_reserved: float  # committed plus tasks in flight
    limit_epsilon: float | None  # None: no task was ever reserved and no limit given
    delta: float | None
    tasks_committed: int
    tasks_reserved: int
    last_used: datetime | None

    @property
    def epsilon_reserved(self) -> float:
        """ε added by tasks in flight (ε is not additive: a difference of compositions)."""
        return max(self.epsilon_with_reserved - self.epsilon_spent, 0.0)

    @property
    def epsilon_remaining(self) -> float | None:
        if self.limit_epsilon is None:
            return None
        return max(self.limit_epsilon - self.epsilon_with_reserved, 0.0)


@dataclass(frozen=True)
class AbandonedTask:
    """A reservation found at start-up and counted as spent; the daemon audits each one."""

    task_id: str
    budget_group: str
    dataset: str
    coordinator: str
    correlation_id: str
    reserved_at: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PrivacyLedger:
    def __init__(
        self,
        path: Path,
        accountant: Accountant | None = None,
        *,
        busy_timeout: float = 60.0,
        clock: Callable[[], datetime] = _utc_now,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        # busy_timeout: how long a write waits for another writer. Writes are
        # tiny, but a reservation may recompute ε inside the lock (see reserve).
        self._path = path
        self._accountant = accountant if accountant is not None else PldAccountant()
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._logger = logger if logger is not None else structlog.get_logger(__name__)
        self._connections = ReusedConnections(path, busy_timeout)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def accountant(self) -> Accountant:
        return self._accountant

    def reserve(
        self,
        budget_group: str,
        task_id: str,
        mechanism: Mechanism,
        *,
        limit_epsilon: float,
        delta: float,
        coordinator: str,
        dataset: str,
        correlation_id: str,
        rate_limits: Sequence[RateLimit] = (),
        max_settings: int | None = None,
    ) -> Reservation:
        """Reserves a task's privacy cost in its budget group, before the task reads any row.

        Args:
            budget_group: the group whose ε the task is charged to.
            task_id: the task's id; never reused, not even after a refund.
            mechanism: what the task will release.
            limit_epsilon: the group's ε limit, from the policy now; finite, ≥ 0.
            delta: the δ at which the group's ε is composed and held to the limit, in (0, 1).
            coordinator: who asked; rate limits count per coordinator.
            dataset: recorded with the reservation.
            correlation_id: recorded with the reservation.
            rate_limits: the most tasks ``coordinator`` may start per window.
            max_settings: the most distinct (q, sigma) the group's committed and
                in-flight tasks may hold; None for no cap.

        Returns:
            The reservation, with the group's ε (committed and in flight) with and without this task.

        Raises:
            MechanismError: an argument is invalid; nothing was written.
            DuplicateTaskError: ``task_id`` already has a reservation.
            RateLimitError: ``coordinator`` already started ``maximum`` tasks in one window.
            AccountingSettingsError: the group would hold more than ``max_settings`` settings.
            BudgetExceededError: the group's ε with this task would be above ``limit_epsilon``.
            LedgerError: the ledger cannot be read or written.

        The four refusals are decided in the one write transaction that inserts the
        reservation, so concurrent reservations cannot pass a limit together.
        """
        _check_request(budget_group, task_id, limit_epsilon, max_settings)
        # Composing can take a second or more: the accountant composes the group's
        # history as read now, before the write lock, so that other tasks' commits do
        # not wait for it. The settings cap is checked first: composing is what it protects.
        with self._read() as conn:
            seen = [] if conn is None else self._mechanisms(conn, budget_group, _ACTIVE)
        _check_settings(budget_group, seen, mechanism, max_settings)
        epsilon = self._accountant.epsilon([*seen, mechanism], delta)
        # Set only if the task is refused: the group's committed tasks, for the refusal's figures.
        refused_committed: list[Mechanism] | None = None
        with self._write() as conn:
            # The clock is read inside the lock: reservations are stamped in the order
            # they are made, which the rate-limit count relies on.
            now = self._clock()
            if conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone():
                raise DuplicateTaskError(task_id, f"task {task_id!r} already has a reservation in {self._path}")
            for rate_limit in rate_limits:
                self._check_rate(conn, coordinator, rate_limit, now)
            # Other tasks may have changed the group since ``seen`` was read: everything
            # decided from it is decided again on the history this transaction holds.
            active = self._mechanisms(conn, budget_group, _ACTIVE)
            _check_settings(budget_group, active, mechanism, max_settings)
            if step_counts(active) != step_counts(seen):
                epsilon = self._accountant.epsilon([*active, mechanism], delta)
            if epsilon > limit_epsilon:
                refused_committed = self._mechanisms(conn, budget_group, (TaskState.COMMITTED,))
            else:
                conn.execute(
                    "INSERT INTO tasks (task_id, budget_group, state, sampling_rate, noise_multiplier, steps,"
                    " epsilon_after, limit_epsilon, delta, accountant, coordinator, dataset, correlation_id,"
                    " reserved_at) VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        task_id,
                        budget_group,
                        mechanism.sampling_rate,
                        mechanism.noise_multiplier,
                        mechanism.steps,
                        epsilon,
                        limit_epsilon,
                        delta,
                        self._accountant.kind.value,
                        coordinator,
                        dataset,
                        correlation_id,
                        now.isoformat(),
                    ),
                )
        # Whatever is composed from here on is composed after the write lock is let go.
        if refused_committed is not None:
            raise BudgetExceededError(
                budget_group,
                spent=self._accountant.epsilon(refused_committed, delta),
                with_reserved=self._accountant.epsilon(active, delta),
                requested=epsilon,
                limit=float(limit_epsilon),
                delta=delta,
            )
        # Cheap: the accountant keeps the group's composed history.
        before = self._accountant.epsilon(active, delta) if active else 0.0
        self._accountant.speculate_next(budget_group, active, mechanism, delta)
        return Reservation(task_id, budget_group, mechanism, epsilon, float(limit_epsilon), delta, now, before)

    def commit(self, task_id: str) -> None:
        """Make the reservation spent for good; returns only once that is on disk.

        Committing twice is allowed (a retry must not fail a task whose cost is
        already recorded); committing a refunded task is not.
        """
        with self._write() as conn:
            state = self._state(conn, task_id)
            if state is TaskState.REFUNDED:
                raise TaskStateError(task_id, state.value, f"task {task_id!r} was refunded; it cannot be committed")
            if state is TaskState.RESERVED:
                conn.execute(
                    "UPDATE tasks SET state = 'committed', settled_at = ? WHERE task_id = ?",
                    (self._clock().isoformat(), task_id),
                )

    def refund(self, task_id: str) -> None:
        """Gives back a reservation whose result never existed. A committed cost is never refunded.

        Refunding twice is allowed, like committing twice.

        Raises:
            UnknownTaskError: ``task_id`` has no reservation.
            TaskStateError: the task is committed.
            LedgerError: the ledger cannot be read or written.
        """
        retry: tuple[str, list[Mechanism], Mechanism, float] | None = None
        unreadable: LedgerError | None = None
        with self._write() as conn:
            state = self._state(conn, task_id)
            if state is TaskState.COMMITTED:
                raise TaskStateError(
                    task_id, state.value, f"task {task_id!r} is committed; its privacy cost cannot be refunded"
                )
            if state is TaskState.RESERVED:
                # 'released' is TaskState.REFUNDED's stored string (see TaskState).
                conn.execute(
                    "UPDATE tasks SET state = 'released', settled_at = ? WHERE task_id = ?",
                    (self._clock().isoformat(), task_id),
                )
                group, q, sigma, steps, delta = conn.execute(
                    "SELECT budget_group, sampling_rate, noise_multiplier, steps, delta FROM tasks WHERE task_id = ?",
                    (task_id,),
                ).fetchone()
                # Read in the transaction: the group's history as this refund leaves it.
                # Only for a speculation, so an unreadable task must not fail the refund.
                try:
                    mechanism = _mechanism(self._path, q, sigma, steps)
                    retry = (group, self._mechanisms(conn, group, _ACTIVE), mechanism, float(delta))
                except LedgerError as exc:
                    unreadable = exc
        if unreadable is not None:
            self._logger.warning("ledger.speculation_skipped", task_id=task_id, error=str(unreadable))
        if retry is not None:
            # A failed task is often retried: compose the shrunk history plus the same task,
            # outside the write lock.
            group, history, mechanism, delta = retry
            self._accountant.speculate(group, history, mechanism, delta)

    def close(self) -> None:
        """Stops the accountant's background compositions (waiting for a running one)
        and closes the ledger's connections.

        The accountant is closed with the ledger, also one passed in; both stay usable,
        computing every ε on demand and opening a connection per operation.
        """
        self._accountant.close()
        self._connections.close()

    def recover_abandoned(self, now: datetime) -> list[AbandonedTask]:
        """At start-up, before serving: count every reservation left by a dead agent as spent."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT task_id, budget_group, dataset, coordinator, correlation_id, reserved_at FROM tasks"
                " WHERE state = 'reserved' ORDER BY rowid"
            ).fetchall()
            conn.execute(
                "UPDATE tasks SET state = 'committed', abandoned = 1, settled_at = ? WHERE state = 'reserved'",
                (now.isoformat(),),
            )
        return [
            AbandonedTask(task_id, group, dataset, coordinator, correlation, datetime.fromisoformat(reserved_at))
            for task_id, group, dataset, coordinator, correlation, reserved_at in rows
        ]

    def projected(
        self, budget_group: str, planned: Sequence[Mechanism], *, delta: float, max_settings: int | None = None
    ) -> float:
        """The group's ε once ``planned`` is charged as well: privacy planning, nothing written.

        Args:
            budget_group: the group whose committed and in-flight tasks the plan adds to.
            planned: the tasks a run would add (each Mechanism may stand for many tasks).
            delta: the δ at which the group is held to its limit, in (0, 1).
            max_settings: the most distinct (q, sigma) the projection may hold, as for a
                reservation: composing is what it protects.

        Returns:
            ε of the group's committed, reserved and planned tasks, composed at ``delta``.

        Raises:
            MechanismError: ``delta`` is not in (0, 1).
            AccountingSettingsError: the plan itself holds more than ``max_settings`` settings (the
                group's own are not counted: the answer must not tell which settings others used).
            LedgerError: the ledger cannot be read.
        """
        # The cap counts the plan's own settings, not the group's: whether a setting is accepted
        # must not tell a coordinator which settings others have used.
        seen: list[Mechanism] = []
        for mechanism in planned:
            _check_settings(budget_group, seen, mechanism, max_settings)
            seen.append(mechanism)
        with self._read() as conn:
            active = [] if conn is None else self._mechanisms(conn, budget_group, _ACTIVE)
        # Composed afresh and kept nowhere: a what-if must not displace the group's real history.
        return self._accountant.uncached_epsilon([*active, *planned], delta)

    def spent(self, budget_group: str, delta: float) -> float:
        """ε of the group's committed tasks at ``delta``."""
        with self._read() as conn:
            committed = [] if conn is None else self._mechanisms(conn, budget_group, (TaskState.COMMITTED,))
        return self._accountant.epsilon(committed, delta)

    def status(
        self, budget_group: str, *, limit_epsilon: float | None = None, delta: float | None = None
    ) -> BudgetStatus:
        """The group's figures; limit and δ default to those of its latest reservation."""
        with self._read() as conn:
            if conn is None:
                committed: list[Mechanism] = []
                active: list[Mechanism] = []
                row = None
            else:
                conn.execute("BEGIN")  # one snapshot for all the reads below
                committed = self._mechanisms(conn, budget_group, (TaskState.COMMITTED,))
                active = self._mechanisms(conn, budget_group, _ACTIVE)
                row = conn.execute(
                    "SELECT limit_epsilon, delta, reserved_at FROM tasks WHERE budget_group = ?"
                    " ORDER BY rowid DESC LIMIT 1",
                    (budget_group,),
                ).fetchone()
                conn.execute("COMMIT")
        limit = limit_epsilon if limit_epsilon is not None else (None if row is None else float(row[0]))
        at_delta = delta if delta is not None else (None if row is None else float(row[1]))
        # With no δ known there is no task either, and no task costs ε = 0 at any δ.
        spent = 0.0 if at_delta is None else self._accountant.epsilon(committed, at_delta)
        with_reserved = 0.0 if at_delta is None else self._accountant.epsilon(active, at_delta)
        return BudgetStatus(
            budget_group=budget_group,
            epsilon_spent=spent,
            epsilon_with_reserved=with_reserved,
            limit_epsilon=limit,
            delta=at_delta,
            tasks_committed=len(committed),
            tasks_reserved=len(active) - len(committed),
            last_used=None if row is None else datetime.fromisoformat(row[2]),
        )

    def tasks_started_since_each(self, coordinator: str, sinces: Sequence[datetime]) -> tuple[int, ...]:
        """For each of ``sinces``, the reservations by ``coordinator`` at or after it (the policy's rate
        limits count these), counted in one query (one snapshot)."""
        if not sinces:
            return ()
        with self._read() as conn:
            if conn is None:
                return tuple(0 for _ in sinces)
            # TOTAL() is 0.0, not NULL, when the coordinator has no task.
            columns = ", ".join("TOTAL(reserved_at >= ?)" for _ in sinces)
            row = conn.execute(
                f"SELECT {columns} FROM tasks WHERE coordinator = ?",  # noqa: S608 - only placeholders are interpolated
                (*(since.astimezone(UTC).isoformat() for since in sinces), coordinator),
            ).fetchone()
        return tuple(int(count) for count in row)

    def groups(self) -> list[BudgetStatus]:
        """Status of every budget group that has ever had a reservation, sorted by name."""
        with self._read() as conn:
            names = [] if conn is None else [r[0] for r in conn.execute("SELECT DISTINCT budget_group FROM tasks")]
        return [self.status(name) for name in sorted(names)]

    def recorded_accountant(self) -> AccountantKind | None:
        """The accountant of the latest reservation (the daemon's), or None for an empty ledger."""
        with self._read() as conn:
            row = (
                None
                if conn is None
                else conn.execute("SELECT accountant FROM tasks ORDER BY rowid DESC LIMIT 1").fetchone()
            )
        return None if row is None else AccountantKind(row[0])

    # ------------------------------------------------------------------ internals

    def _mechanisms(
        self, conn: sqlite3.Connection, budget_group: str, states: tuple[TaskState, ...]
    ) -> list[Mechanism]:
        marks = ", ".join("?" for _ in states)
        rows = conn.execute(
            f"SELECT sampling_rate, noise_multiplier, steps FROM tasks WHERE budget_group = ? AND state IN ({marks})",  # noqa: S608 - only placeholders are interpolated
            (budget_group, *(s.value for s in states)),
        ).fetchall()
        return [_mechanism(self._path, q, sigma, k) for q, sigma, k in rows]

    @staticmethod
    def _check_rate(conn: sqlite3.Connection, coordinator: str, rate_limit: RateLimit, now: datetime) -> None:
        # A task reserved exactly one window ago has left it: retry_at below is then exact.
        since = (now - rate_limit.window).astimezone(UTC).isoformat()
        (started,) = conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE coordinator = ? AND reserved_at > ?", (coordinator, since)
        ).fetchone()
        if started < rate_limit.maximum:
            return
        # Another task may start once all but maximum - 1 of these have left the window.
        row = conn.execute(
            "SELECT reserved_at FROM tasks WHERE coordinator = ? AND reserved_at > ?"
            " ORDER BY reserved_at LIMIT 1 OFFSET ?",
            (coordinator, since, started - rate_limit.maximum),
        ).fetchone()
        retry_at = now if row is None else datetime.fromisoformat(row[0]) + rate_limit.window
        raise RateLimitError(
            coordinator, maximum=rate_limit.maximum, per=rate_limit.per, started=int(started), retry_at=retry_at
        )

    def _state(self, conn: sqlite3.Connection, task_id: str) -> TaskState:
        row = conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise UnknownTaskError(task_id, f"task {task_id!r} has no reservation in {self._path}")
        return TaskState(row[0])

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        # sqlite3's messages ("database is locked") do not say which file.
        try:
            yield
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot {action} the privacy ledger {self._path}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection, or None before the first reservation ever (mode=ro never creates the file)."""
        if not self._path.exists():
            yield None
            return
        with self._errors("read"), self._connections.read() as conn:
            yield conn if self._has_table(conn) else None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a BEGIN IMMEDIATE transaction, committed (durably) on success."""
        if not self._path.parent.is_dir():
            # Creating the state directory is the installer's job (owner and mode matter).
            raise LedgerError(
                f"cannot open the privacy ledger {self._path}: directory {self._path.parent} does not exist"
            )
        # synchronous=FULL: a result sent after commit() is never missing from the ledger.
        with self._errors("write"), self._connections.write() as conn:
            if not self._has_table(conn):
                # executescript() would COMMIT the IMMEDIATE transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            yield conn

    def _has_table(self, conn: sqlite3.Connection) -> bool:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise LedgerError(
                f"the privacy ledger {self._path} has schema version {version}, newer than this agent "
                f"supports ({_SCHEMA_VERSION}); upgrade the agent"
            )
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'").fetchone()
        return found is not None


def _mechanism(path: Path, q: float, sigma: float, steps: int) -> Mechanism:
    """A task's mechanism as read from the ledger at ``path`` (SQLite may hand a REAL back as an int)."""
    try:
        return Mechanism(float(q), float(sigma), int(steps))
    except MechanismError as exc:
        raise LedgerError(f"the privacy ledger {path} holds an invalid task: {exc}") from exc


# Tasks whose cost counts against the budget: committed, and reserved (in flight).
_ACTIVE = (TaskState.COMMITTED, TaskState.RESERVED)


def _check_request(budget_group: str, task_id: str, limit_epsilon: float, max_settings: int | None) -> None:
    """reserve()'s arguments that the mechanism and the accountant do not check themselves."""
    if not task_id or not budget_group:
        raise MechanismError("a reservation needs a task id and a budget group")
    if max_settings is not None and max_settings < 1:
        raise MechanismError(f"the number of accounting settings must be ≥ 1, got {max_settings!r}")
    if isinstance(limit_epsilon, bool) or not isinstance(limit_epsilon, int | float):
        raise MechanismError(f"the ε limit must be a number, got {limit_epsilon!r}")
    if not (math.isfinite(limit_epsilon) and limit_epsilon >= 0.0):
        raise MechanismError(f"the ε limit must be finite and ≥ 0, got {limit_epsilon!r}")


def _check_settings(
    budget_group: str, history: list[Mechanism], mechanism: Mechanism, max_settings: int | None
) -> None:
    """Refuses a new (q, sigma) once the history holds ``max_settings`` of them: each costs a PLD to compose.

    A task that reuses a setting is never refused here, even if a lowered cap is
    already exceeded: it adds no accounting cost.
    """
    if max_settings is None:
        return
    settings = {(m.sampling_rate, m.noise_multiplier) for m in history}
    if (mechanism.sampling_rate, mechanism.noise_multiplier) not in settings and len(settings) >= max_settings:
        raise AccountingSettingsError(budget_group, maximum=max_settings)
