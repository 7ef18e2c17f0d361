"""Speculative composition: the next round's ε is composed in the background, and stays exact.

Which thread composed what is counted with a hook on the accountant
(``_compute`` runs on every ε cache miss, on the thread that does the work);
nothing here measures time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy.accounting import PldAccountant, _NextMechanism
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger, Reservation
from agent.privacy.mechanism import Mechanism, StepCounts, step_counts
from tests.privacy.test_privacy_accounting import DELTA, FAST_PLD

ROUND = Mechanism.dp_gradient(0.02, 1.1)
OTHER = Mechanism.dp_local_training(0.05, 1.5, 3)


class ThreadCountingPld(PldAccountant):
    """Records, for every ε computed (not found in the cache), the thread that computed it."""

    def __init__(self) -> None:
        super().__init__(FAST_PLD)
        self.computed: list[tuple[threading.Thread, StepCounts]] = []
        self._record = threading.Lock()

    def _compute(self, counts: StepCounts, delta: float) -> float:
        with self._record:
            self.computed.append((threading.current_thread(), counts))
        return super()._compute(counts, delta)

    def computed_on(self, thread: threading.Thread) -> list[StepCounts]:
        with self._record:
            return [counts for who, counts in self.computed if who is thread]

    def computed_elsewhere(self, thread: threading.Thread) -> list[StepCounts]:
        with self._record:
            return [counts for who, counts in self.computed if who is not thread]


@pytest.fixture
def accountant() -> ThreadCountingPld:
    return ThreadCountingPld()


@pytest.fixture
def ledger(tmp_path: Path, accountant: ThreadCountingPld) -> Iterator[PrivacyLedger]:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, accountant)
    yield ledger
    ledger.close()


def reserve(ledger: PrivacyLedger, task_id: str, mechanism: Mechanism, limit: float = 100.0) -> Reservation:
    return ledger.reserve(
        "cohort", task_id, mechanism, limit_epsilon=limit, delta=DELTA, coordinator="c", dataset="d", correlation_id=""
    )


def test_the_next_round_composes_nothing_on_the_callers_thread(
    ledger: PrivacyLedger, accountant: ThreadCountingPld
) -> None:
    here = threading.current_thread()
    reserve(ledger, "warm-up", OTHER)
    ledger.commit("warm-up")
    for round_ in range(6):
        accountant.wait_for_speculation()
        before = len(accountant.computed_on(here))
        reservation = reserve(ledger, f"round-{round_}", ROUND)
        ledger.commit(f"round-{round_}")
        if round_ > 0:
            # Round 0's history + ROUND was speculated after the warm-up (OTHER, not ROUND);
            # from then on every round's ε was composed by the speculation.
            assert accountant.computed_on(here)[before:] == []
        assert reservation.epsilon_after > reservation.epsilon_before
    speculated = accountant.computed_elsewhere(here)
    assert step_counts([OTHER, *[ROUND] * 6]) in speculated


def test_training_and_evaluation_in_turn_compose_nothing_on_the_callers_thread(
    ledger: PrivacyLedger, accountant: ThreadCountingPld
) -> None:
    """With evaluation every round the group's tasks alternate: the guess is what followed last time."""
    here = threading.current_thread()
    evaluation = Mechanism.dp_evaluate(4.0)
    tasks = [mechanism for _ in range(5) for mechanism in (ROUND, evaluation)]
    for index, mechanism in enumerate(tasks):
        accountant.wait_for_speculation()
        before = len(accountant.computed_on(here))
        reserve(ledger, f"t{index}", mechanism)
        ledger.commit(f"t{index}")
        # The first training and evaluation teach the order; the second training is the
        # last reservation that composes its own ε.
        if index > 2:
            assert accountant.computed_on(here)[before:] == [], index


@settings(max_examples=50, deadline=None)
@given(
    period=st.lists(
        st.builds(Mechanism, st.sampled_from([0.01, 0.02, 1.0]), st.sampled_from([1.0, 2.0]), st.integers(1, 3)),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    repeats=st.integers(2, 4),
)
def test_the_guess_follows_any_repeated_sequence_of_distinct_tasks(period: list[Mechanism], repeats: int) -> None:
    guesses = _NextMechanism()
    sequence = period * repeats
    for index, mechanism in enumerate(sequence[:-1]):
        guess = guesses.after("cohort", mechanism)
        # Once every step of the period has been followed once, every guess is right.
        if index >= len(period):
            assert guess == sequence[index + 1]
    assert guesses.after("other", period[0]) == period[0]  # nothing known: the same again


def test_the_guesses_are_bounded() -> None:
    guesses = _NextMechanism(groups=4, per_group=3)
    for group in range(10):
        for steps in range(1, 10):
            guesses.after(f"g{group}", Mechanism(0.01, 1.0, steps))
    assert len(guesses._last) == len(guesses._followers) == 4
    assert all(len(followers) == 3 for followers in guesses._followers.values())


def test_the_reserved_epsilon_is_that_of_a_fresh_composition(
    ledger: PrivacyLedger, accountant: ThreadCountingPld
) -> None:
    history: list[Mechanism] = []
    for round_, mechanism in enumerate([ROUND, ROUND, OTHER, ROUND, ROUND, Mechanism.dp_evaluate(4.0), ROUND]):
        accountant.wait_for_speculation()
        reservation = reserve(ledger, f"t{round_}", mechanism)
        ledger.commit(f"t{round_}")
        history.append(mechanism)
        fresh = PldAccountant(FAST_PLD)
        # Incremental and tree compositions differ only by floating-point rounding and tail truncation.
        assert reservation.epsilon_after == pytest.approx(fresh.epsilon(history, DELTA), rel=1e-6)
        # And the speculation composed what the reservation would have composed itself, to
        # rounding (the history grown may be another kept part: measured 2e-11 relative).
        not_speculating = PldAccountant(FAST_PLD)
        for end in range(1, len(history) + 1):
            not_speculating.epsilon(history[:end], DELTA)
        assert reservation.epsilon_after == pytest.approx(not_speculating.epsilon(history, DELTA), rel=1e-9)


def test_a_reservation_waits_for_the_speculation_of_its_history(tmp_path: Path) -> None:
    """Arriving while its ε is being speculated, a reservation takes that result instead of composing it again."""

    class HeldSpeculation(ThreadCountingPld):
        def __init__(self) -> None:
            super().__init__()
            self.speculating = threading.Event()
            self.waiting = threading.Event()

        def _compute(self, counts: StepCounts, delta: float) -> float:
            if threading.current_thread().name == "privacy-speculation":
                self.speculating.set()
                # Held until the reservation waits for this very result.
                self.waiting.wait(timeout=60)
            return super()._compute(counts, delta)

        def _waiting_for(self, key: tuple[StepCounts, float]) -> None:
            self.waiting.set()

    accountant = HeldSpeculation()
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, accountant)
    first = reserve(ledger, "first", ROUND)
    ledger.commit("first")
    assert accountant.speculating.wait(timeout=60)
    results: list[Reservation] = []
    second = threading.Thread(target=lambda: results.append(reserve(ledger, "second", ROUND)))
    second.start()
    second.join(timeout=120)
    ledger.close()
    assert accountant.waiting.is_set()
    assert accountant.computed_on(second) == []
    assert [counts for _, counts in accountant.computed].count(step_counts([ROUND, ROUND])) == 1
    assert results[0].epsilon_after > first.epsilon_after
    assert results[0].epsilon_before == first.epsilon_after


def test_a_refund_speculates_the_retry(ledger: PrivacyLedger, accountant: ThreadCountingPld) -> None:
    here = threading.current_thread()
    for i in range(3):
        reserve(ledger, f"t{i}", ROUND)
        ledger.commit(f"t{i}")
    reserve(ledger, "a", OTHER)
    reserve(ledger, "b", ROUND)
    reserve(ledger, "c", ROUND)
    ledger.refund("a")
    # The history is now 4 x ROUND, which no reservation had; retrying b would make it 5.
    ledger.refund("b")
    accountant.wait_for_speculation()
    assert step_counts([ROUND] * 5) in accountant.computed_elsewhere(here)
    before = len(accountant.computed_on(here))
    retry = reserve(ledger, "b-again", ROUND)
    assert accountant.computed_on(here)[before:] == []
    assert retry.epsilon_after == pytest.approx(PldAccountant(FAST_PLD).epsilon([ROUND] * 5, DELTA), rel=1e-6)


def test_a_group_keeps_few_composed_histories(ledger: PrivacyLedger, accountant: ThreadCountingPld) -> None:
    """Memory: the speculation keeps the history it grew from, but only until the group moves on."""
    for round_ in range(12):
        reserve(ledger, f"r{round_}", ROUND)
        ledger.commit(f"r{round_}")
        accountant.wait_for_speculation()
        assert accountant.kept_histories <= 3
    # A wrong guess is dropped too: the group took OTHER, not ROUND.
    reserve(ledger, "other", OTHER)
    accountant.wait_for_speculation()
    reserve(ledger, "other-again", OTHER)
    accountant.wait_for_speculation()
    assert step_counts([*[ROUND] * 13]) not in accountant._histories
    assert accountant.kept_histories <= 3


def test_a_failed_speculation_is_logged_and_the_reservation_composes(tmp_path: Path) -> None:
    class FailingSpeculation(ThreadCountingPld):
        def _compute(self, counts: StepCounts, delta: float) -> float:
            if threading.current_thread().name == "privacy-speculation":
                raise ValueError("a broken PLD")
            return super()._compute(counts, delta)

    accountant = FailingSpeculation()
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, accountant)
    with structlog.testing.capture_logs() as logs:
        reserve(ledger, "first", ROUND)
        accountant.wait_for_speculation()
    assert [entry["event"] for entry in logs] == ["privacy.speculation_failed"]
    second = reserve(ledger, "second", ROUND)
    ledger.close()
    assert step_counts([ROUND, ROUND]) in accountant.computed_on(threading.current_thread())
    assert second.epsilon_after == pytest.approx(PldAccountant(FAST_PLD).epsilon([ROUND, ROUND], DELTA), rel=1e-6)


def test_no_thread_is_left_after_close(ledger: PrivacyLedger, accountant: ThreadCountingPld) -> None:
    here = threading.current_thread()
    reserve(ledger, "t0", ROUND)
    accountant.wait_for_speculation()
    for i in range(1, 4):
        reserve(ledger, f"t{i}", ROUND)  # the last speculation is probably still running
    ledger.close()
    speculators = {thread for thread, _ in accountant.computed if thread is not here}
    assert speculators
    assert not any(thread.is_alive() for thread in speculators)
    # Closed, it no longer speculates but still answers.
    speculated = len(accountant.computed_elsewhere(here))
    assert reserve(ledger, "after-close", ROUND).epsilon_after > 0
    accountant.wait_for_speculation()
    assert len(accountant.computed_elsewhere(here)) == speculated


def test_concurrent_reservations_record_the_epsilon_of_their_history(
    ledger: PrivacyLedger, accountant: ThreadCountingPld
) -> None:
    """32 threads, two mechanisms, speculation running: every stored ε is that of the tasks before it."""
    start = threading.Barrier(32)

    def task(index: int) -> None:
        start.wait()
        reserve(ledger, f"t{index:02}", ROUND if index % 3 else OTHER, limit=1e9)
        if index % 2:
            ledger.commit(f"t{index:02}")

    threads = [threading.Thread(target=task, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    ledger.close()
    with sqlite3.connect(ledger.path) as conn:
        rows = conn.execute("SELECT sampling_rate, noise_multiplier, steps, epsilon_after FROM tasks ORDER BY rowid")
        stored = [(Mechanism(q, sigma, steps), epsilon) for q, sigma, steps, epsilon in rows]
    assert len(stored) == 32
    fresh = PldAccountant(FAST_PLD)
    for end in range(1, len(stored) + 1):
        history = [mechanism for mechanism, _ in stored[:end]]
        # Exactly the ε this accountant computed for that multiset of tasks, and a fresh composition's.
        assert stored[end - 1][1] == accountant.epsilon(history, DELTA)
        assert stored[end - 1][1] == pytest.approx(fresh.epsilon(history, DELTA), rel=1e-6)


def test_an_unreadable_history_does_not_fail_a_refund(ledger: PrivacyLedger) -> None:
    """The refund reads the group's history only to speculate: a broken row elsewhere is logged, not raised."""
    reserve(ledger, "broken", ROUND)
    reserve(ledger, "failed", ROUND)
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("UPDATE tasks SET steps = 0 WHERE task_id = 'broken'")
    with structlog.testing.capture_logs() as logs:
        ledger.refund("failed")
    assert [entry["event"] for entry in logs] == ["ledger.speculation_skipped"]
    with sqlite3.connect(ledger.path) as conn:
        # Refunded is stored as 'released', as before the rename (see TaskState).
        assert conn.execute("SELECT state FROM tasks WHERE task_id = 'failed'").fetchone() == ("released",)
