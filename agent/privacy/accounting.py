"""ε of a list of mechanisms at a δ, with Google's dp-accounting.

Two accountants, both for Poisson sampling under add/remove-one adjacency
(the neighbouring relation of record-level DP with Poisson sampling):

* PLD (privacy loss distributions, the default): numerically tight; the
  discretisation is pessimistic, so the ε is an upper bound.
* RDP (Rényi DP): a looser upper bound, much cheaper to compute; selectable
  for very long histories or to compare with other tools.

ε is always recomputed from the whole list of mechanisms: ε of a composition
is not the sum of the ε's (adding them would overcharge enormously), and the
only sound way to combine two histories is to compose their mechanisms.

Speed. Building the PLD of one subsampled Gaussian is the expensive part
(0.1 to 1 s at the default discretisation); self-composing it K times is one FFT
power and composing different PLDs is a convolution (each 0.2 to 0.6 s). So
identical steps are grouped into counts (mechanism.step_counts), PLDs are cached
per (q, sigma) and per (q, sigma, K), and the final ε is cached per multiset.

A budget group's history only grows between reservations (or loses a task that
was refunded), so the composed PLDs of recent histories are kept too (in the
accountant object, least recently used dropped): the history plus one task is
the cached history composed with that task's PLD, one convolution however many
distinct settings the history holds. K sampled steps are the K-fold
composition of one step's discretised PLD whether composed at once or as a
cached part plus the rest, so both ways give the same ε up to floating-point
rounding and tail truncation (the tests compare them with a fresh
composition). Unsampled (q = 1) settings, accounted as one exact Gaussian
each, are composed whole onto the kept sampled history. A history with no
cached part (after a restart) is composed from scratch in a balanced tree.

ε for δ of a composed PLD is computed by agent/privacy/pld_epsilon.py, a
vectorised copy of dp-accounting's Python loop (same answer, 5-10x faster).

Speculation. A federated run reserves the same tasks every round, so the ledger
tells the accountant after each reservation (or refund) what a group's history
now is; the accountant guesses which mechanism will likely come next
(_NextMechanism) and composes history + mechanism in a background thread while
the round computes, and the next reservation finds its ε cached. One background
thread for the whole accountant (compositions are CPU-bound and the daemon may
have 2 cores), at most one pending speculation per group (a newer one replaces
it), no thread at all when idle, none after close(). Every ε, speculative or
not, is computed at most once at a time: a request for an ε being computed
waits for it instead of composing it a second time.
"""

from __future__ import annotations

import abc
import enum
import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, ClassVar

import structlog

# dp-accounting ships no type information.
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent  # type: ignore[import-untyped]
from dp_accounting.pld import privacy_loss_distribution  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from agent.privacy.errors import MechanismError
from agent.privacy.mechanism import Mechanism, StepCounts, step_counts
from agent.privacy.pld_epsilon import epsilon_for_delta

# Losses are rounded up to multiples of this (pessimistic: ε stays an upper bound).
# dp-accounting's default is 1e-4; 1e-3 makes every composition 8-15x cheaper (it
# is on every task's path) and costs little: measured, ε unchanged to 4 digits for
# 30-200 steps at q = 0.5, σ = 3, +0.06 % after 1,000 steps at q = 0.01, σ = 1.1 and
# +0.37 % (2.3905 for 2.3817) after the 14,062 steps of the MNIST benchmark.
DEFAULT_PLD_DISCRETIZATION = 1e-3

_ADJACENCY = NeighboringRelation.ADD_OR_REMOVE_ONE


class AccountantKind(enum.Enum):
    PLD = "pld"
    RDP = "rdp"


class Accountant(abc.ABC):
    """ε of a multiset of mechanisms at a target δ; thread-safe, results cached."""

    kind: ClassVar[AccountantKind]

    def __init__(self, cache_size: int = 1024, logger: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self._cached_epsilon = functools.lru_cache(maxsize=cache_size)(self._compute)
        self._logger = logger if logger is not None else structlog.get_logger(__name__)
        # Guards everything below.
        self._lock = threading.Lock()
        # ε being computed right now, by whichever thread: others wait for it.
        self._in_flight: dict[tuple[StepCounts, float], Future[float]] = {}
        # Per slot (budget group), the latest speculation not started yet: (history, counts, δ).
        self._wanted: OrderedDict[str, tuple[StepCounts, StepCounts, float]] = OrderedDict()
        self._speculator: threading.Thread | None = None
        self._closed = False
        # Which mechanism each slot reserves after which; has a lock of its own.
        self._next = _NextMechanism()

    def epsilon(self, mechanisms: Iterable[Mechanism], delta: float) -> float:
        """The ε of running all of ``mechanisms``, composed, at ``delta``.

        Args:
            mechanisms: the tasks, in any order (ε depends only on their multiset).
            delta: the target δ, in (0, 1).

        Returns:
            An upper bound ε ≥ 0 such that running them all is (ε, δ)-DP; 0.0 for none.
            Computed once per multiset and δ and then cached; a composition that a
            speculation (or another thread) is computing is waited for, not repeated.

        Raises:
            MechanismError: ``delta`` is not a number in (0, 1). An error of dp-accounting
                while composing propagates unchanged.
        """
        return self.epsilon_of_counts(step_counts(mechanisms), delta)

    def epsilon_of_counts(self, counts: StepCounts, delta: float) -> float:
        """epsilon() of the mechanisms whose canonical form (mechanism.step_counts) is ``counts``."""
        _check_delta(delta)
        if not counts:
            return 0.0
        return self._once((counts, float(delta)), lambda: self._cached_epsilon(counts, float(delta)))

    def speculate_next(self, slot: str, history: Sequence[Mechanism], reserved: Mechanism, delta: float) -> None:
        """Precomposes in the background the ε that ``slot``'s next reservation will likely ask for.

        The next task is guessed from the order of the slot's past reservations
        (what followed ``reserved`` last time, else ``reserved`` again); then
        ``history`` + ``reserved`` + the guess is composed as speculate() does.
        A wrong guess costs a background composition, never a wrong ε.

        Args:
            slot: whose history it is (the budget group).
            history: the slot's tasks before ``reserved``, committed and in flight.
            reserved: the task just reserved in ``slot``.
            delta: the δ at which the slot's ε is composed.

        Returns at once, and raises nothing (see speculate()).
        """
        self.speculate(slot, [*history, reserved], self._next.after(slot, reserved), delta)

    def speculate(self, slot: str, history: Sequence[Mechanism], mechanism: Mechanism, delta: float) -> None:
        """Composes ``history`` + ``mechanism`` in the background, for a reservation expected soon.

        Args:
            slot: whose history it is (the budget group); a newer speculation for the
                slot replaces one not started yet.
            history: the slot's tasks, committed and in flight.
            mechanism: the task expected next.
            delta: the δ at which the slot's ε is composed.

        Returns at once; does nothing once the accountant is closed. Raises nothing:
        failures are logged, because the caller has just written the ledger and its
        task must go on, and a speculation only saves time.
        """
        try:
            _check_delta(delta)
            counts = step_counts([*history, mechanism])
            with self._lock:
                if self._closed:
                    return
                self._wanted.pop(slot, None)
                self._wanted[slot] = (step_counts(history), counts, float(delta))
                if self._speculator is None:
                    speculator = threading.Thread(target=self._speculate_all, name="privacy-speculation", daemon=True)
                    speculator.start()
                    self._speculator = speculator
        except Exception:
            self._logger.exception("privacy.speculation_failed", slot=slot)

    def close(self) -> None:
        """Drops pending speculations and waits for the running one; ε is still computed on demand.

        Speculations asked for afterwards are ignored.
        """
        with self._lock:
            self._closed = True
            self._wanted.clear()
            speculator = self._speculator
        if speculator is not None:
            speculator.join()

    def wait_for_speculation(self) -> None:
        """Returns once no speculation is pending or running (for tests and benchmarks)."""
        with self._lock:
            speculator = self._speculator
        while speculator is not None:
            speculator.join()
            with self._lock:
                speculator = self._speculator

    @abc.abstractmethod
    def _compute(self, counts: StepCounts, delta: float) -> float:
        """ε for the canonical counts; only called on a cache miss."""

    def uncached_epsilon(self, mechanisms: Iterable[Mechanism], delta: float) -> float:
        """epsilon() of ``mechanisms`` without keeping anything: for what-if questions (privacy
        planning) that must not displace the budget groups' real histories or cached ε."""
        _check_delta(delta)
        counts = step_counts(mechanisms)
        return self._compute(counts, delta) if counts else 0.0

    def _speculative_epsilon(self, slot: str, history: StepCounts, counts: StepCounts, delta: float) -> float:
        """ε of ``counts`` computed by the speculation thread; accountants that keep state may say so."""
        return float(self._cached_epsilon(counts, delta))

    def _waiting_for(self, key: tuple[StepCounts, float]) -> None:  # noqa: B027 - a hook, a no-op here
        """Called when this thread is about to wait for another's computation of ``key`` (a hook for tests)."""

    def _once(self, key: tuple[StepCounts, float], compute: Callable[[], float]) -> float:
        """``compute()``, unless another thread is computing ``key``: then its result."""
        while True:
            with self._lock:
                running = self._in_flight.get(key)
                if running is None:
                    mine: Future[float] = Future()
                    self._in_flight[key] = mine
                    break
            self._waiting_for(key)
            try:
                return running.result()
            except Exception:  # noqa: S112 - whoever ran it reports its failure; try here
                continue
        try:
            value = compute()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._in_flight[key]
        mine.set_result(value)
        return value

    def _speculate_all(self) -> None:
        """The speculation thread: runs wanted speculations until none is left, then ends."""
        while True:
            with self._lock:
                if self._closed or not self._wanted:
                    self._speculator = None
                    return
                slot, (history, counts, delta) = self._wanted.popitem(last=False)
            try:
                self._once((counts, delta), functools.partial(self._speculative_epsilon, slot, history, counts, delta))
            except Exception:
                # A speculation only saves time: the reservation computes its ε itself.
                self._logger.exception("privacy.speculation_failed", slot=slot, settings=len(counts))


class _NextMechanism:
    """Guesses a budget group's next task from the order of its past ones, for speculation.

    A federated run repeats the same tasks every round, but a group does not
    always see the same mechanism twice in a row: with evaluation every round it
    alternates training and evaluation steps. The guess is the mechanism that
    followed this one last time in the group, else the same one again. Only a
    guess: a wrong one costs a background composition, never a wrong ε.
    """

    def __init__(self, groups: int = 256, per_group: int = 16) -> None:
        # Bounded: a coordinator sweeping settings, or many groups, must not grow these without end.
        self._groups = groups
        self._per_group = per_group
        self._lock = threading.Lock()
        # Per group (least recently used first): its last mechanism and, per mechanism, its last follower.
        self._last: OrderedDict[str, Mechanism] = OrderedDict()
        self._followers: OrderedDict[str, OrderedDict[Mechanism, Mechanism]] = OrderedDict()

    def after(self, group: str, mechanism: Mechanism) -> Mechanism:
        """Records that ``mechanism`` was just reserved in ``group``; returns the guess for the next one."""
        with self._lock:
            followers = self._followers.pop(group, None) or OrderedDict()
            previous = self._last.pop(group, None)
            if previous is not None:
                followers.pop(previous, None)
                followers[previous] = mechanism
                while len(followers) > self._per_group:
                    followers.popitem(last=False)
            self._followers[group] = followers
            self._last[group] = mechanism
            while len(self._last) > self._groups:
                self._last.popitem(last=False)
            while len(self._followers) > self._groups:
                self._followers.popitem(last=False)
            return followers.get(mechanism, mechanism)


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise MechanismError(f"δ must be in (0, 1), got {delta!r}")


class PldAccountant(Accountant):
    kind = AccountantKind.PLD

    def __init__(
        self,
        value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
        cache_size: int = 1024,
        histories: int = 16,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        super().__init__(cache_size, logger)
        self._interval = value_discretization_interval
        # PLD arrays are a few MB each at most; these bounds keep the daemon's memory flat.
        self._single = functools.lru_cache(maxsize=64)(self._build_single)
        self._composed = functools.lru_cache(maxsize=64)(self._build_composed)
        # Composed PLDs of recent histories (StepCounts -> PLD), least recently used first.
        self._histories: OrderedDict[StepCounts, Any] = OrderedDict()
        self._max_histories = histories
        self._histories_lock = threading.Lock()
        # Per speculation slot, the last speculation's (history, history + mechanism); guarded
        # by _histories_lock like the kept PLDs it decides about.
        self._guesses: dict[str, tuple[StepCounts, StepCounts]] = {}

    def _build_single(self, q: float, sigma: float) -> Any:
        return privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=sigma,
            sampling_prob=q,
            value_discretization_interval=self._interval,
            neighboring_relation=_ADJACENCY,
        )

    def _build_composed(self, q: float, sigma: float, steps: int) -> Any:
        if q == 1.0:
            # K unsampled Gaussians are exactly one Gaussian with sigma/√K (what
            # dp-accounting's own PLD accountant does): no composition error.
            return self._single(1.0, sigma / math.sqrt(steps))
        return self._single(q, sigma).self_compose(steps)

    def _compute(self, counts: StepCounts, delta: float) -> float:
        return max(epsilon_for_delta(self._history(counts), delta), 0.0)

    def uncached_epsilon(self, mechanisms: Iterable[Mechanism], delta: float) -> float:
        _check_delta(delta)
        counts = step_counts(mechanisms)
        return max(epsilon_for_delta(self.fresh(counts), delta), 0.0) if counts else 0.0

    def _speculative_epsilon(self, slot: str, history: StepCounts, counts: StepCounts, delta: float) -> float:
        with self._histories_lock:
            previous = self._guesses.pop(slot, None)
            if previous is not None:
                # The slot's history has moved on since its last speculation: drop what
                # it no longer needs, to keep one group's kept PLDs to about two.
                guessed_from, guessed = previous
                stale = (guessed_from,) if guessed == history else (guessed,)
                needed = {history, _sampled(history)}
                for key in {*stale, *(_sampled(k) for k in stale)} - needed:
                    self._histories.pop(key, None)
            self._guesses[slot] = (history, counts)
        # The history it grows from stays: the guess may be wrong, and then the next
        # reservation grows that history with another mechanism.
        self._history(counts, keep_base=True)
        return float(self._cached_epsilon(counts, delta))

    def _history(self, counts: StepCounts, *, keep_base: bool = False) -> Any:
        """The PLD of ``counts``: a cached part composed with what it lacks, or a fresh tree."""
        with self._histories_lock:
            cached = self._histories.get(counts)
            if cached is not None:
                self._histories.move_to_end(counts)
                return cached
            base_key, base, missing = _largest_part(counts, self._histories.items())
        unsampled = tuple(c for c in counts if c[0] == 1.0)
        if unsampled and len(unsampled) < len(counts):
            # K unsampled steps are one exact Gaussian (see _build_composed), which adding
            # steps to a cached history would lose: the sampled part is the history kept
            # and grown, the unsampled settings are composed onto it whole.
            pld = self._history(_sampled(counts), keep_base=keep_base)
            for q, sigma, steps in unsampled:
                pld = pld.compose(self._composed(q, sigma, steps))
        elif base is not None and not unsampled:
            # Sampled steps: K steps are the K-fold composition of one step's PLD whether
            # they are composed at once or as a cached part plus the rest.
            pld = base
            for q, sigma, steps in missing:
                pld = pld.compose(self._composed(q, sigma, steps))
        else:
            pld = self.fresh(counts)
        with self._histories_lock:
            if not keep_base and base_key is not None and not unsampled and base_key in self._histories:
                # A group's history grows one task at a time: the part it grew from is
                # rarely asked for again and holds megabytes (measured: 16 kept prefixes
                # of one long history took ~500 MB), so the grown history replaces it.
                del self._histories[base_key]
            self._histories[counts] = pld
            self._histories.move_to_end(counts)
            while len(self._histories) > self._max_histories:
                self._histories.popitem(last=False)
        return pld

    @property
    def kept_histories(self) -> int:
        """How many composed histories are held in memory (each can be megabytes)."""
        with self._histories_lock:
            return len(self._histories)

    def fresh(self, counts: StepCounts) -> Any:
        """The PLD of ``counts`` composed from scratch (no cached history), in a balanced tree."""
        plds = [self._composed(q, sigma, steps) for q, sigma, steps in counts]
        # Balanced tree: composing into one ever-growing PLD costs O(n²).
        while len(plds) > 1:
            pairs = [plds[i].compose(plds[i + 1]) for i in range(0, len(plds) - 1, 2)]
            plds = pairs + ([plds[-1]] if len(plds) % 2 else [])
        return plds[0]


def _sampled(counts: StepCounts) -> StepCounts:
    """The sampled (q < 1) settings of ``counts``: the part of a history that is kept and grown."""
    return tuple(c for c in counts if c[0] != 1.0)


def _largest_part(
    counts: StepCounts, cached: Iterable[tuple[StepCounts, Any]]
) -> tuple[StepCounts | None, Any, StepCounts]:
    """The cached history contained in ``counts`` that leaves the fewest settings to add:
    its key, its PLD and the settings to add. ``(None, None, counts)`` if there is none.
    """
    wanted = {(q, sigma): steps for q, sigma, steps in counts}
    best: tuple[StepCounts | None, Any, StepCounts] = (None, None, counts)
    for part, pld in cached:
        have = {(q, sigma): steps for q, sigma, steps in part}
        if any(wanted.get(setting, 0) < steps for setting, steps in have.items()):
            continue  # holds a task that counts does not: not a part of it
        missing = tuple(
            (q, sigma, steps - have.get((q, sigma), 0))
            for q, sigma, steps in counts
            if steps > have.get((q, sigma), 0)
        )
        if best[1] is None or len(missing) < len(best[2]):
            best = (part, pld, missing)
    return best


class RdpAccountant(Accountant):
    kind = AccountantKind.RDP

    def _compute(self, counts: StepCounts, delta: float) -> float:
        accountant = rdp_privacy_accountant.RdpAccountant(neighboring_relation=_ADJACENCY)
        for q, sigma, steps in counts:
            gaussian = GaussianDpEvent(sigma)
            accountant.compose(gaussian if q == 1.0 else PoissonSampledDpEvent(q, gaussian), steps)
        return max(float(accountant.get_epsilon(delta)), 0.0)


def make_accountant(kind: AccountantKind | str = AccountantKind.PLD) -> Accountant:
    """The accountant named in config (``"pld"`` or ``"rdp"``)."""
    try:
        chosen = AccountantKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in AccountantKind)
        raise MechanismError(f"unknown accountant {kind!r}; expected one of: {names}") from None
    return PldAccountant() if chosen is AccountantKind.PLD else RdpAccountant()
