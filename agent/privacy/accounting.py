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
was released), so the composed PLDs of recent histories are kept too (in the
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
"""

from __future__ import annotations

import abc
import enum
import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, ClassVar

# dp-accounting ships no type information.
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent  # type: ignore[import-untyped]
from dp_accounting.pld import privacy_loss_distribution  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from agent.privacy.errors import MechanismError
from agent.privacy.mechanism import Mechanism, StepCounts, step_counts
from agent.privacy.pld_epsilon import epsilon_for_delta

# dp-accounting's own default; coarser is faster and still an upper bound.
DEFAULT_PLD_DISCRETIZATION = 1e-4

_ADJACENCY = NeighboringRelation.ADD_OR_REMOVE_ONE


class AccountantKind(enum.Enum):
    PLD = "pld"
    RDP = "rdp"


class Accountant(abc.ABC):
    """ε of a multiset of mechanisms at a target δ; thread-safe, results cached."""

    kind: ClassVar[AccountantKind]

    def __init__(self, cache_size: int = 1024) -> None:
        self._cached_epsilon = functools.lru_cache(maxsize=cache_size)(self._compute)

    def epsilon(self, mechanisms: Iterable[Mechanism], delta: float) -> float:
        """ε such that running all ``mechanisms`` is (ε, δ)-DP; 0.0 for none."""
        return self.epsilon_of_counts(step_counts(mechanisms), delta)

    def epsilon_of_counts(self, counts: StepCounts, delta: float) -> float:
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
            raise MechanismError(f"δ must be in (0, 1), got {delta!r}")
        if not counts:
            return 0.0
        return self._cached_epsilon(counts, float(delta))

    @abc.abstractmethod
    def _compute(self, counts: StepCounts, delta: float) -> float:
        """ε for the canonical counts; only called on a cache miss."""


class PldAccountant(Accountant):
    kind = AccountantKind.PLD

    def __init__(
        self,
        value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
        cache_size: int = 1024,
        histories: int = 16,
    ) -> None:
        super().__init__(cache_size)
        self._interval = value_discretization_interval
        # PLD arrays are a few MB each at most; these bounds keep the daemon's memory flat.
        self._single = functools.lru_cache(maxsize=64)(self._build_single)
        self._composed = functools.lru_cache(maxsize=64)(self._build_composed)
        # Composed PLDs of recent histories (StepCounts -> PLD), least recently used first.
        self._histories: OrderedDict[StepCounts, Any] = OrderedDict()
        self._max_histories = histories
        self._histories_lock = threading.Lock()

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

    def _history(self, counts: StepCounts) -> Any:
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
            pld = self._history(tuple(c for c in counts if c[0] != 1.0))
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
            if base_key is not None and not unsampled and base_key in self._histories:
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
