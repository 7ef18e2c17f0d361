"""The ledger's protocol: reserve, commit, refund, refusal, recovery after a crash, file errors."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.privacy.accounting import AccountantKind, RdpAccountant
from agent.privacy.errors import (
    AccountingSettingsError,
    BudgetExceededError,
    DuplicateTaskError,
    LedgerError,
    MechanismError,
    TaskStateError,
    UnknownTaskError,
)
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism

TASK = Mechanism.dp_local_training(0.01, 1.0, 50)
DELTA = 1e-5
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=Clock())


def reserve(ledger: PrivacyLedger, task_id: str, limit: float = 10.0, group: str = "cohort") -> float:
    reservation = ledger.reserve(
        group, task_id, TASK, limit_epsilon=limit, delta=DELTA, coordinator="c", dataset="d", correlation_id="r1"
    )
    return reservation.epsilon_after


def epsilon_of(n: int) -> float:
    return RdpAccountant().epsilon([TASK] * n, DELTA)


def test_empty_ledger_has_spent_nothing_and_creates_no_file(ledger: PrivacyLedger) -> None:
    status = ledger.status("cohort")
    assert (status.epsilon_spent, status.epsilon_with_reserved, status.tasks_committed) == (0.0, 0.0, 0)
    assert status.limit_epsilon is None and status.last_used is None
    assert ledger.groups() == []
    assert ledger.spent("cohort", DELTA) == 0.0
    assert not ledger.path.exists()


def test_reserve_commit_refund_lifecycle(ledger: PrivacyLedger) -> None:
    assert reserve(ledger, "t1") == pytest.approx(epsilon_of(1))
    assert reserve(ledger, "t2") == pytest.approx(epsilon_of(2))
    ledger.commit("t1")
    status = ledger.status("cohort")
    assert status.epsilon_spent == pytest.approx(epsilon_of(1))
    assert status.epsilon_with_reserved == pytest.approx(epsilon_of(2))
    assert status.epsilon_reserved == pytest.approx(epsilon_of(2) - epsilon_of(1))
    assert (status.tasks_committed, status.tasks_reserved) == (1, 1)
    assert status.limit_epsilon == 10.0 and status.delta == DELTA
    assert status.epsilon_remaining == pytest.approx(10.0 - epsilon_of(2))
    assert status.last_used == T0 + timedelta(minutes=2)

    ledger.refund("t2")
    status = ledger.status("cohort")
    assert status.epsilon_with_reserved == pytest.approx(epsilon_of(1))
    assert (status.tasks_committed, status.tasks_reserved) == (1, 0)
    assert ledger.spent("cohort", DELTA) == pytest.approx(epsilon_of(1))


def test_refusal_carries_spent_reserved_and_remaining(ledger: PrivacyLedger) -> None:
    limit = (epsilon_of(2) + epsilon_of(3)) / 2
    reserve(ledger, "t1", limit)
    ledger.commit("t1")
    reserve(ledger, "t2", limit)
    with pytest.raises(BudgetExceededError) as refused:
        reserve(ledger, "t3", limit)
    error = refused.value
    assert error.budget_group == "cohort"
    assert error.spent == pytest.approx(epsilon_of(1))
    assert error.with_reserved == pytest.approx(epsilon_of(2))
    assert error.reserved == pytest.approx(epsilon_of(2) - epsilon_of(1))
    assert error.requested == pytest.approx(epsilon_of(3))
    assert error.remaining == pytest.approx(limit - epsilon_of(2))
    assert "remaining ε=" in str(error) and "'cohort'" in str(error)
    # A refused task leaves no trace in the ledger (the audit log records the refusal).
    with pytest.raises(UnknownTaskError):
        ledger.commit("t3")
    # Refunding the in-flight task makes room again.
    ledger.refund("t2")
    reserve(ledger, "t3", limit)


def test_groups_are_independent(ledger: PrivacyLedger) -> None:
    limit = (epsilon_of(1) + epsilon_of(2)) / 2
    reserve(ledger, "a1", limit, group="a")
    reserve(ledger, "b1", limit, group="b")
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "a2", limit, group="a")
    assert [g.budget_group for g in ledger.groups()] == ["a", "b"]


def test_limit_and_delta_come_from_the_policy_at_each_reservation(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1", limit=10.0)
    ledger.commit("t1")
    # The hospital lowered the budget below what is already spent: nothing more fits.
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "t2", limit=epsilon_of(1))
    status = ledger.status("cohort", limit_epsilon=1.0, delta=1e-6)
    assert status.limit_epsilon == 1.0 and status.delta == 1e-6
    assert status.epsilon_spent == pytest.approx(RdpAccountant().epsilon([TASK], 1e-6))


def test_commit_is_idempotent_but_a_committed_cost_is_never_refunded(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    ledger.commit("t1")
    ledger.commit("t1")
    with pytest.raises(TaskStateError, match="cannot be refunded") as refused:
        ledger.refund("t1")
    assert refused.value.state == "committed"
    assert ledger.status("cohort").tasks_committed == 1


def test_a_refunded_task_cannot_be_committed(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    ledger.refund("t1")
    ledger.refund("t1")
    with pytest.raises(TaskStateError, match="refunded"):
        ledger.commit("t1")


def test_a_task_released_before_the_rename_reads_as_refunded(ledger: PrivacyLedger) -> None:
    """release() became refund() without a migration: existing ledgers hold 'released', and still mean it."""
    reserve(ledger, "t1")
    reserve(ledger, "t2")
    with sqlite3.connect(ledger.path) as conn:
        # What release() wrote before the rename.
        conn.execute("UPDATE tasks SET state = 'released', settled_at = ? WHERE task_id = 't2'", (T0.isoformat(),))
    status = ledger.status("cohort")
    assert (status.tasks_committed, status.tasks_reserved) == (0, 1)
    assert status.epsilon_with_reserved == pytest.approx(epsilon_of(1))
    ledger.refund("t2")
    with pytest.raises(TaskStateError, match="refunded"):
        ledger.commit("t2")


def test_task_ids_are_never_reused(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    ledger.refund("t1")
    with pytest.raises(DuplicateTaskError):
        reserve(ledger, "t1")


def test_unknown_task(ledger: PrivacyLedger) -> None:
    with pytest.raises(UnknownTaskError):
        ledger.commit("nope")
    with pytest.raises(UnknownTaskError):
        ledger.refund("nope")


@pytest.mark.parametrize("limit", [-1.0, float("inf"), float("nan")])
def test_invalid_limit_is_refused(ledger: PrivacyLedger, limit: float) -> None:
    with pytest.raises(MechanismError, match="limit"):
        reserve(ledger, "t1", limit)


def test_abandoned_reservations_count_as_spent(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    before_crash = PrivacyLedger(path, RdpAccountant())
    reserve(before_crash, "done")
    before_crash.commit("done")
    reserve(before_crash, "in-flight")
    reserve(before_crash, "failed")
    before_crash.refund("failed")
    # The agent dies here. At start-up, nobody can tell whether "in-flight"'s result left.
    after_restart = PrivacyLedger(path, RdpAccountant())
    restart = datetime(2026, 3, 2, tzinfo=UTC)
    abandoned = after_restart.recover_abandoned(restart)
    assert [a.task_id for a in abandoned] == ["in-flight"]
    assert abandoned[0].budget_group == "cohort" and abandoned[0].correlation_id == "r1"
    status = after_restart.status("cohort")
    assert (status.tasks_committed, status.tasks_reserved) == (2, 0)
    assert status.epsilon_spent == pytest.approx(epsilon_of(2))
    with sqlite3.connect(path) as conn:
        marked = conn.execute("SELECT task_id, settled_at FROM tasks WHERE abandoned = 1").fetchall()
    assert marked == [("in-flight", restart.isoformat())]
    assert after_restart.recover_abandoned(restart) == []


def test_file_is_wal_and_records_the_accountant(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    with sqlite3.connect(ledger.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert ledger.recorded_accountant() is AccountantKind.RDP


def test_missing_state_directory_is_named(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "missing" / LEDGER_FILENAME, RdpAccountant())
    with pytest.raises(LedgerError, match="does not exist"):
        reserve(ledger, "t1")


def test_damaged_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    ledger = PrivacyLedger(path, RdpAccountant())
    with pytest.raises(LedgerError, match=str(path)):
        ledger.groups()
    with pytest.raises(LedgerError, match=str(path)):
        reserve(ledger, "t1")


def test_newer_schema_is_refused(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match="newer than this agent"):
        ledger.status("cohort")


def test_a_tampered_row_is_reported_not_accounted(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("UPDATE tasks SET noise_multiplier = 0")
    with pytest.raises(LedgerError, match="invalid task"):
        ledger.status("cohort")


def test_a_projection_composes_the_plan_with_the_history_and_writes_nothing(ledger: PrivacyLedger) -> None:
    reserve(ledger, "t1")
    ledger.commit("t1")
    reserve(ledger, "t2")  # in flight: counted, as a reservation would count it
    before = ledger.status("cohort")
    planned = [TASK, TASK, TASK]  # three more of the same tasks
    assert ledger.projected("cohort", planned, delta=DELTA) == pytest.approx(epsilon_of(5))
    assert ledger.status("cohort") == before
    # The cap counts the plan's own settings only: whether a plan is refused must not tell which
    # settings the group's history (other coordinators' tasks) holds.
    with pytest.raises(AccountingSettingsError):
        ledger.projected("cohort", [Mechanism(0.5, 2.0), Mechanism(0.5, 3.0)], delta=DELTA, max_settings=1)
    ledger.projected("cohort", [Mechanism(0.5, 2.0)], delta=DELTA, max_settings=1)
    assert ledger.projected("cohort", planned, delta=DELTA, max_settings=1) == pytest.approx(epsilon_of(5))
