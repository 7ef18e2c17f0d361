"""Limits the ledger decides in the reservation's own write transaction: per-coordinator
task rates and the number of distinct accounting settings per budget group."""

from __future__ import annotations

import multiprocessing
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.privacy.accounting import RdpAccountant
from agent.privacy.errors import AccountingSettingsError, MechanismError, RateLimitError
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger, RateLimit
from agent.privacy.mechanism import Mechanism

DELTA = 1e-5
TASK = Mechanism.dp_gradient(0.01, 1.0)
HOURLY = RateLimit(5, timedelta(hours=1), "hour")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FORK = multiprocessing.get_context("fork")


class Clock:
    """Advances by ``step`` on every reading; ``now`` can be moved by the test."""

    def __init__(self, step: timedelta = timedelta(minutes=1)) -> None:
        self.now = T0
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += self.step
            return self.now


def reserve(
    ledger: PrivacyLedger,
    task_id: str,
    *,
    coordinator: str = "c",
    mechanism: Mechanism = TASK,
    group: str = "cohort",
    rate_limits: tuple[RateLimit, ...] = (HOURLY,),
    max_settings: int | None = None,
) -> None:
    ledger.reserve(
        group,
        task_id,
        mechanism,
        limit_epsilon=1e6,
        delta=DELTA,
        coordinator=coordinator,
        dataset="d",
        correlation_id="",
        rate_limits=rate_limits,
        max_settings=max_settings,
    )


def test_32_threads_against_a_rate_limit_of_5(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=Clock(timedelta(seconds=1)))
    start = threading.Barrier(32)
    outcomes: list[str] = []

    def task(index: int) -> None:
        start.wait()
        try:
            reserve(ledger, f"t{index}")
            outcomes.append("reserved")
        except RateLimitError:
            outcomes.append("refused")

    threads = [threading.Thread(target=task, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * 27 + ["reserved"] * 5
    assert ledger.tasks_started_since_each("c", (T0,)) == (5,)


def _reserve_in_child(path: Path, start: multiprocessing.synchronize.Barrier, index: int) -> None:
    ledger = PrivacyLedger(path, RdpAccountant())
    start.wait()
    won = 0
    for j in range(4):
        try:
            reserve(ledger, f"p{index}-{j}")
            won += 1
        except RateLimitError:
            pass
    # 100 + n: a child that died of an exception (exit code 1) is not counted as a win.
    os._exit(100 + won)


def test_8_processes_against_a_rate_limit_of_5(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    # The daemon creates the ledger once at start (its recovery is the first write);
    # the processes then race to reserve.
    PrivacyLedger(path, RdpAccountant()).recover_abandoned(datetime.now(UTC))
    start = FORK.Barrier(8)
    children = [FORK.Process(target=_reserve_in_child, args=(path, start, i)) for i in range(8)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    codes = [child.exitcode for child in children]
    assert all(code is not None and code >= 100 for code in codes), codes
    assert sum(code - 100 for code in codes if code is not None) == 5
    reopened = PrivacyLedger(path, RdpAccountant())
    assert reopened.tasks_started_since_each("c", (datetime.now(UTC) - timedelta(hours=1),)) == (5,)


def test_refusal_says_when_the_next_task_may_start(tmp_path: Path) -> None:
    clock = Clock()
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=clock)
    for i in range(5):
        reserve(ledger, f"t{i}")  # at 12:01 ... 12:05
    with pytest.raises(RateLimitError) as refused:
        reserve(ledger, "t5")
    error = refused.value
    assert (error.maximum, error.started, error.per) == (5, 5, "hour")
    assert error.retry_at == T0 + timedelta(minutes=1, hours=1)
    assert "at most 5 tasks per hour" in str(error) and "2026-03-01 13:01:00 UTC" in str(error)
    # Refunded tasks were started all the same; other coordinators have their own count.
    reserve(ledger, "other", coordinator="someone-else")
    # Once the oldest task leaves the window, exactly one more may start.
    clock.now, clock.step = error.retry_at, timedelta(0)
    reserve(ledger, "t6")  # 13:01: 12:01 has left the window
    with pytest.raises(RateLimitError):
        reserve(ledger, "t7")


def test_refunded_tasks_count_as_started(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=Clock())
    limit = (RateLimit(2, timedelta(days=1), "day"),)
    reserve(ledger, "t1", rate_limits=limit)
    ledger.refund("t1")
    reserve(ledger, "t2", rate_limits=limit)
    with pytest.raises(RateLimitError, match="per day"):
        reserve(ledger, "t3", rate_limits=limit)


def test_the_strictest_window_refuses(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=Clock(timedelta(minutes=30)))
    limits = (RateLimit(2, timedelta(hours=1), "hour"), RateLimit(3, timedelta(days=1), "day"))
    for i in range(3):  # 30 minutes apart: never more than 2 in an hour
        reserve(ledger, f"t{i}", rate_limits=limits)
    with pytest.raises(RateLimitError, match="per day"):
        reserve(ledger, "t3", rate_limits=limits)


@pytest.mark.parametrize("maximum", [-1, True])
def test_invalid_rate_limits(maximum: int) -> None:
    with pytest.raises(MechanismError):
        RateLimit(maximum, timedelta(hours=1), "hour")
    with pytest.raises(MechanismError):
        RateLimit(1, timedelta(0), "hour")


def test_accounting_settings_are_capped_per_group(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=Clock())

    def task(i: int) -> Mechanism:
        return Mechanism.dp_gradient(0.01, 1.0 + i / 100)

    for i in range(3):
        reserve(ledger, f"t{i}", mechanism=task(i), rate_limits=(), max_settings=3)
    with pytest.raises(AccountingSettingsError) as refused:
        reserve(ledger, "t3", mechanism=task(3), rate_limits=(), max_settings=3)
    assert "3 distinct" in str(refused.value) and "max_accounting_settings" in str(refused.value)
    # Settings already charged stay usable, steps do not make a setting new,
    # and other budget groups have their own count.
    reserve(ledger, "again", mechanism=task(1), rate_limits=(), max_settings=3)
    reserve(ledger, "steps", mechanism=Mechanism.dp_local_training(0.01, 1.0, 7), rate_limits=(), max_settings=3)
    reserve(ledger, "elsewhere", mechanism=task(3), group="other", rate_limits=(), max_settings=3)
    # A refunded task gives its setting back (its cost was never spent, so it is not composed).
    ledger.refund("t2")
    reserve(ledger, "t3", mechanism=task(3), rate_limits=(), max_settings=3)
    # A lowered cap refuses new settings but not the ones already charged.
    reserve(ledger, "t4", mechanism=task(0), rate_limits=(), max_settings=1)
    with pytest.raises(AccountingSettingsError):
        reserve(ledger, "t5", mechanism=task(5), rate_limits=(), max_settings=1)
