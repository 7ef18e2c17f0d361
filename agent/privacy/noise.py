"""Gaussian noise for released sums, from a generator seeded by the OS's secure randomness.

The runtime adds ``N(0, (sigma * S)^2)`` independently to every coordinate of a clipped
sum whose L2 sensitivity (one example added or removed) is ``S``: ``S = C`` for
gradients, see :mod:`agent.runtime.tasks` for metrics and counts.

The generator is NumPy's PCG64DXSM seeded with 256 bits from :mod:`secrets` (the OS
CSPRNG) for every :class:`GaussianNoise`: the coordinator cannot predict or replay it.
Known limitation: like every library sampler, ``Generator.normal`` draws floating-point
values whose low-order bits are not exactly Gaussian (cf. Mironov 2012 for Laplace);
a discrete or "snapping" sampler would close that gap.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt

SEED_BITS = 256


def secure_generator() -> np.random.Generator:
    """A NumPy generator seeded from the OS's cryptographically secure randomness."""
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(SEED_BITS)))


class GaussianNoise:
    """Adds centred Gaussian noise. Pass ``rng`` only in tests; production uses the
    secure default."""

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng if rng is not None else secure_generator()

    def perturb(self, values: npt.NDArray[np.float64], std: float) -> npt.NDArray[np.float64]:
        """``values + N(0, std^2)`` element-wise, as a new float64 array (``std`` = 0: a copy)."""
        if not (math.isfinite(std) and std >= 0.0):
            raise ValueError("the noise standard deviation must be finite and >= 0")
        result = np.array(values, dtype=np.float64, copy=True)
        if std > 0.0:
            result += self._rng.normal(0.0, std, result.shape)
        return result

    def scalar(self, value: float, std: float) -> float:
        """``value + N(0, std^2)``."""
        return float(self.perturb(np.array([value], np.float64), std)[0])
