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
power and composing different PLDs is a convolution. So identical steps are
grouped into counts (mechanism.step_counts), PLDs are cached per (q, sigma) and
per (q, sigma, K), different ones are composed pairwise in a balanced tree rather
than one by one, and the final ε is cached per multiset. A history of
hundreds of tasks with a handful of distinct settings costs about as much as
one task.
"""

from __future__ import annotations

import abc
import enum
import functools
import math
from collections.abc import Iterable
from typing import Any, ClassVar

# dp-accounting ships no type information.
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent  # type: ignore[import-untyped]
from dp_accounting.pld import privacy_loss_distribution  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

from agent.privacy.errors import MechanismError
from agent.privacy.mechanism import Mechanism, StepCounts, step_counts

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
        self, value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION, cache_size: int = 1024
    ) -> None:
        super().__init__(cache_size)
        self._interval = value_discretization_interval
        # PLD arrays are a few MB each at most; these bounds keep the daemon's memory flat.
        self._single = functools.lru_cache(maxsize=64)(self._build_single)
        self._composed = functools.lru_cache(maxsize=64)(self._build_composed)

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
        plds = [self._composed(q, sigma, steps) for q, sigma, steps in counts]
        # Balanced tree: composing into one ever-growing PLD costs O(n²).
        while len(plds) > 1:
            pairs = [plds[i].compose(plds[i + 1]) for i in range(0, len(plds) - 1, 2)]
            plds = pairs + ([plds[-1]] if len(plds) % 2 else [])
        return max(float(plds[0].get_epsilon_for_delta(delta)), 0.0)


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
