"""What a task releases, described for the accountant.

Every task kind is the same mechanism with different parameters: K steps,
each step draws a Poisson sample of the dataset (every row independently with
probability q) and releases sums over that sample with Gaussian noise of
standard deviation sigma times the sum's L2 sensitivity (the clipping norm C for a
gradient sum, 1 for a count). The accountant needs only (q, sigma, K).

Several noisy sums of the *same* sample (a gradient sum and a noisy count) are
one Gaussian mechanism on the concatenated vector, whose privacy loss is that
of a single Gaussian with sigma_eff = (sum of sigma_i^-2)^(-1/2). Accounting them as
separately subsampled mechanisms would under-charge: they share the sample, so
a row that is in it leaks through both at once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from agent.privacy.errors import MechanismError

# (sampling rate q, noise multiplier sigma) -> total steps with those parameters.
StepCounts = tuple[tuple[float, float, int], ...]


@dataclass(frozen=True)
class Mechanism:
    """``steps`` Poisson-subsampled Gaussian releases at rate ``sampling_rate`` with ``noise_multiplier``."""

    sampling_rate: float
    noise_multiplier: float
    steps: int = 1

    def __post_init__(self) -> None:
        # bool is an int; True as a step count is a caller's bug, not 1 step.
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise MechanismError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not _real(self.sampling_rate) or not 0.0 < self.sampling_rate <= 1.0:
            raise MechanismError(f"sampling rate q must be in (0, 1], got {self.sampling_rate!r}")
        # sigma = 0 releases exact sums: no finite ε exists, so it can never be reserved.
        if not _real(self.noise_multiplier) or not self.noise_multiplier > 0.0:
            raise MechanismError(f"noise multiplier sigma must be a finite number > 0, got {self.noise_multiplier!r}")

    @classmethod
    def dp_gradient(
        cls, sampling_rate: float, noise_multiplier: float, count_noise_multiplier: float | None = None
    ) -> Mechanism:
        """One noisy clipped gradient sum over one Poisson sample (DP-FedSGD), optionally with a noisy count."""
        return cls(sampling_rate, combined_noise_multiplier(noise_multiplier, count_noise_multiplier), 1)

    @classmethod
    def dp_local_training(
        cls,
        sampling_rate: float,
        noise_multiplier: float,
        steps: int,
        count_noise_multiplier: float | None = None,
    ) -> Mechanism:
        """K DP-SGD steps, each on a fresh Poisson sample; the returned delta is post-processing of them.

        A noisy count is charged at every step: an upper bound whichever step's
        sample it is taken from (releasing less never costs more).
        """
        return cls(sampling_rate, combined_noise_multiplier(noise_multiplier, count_noise_multiplier), steps)

    @classmethod
    def dp_evaluate(
        cls,
        noise_multiplier: float,
        sampling_rate: float = 1.0,
        count_noise_multiplier: float | None = None,
    ) -> Mechanism:
        """Noisy sums of clipped per-example metrics, over the whole dataset unless sampled.

        ``noise_multiplier`` is relative to the L2 sensitivity of the vector of
        metric sums (the norm of the per-metric clipping ranges).
        """
        return cls(sampling_rate, combined_noise_multiplier(noise_multiplier, count_noise_multiplier), 1)


def combined_noise_multiplier(*noise_multipliers: float | None) -> float:
    """sigma of the single Gaussian equivalent to several Gaussian releases on the same sample."""
    sigmas = [s for s in noise_multipliers if s is not None]
    if not sigmas:
        raise MechanismError("at least one noise multiplier is needed")
    for sigma in sigmas:
        if not _real(sigma) or not sigma > 0.0:
            raise MechanismError(f"noise multiplier sigma must be a finite number > 0, got {sigma!r}")
    if len(sigmas) == 1:
        return float(sigmas[0])
    # (Σ 1/σ²)^(-1/2), scaled by the smallest σ so that no square overflows or underflows
    # (σ = 1e300 is a valid, if useless, setting): every ratio is at most 1, one is exactly 1.
    smallest = min(sigmas)
    return float(smallest / math.sqrt(sum((smallest / s) ** 2 for s in sigmas)))


def accounting_grid(value: float, *, up: bool, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits, up or down.

    Each distinct (q, sigma) costs the accountant about a second to build, so a
    coordinator varying sigma by 1e-9 per task could make every reservation slow.
    Accounting q rounded up and sigma rounded down is conservative (epsilon only grows)
    and leaves at most 900 settings per decade.
    """
    exponent = math.floor(math.log10(value))
    if digits - 1 - exponent > 300:
        # 10**scale would overflow a float (a q of 1e-322 is a valid, if useless, rate):
        # round the exact decimal value instead.
        exact = Decimal(value)
        quantum = Decimal(1).scaleb(exact.adjusted() - digits + 1)
        rounded = float(exact.quantize(quantum, rounding=ROUND_CEILING if up else ROUND_FLOOR))
    else:
        scale = 10.0 ** (digits - 1 - exponent)
        rounded = (math.ceil(value * scale) if up else math.floor(value * scale)) / scale
    # Float rounding must not undo the direction.
    if up and rounded < value:
        rounded = math.nextafter(rounded, math.inf)
    if not up and rounded > value:
        rounded = math.nextafter(rounded, 0.0)
    return rounded


def step_counts(mechanisms: Iterable[Mechanism]) -> StepCounts:
    """The canonical, order-free form of a list of mechanisms: identical steps grouped as counts.

    K identical steps compose as one self-composition (cheap: one FFT power
    for PLD), and the result is the cache key of an ε: two ledgers holding the
    same multiset of tasks get the same ε whatever order they ran in.
    """
    counts: Counter[tuple[float, float]] = Counter()
    for mechanism in mechanisms:
        counts[(mechanism.sampling_rate, mechanism.noise_multiplier)] += mechanism.steps
    return tuple((q, sigma, k) for (q, sigma), k in sorted(counts.items()))


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
