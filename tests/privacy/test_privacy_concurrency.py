"""Concurrent tasks cannot overspend, and killing the agent never under-charges the ledger.

Child processes are forked (multiprocessing "fork") so that they start with
dp-accounting already imported: a fresh interpreter takes over a second to
import it, and the kill test starts dozens of children.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.privacy.accounting import Accountant, PldAccountant, RdpAccountant
from agent.privacy.errors import BudgetExceededError
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism

DELTA = 1e-5
GROUP = "cohort"
FORK = multiprocessing.get_context("fork")


def limit_for_exactly(n: int, mechanism: Mechanism, accountant: Accountant) -> float:
    """A limit that n tasks fit under and n + 1 do not, with margin on both sides."""
    return (accountant.epsilon([mechanism] * n, DELTA) + accountant.epsilon([mechanism] * (n + 1), DELTA)) / 2


def try_reserve(ledger: PrivacyLedger, task_id: str, mechanism: Mechanism, limit: float) -> bool:
    try:
        ledger.reserve(
            GROUP, task_id, mechanism, limit_epsilon=limit, delta=DELTA, coordinator="c", dataset="d", correlation_id=""
        )
    except BudgetExceededError:
        return False
    return True


@pytest.mark.parametrize("accountant", [RdpAccountant(), PldAccountant(1e-3)], ids=["rdp", "pld"])
def test_32_threads_against_a_budget_for_5(tmp_path: Path, accountant: Accountant) -> None:
    mechanism = Mechanism.dp_local_training(0.02, 1.0, 20)
    limit = limit_for_exactly(5, mechanism, accountant)
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, accountant)
    start = threading.Barrier(32)
    outcomes: list[bool] = []

    def task(index: int) -> None:
        start.wait()
        reserved = try_reserve(ledger, f"t{index}", mechanism, limit)
        if reserved and index % 2:
            ledger.commit(f"t{index}")  # half commit at once, half stay in flight
        outcomes.append(reserved)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 32
    assert outcomes.count(True) == 5
    status = ledger.status(GROUP)
    ledger.close()  # no background composition outlives the test
    assert status.tasks_committed + status.tasks_reserved == 5
    assert status.epsilon_with_reserved <= limit


def _reserve_in_child(path: Path, start: multiprocessing.synchronize.Barrier, index: int, limit: float) -> None:
    ledger = PrivacyLedger(path, RdpAccountant())
    mechanism = Mechanism.dp_local_training(0.02, 1.0, 20)
    start.wait()
    won = sum(try_reserve(ledger, f"p{index}-{j}", mechanism, limit) for j in range(4))
    # The exit code tells the parent how many reservations this process won; 100 + n so
    # that a child that died of an exception (exit code 1) is not counted as a win.
    os._exit(100 + won)


def test_8_processes_against_a_budget_for_5(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    limit = limit_for_exactly(5, Mechanism.dp_local_training(0.02, 1.0, 20), RdpAccountant())
    # The daemon creates the ledger once at start (its recovery is the first write);
    # the processes then race to reserve.
    PrivacyLedger(path, RdpAccountant()).recover_abandoned(datetime.now(UTC))
    start = FORK.Barrier(8)
    children = [FORK.Process(target=_reserve_in_child, args=(path, start, i, limit)) for i in range(8)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    codes = [child.exitcode for child in children]
    assert all(code is not None and code >= 100 for code in codes), codes
    assert sum(code - 100 for code in codes if code is not None) == 5
    status = PrivacyLedger(path, RdpAccountant()).status(GROUP)
    assert (status.tasks_committed, status.tasks_reserved) == (0, 5)


# ------------------------------------------------------------------ SIGKILL

# Unsampled and very noisy: each reservation composes in microseconds, so a
# child gets through many reserve/commit cycles before it is killed.
CHEAP = Mechanism.dp_evaluate(50.0)


def _reserve_commit_forever(path: Path, marker: Path, prefix: str, seed: int) -> None:
    """What RunTask does: reserve, compute, commit, and only then let the result out (the marker)."""
    ledger = PrivacyLedger(path, RdpAccountant())
    rng = random.Random(seed)
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for i in range(1_000_000):
        task_id = f"{prefix}-{i}"
        ledger.reserve(
            GROUP, task_id, CHEAP, limit_epsilon=1e9, delta=DELTA, coordinator="c", dataset="d", correlation_id=""
        )
        if rng.random() < 0.2:
            ledger.refund(task_id)  # failed before any result existed
            continue
        ledger.commit(task_id)
        os.write(fd, f"{task_id}\n".encode())
        os.fsync(fd)


def test_sigkill_mid_task_never_under_charges(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    marker = tmp_path / "released.txt"
    rng = random.Random(20260301)
    for round_ in range(25):
        child = FORK.Process(target=_reserve_commit_forever, args=(path, marker, f"r{round_}", round_))
        child.start()
        time.sleep(rng.uniform(0.02, 0.2))
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL, "the child died on its own, not from SIGKILL"

    # A kill during the marker's write leaves a partial last line: that result never left.
    text = marker.read_text() if marker.exists() else ""
    released = [line for line in text.split("\n")[:-1] if line]
    assert len(released) > 25

    ledger = PrivacyLedger(path, RdpAccountant())
    abandoned = ledger.recover_abandoned(datetime.now(UTC))
    with sqlite3.connect(path) as conn:
        states = dict(conn.execute("SELECT task_id, state FROM tasks").fetchall())
    assert all(states.get(task) == "committed" for task in released)
    assert "reserved" not in states.values()
    # Each round was killed at most once mid-task: at most one abandoned reservation per round.
    assert len(abandoned) <= 25
    print(f"{len(released)} results released, {len(abandoned)} reservations abandoned by kills")

    recorded = ledger.spent(GROUP, DELTA)
    owed = RdpAccountant().epsilon([CHEAP] * len(released), DELTA)
    assert recorded >= owed
