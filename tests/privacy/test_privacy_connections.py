"""The ledger's reused connections: shared by threads, beside other processes, never pinning a snapshot."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.privacy.accounting import RdpAccountant
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism

DELTA = 1e-5
GROUP = "cohort"
# Unsampled and very noisy: composing it costs nothing, so the tests measure the file, not the accountant.
CHEAP = Mechanism.dp_evaluate(50.0)
FORK = multiprocessing.get_context("fork")


def reserve(ledger: PrivacyLedger, task_id: str, coordinator: str = "c") -> None:
    ledger.reserve(
        GROUP, task_id, CHEAP, limit_epsilon=1e9, delta=DELTA, coordinator=coordinator, dataset="d", correlation_id=""
    )


def task_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT task_id FROM tasks")}


def wal_checkpoint(path: Path) -> tuple[int, int, int]:
    """(busy, WAL frames, frames checkpointed): busy = 0 means no reader holds an old snapshot."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy, frames, done


def _reserve_and_commit(path: Path, prefix: str, count: int) -> None:
    ledger = PrivacyLedger(path, RdpAccountant())
    for index in range(count):
        reserve(ledger, f"{prefix}-{index}")
        ledger.commit(f"{prefix}-{index}")
    ledger.close()
    os._exit(0)


def test_threads_and_another_process_write_one_ledger_and_leave_no_snapshot_open(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    ledger = PrivacyLedger(path, RdpAccountant())
    ledger.recover_abandoned(datetime.now(UTC))  # creates the file, as the daemon's start does
    child = FORK.Process(target=_reserve_and_commit, args=(path, "process", 40))
    child.start()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for index in range(20):
                reserve(ledger, f"{name}-{index}")
                ledger.status(GROUP)
                if index % 4:
                    ledger.commit(f"{name}-{index}")
                else:
                    ledger.refund(f"{name}-{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"thread{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    child.join(timeout=120)
    assert errors == [] and child.exitcode == 0
    status = ledger.status(GROUP)
    assert (status.tasks_committed, status.tasks_reserved) == (40 + 8 * 15, 0)
    # The ledger is still open, its connections idle: none may hold a read snapshot, or the
    # WAL could not be checkpointed to the end and truncated.
    assert wal_checkpoint(path)[0] == 0
    assert os.path.getsize(f"{path}-wal") == 0
    ledger.close()


def test_writes_of_another_connection_are_seen_by_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    daemon, cli = PrivacyLedger(path, RdpAccountant()), PrivacyLedger(path, RdpAccountant())
    reserve(daemon, "t1")
    assert daemon.status(GROUP).tasks_reserved == 1
    reserve(cli, "t2")
    cli.commit("t1")
    status = daemon.status(GROUP)
    assert (status.tasks_committed, status.tasks_reserved) == (1, 1)
    daemon.commit("t2")
    assert cli.status(GROUP).tasks_committed == 2
    daemon.close()
    cli.close()


def test_close_closes_the_connections_and_the_ledger_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    ledger = PrivacyLedger(path, RdpAccountant())
    reserve(ledger, "t1")
    assert Path(f"{path}-wal").exists()
    ledger.close()
    # The last connection closed: SQLite checkpointed and removed the WAL.
    assert not Path(f"{path}-wal").exists()
    ledger.commit("t1")
    reserve(ledger, "t2")
    assert ledger.status(GROUP).tasks_committed == 1
    ledger.close()


def test_a_forked_child_does_not_use_its_parents_connections(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    ledger = PrivacyLedger(path, RdpAccountant())
    reserve(ledger, "parent-1")
    ledger.accountant.close()  # no composing thread at the fork; ε is then computed on demand

    def child() -> None:
        reserve(ledger, "child")
        ledger.commit("child")
        os._exit(0)

    process = FORK.Process(target=child)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    reserve(ledger, "parent-2")
    ledger.close()
    assert task_ids(path) == {"parent-1", "child", "parent-2"}


def test_started_counts_for_several_windows_agree_with_one_window_at_a_time(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    clock = [now - timedelta(hours=2)]
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant(), clock=lambda: clock[0])
    windows = (now - timedelta(hours=1), now - timedelta(days=1), now + timedelta(hours=1))
    assert ledger.tasks_started_since_each("c", windows) == (0, 0, 0)
    reserve(ledger, "two-hours-ago")  # in the day's window, not the hour's
    clock[0] = now
    for index in range(3):
        reserve(ledger, f"t{index}")
    reserve(ledger, "other", coordinator="someone-else")
    counts = ledger.tasks_started_since_each("c", windows)
    assert counts == tuple(ledger.tasks_started_since_each("c", (since,))[0] for since in windows) == (3, 4, 0)
    assert ledger.tasks_started_since_each("c", ()) == ()
    ledger.close()
