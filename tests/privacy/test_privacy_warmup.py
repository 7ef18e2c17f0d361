"""After a restart the daemon composes every budget group's history in the background,
so that the first task does not wait for it."""

from __future__ import annotations

from pathlib import Path

import structlog
import structlog.testing

from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism
from agent.server.assembly import warm_ledger_in_background
from tests.privacy.test_privacy_accounting import _MIX, DELTA, CountingPld


def reserve(ledger: PrivacyLedger, task_id: str, mechanism: Mechanism) -> float:
    reservation = ledger.reserve(
        "cohort", task_id, mechanism, limit_epsilon=100.0, delta=DELTA, coordinator="c", dataset="d", correlation_id=""
    )
    ledger.commit(task_id)
    return reservation.epsilon_after


def test_the_first_reservation_after_a_restart_grows_the_warmed_history(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    before = PrivacyLedger(path, CountingPld())
    for index, mechanism in enumerate(_MIX):
        reserve(before, f"t{index}", mechanism)

    accountant = CountingPld()
    restarted = PrivacyLedger(path, accountant)
    warm_ledger_in_background(restarted, structlog.get_logger()).join(timeout=120)
    composed_by_warmup = accountant.fresh_compositions
    assert composed_by_warmup >= 1
    epsilon = reserve(restarted, "after-restart", Mechanism.dp_gradient(0.02, 1.1))
    # The reservation grew a history the warm-up kept: nothing composed from scratch.
    assert accountant.fresh_compositions == composed_by_warmup
    assert epsilon > restarted.status("cohort").epsilon_spent - 1e-9


def test_an_unreadable_ledger_only_logs(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(b"not a database")
    with structlog.testing.capture_logs() as logs:
        warm_ledger_in_background(PrivacyLedger(path, CountingPld()), structlog.get_logger()).join(timeout=30)
    assert [entry["event"] for entry in logs] == ["ledger.warmup_failed"]
