"""Poisson subsampling: each row joins the sample independently with probability ``q``.

This is the sampling the accountant's subsampled-Gaussian analysis assumes (batch size
random, ``Binomial(N, q)``); a fixed-size shuffle would need a different analysis. The
generator is seeded from the OS's secure randomness (:func:`agent.privacy.noise.secure_generator`)
so the coordinator cannot know which rows were used.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.privacy.noise import secure_generator


class PoissonSampler:
    """Draws inclusion masks with rate ``q`` in (0, 1]; ``rng`` only for tests."""

    def __init__(self, rate: float, rng: np.random.Generator | None = None) -> None:
        if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
            raise ValueError("the sampling rate must lie in (0, 1]")
        self.rate = rate
        self._rng = rng if rng is not None else secure_generator()

    def mask(self, rows: int) -> npt.NDArray[np.bool_]:
        """One independent Bernoulli(q) draw per row (all true when q = 1)."""
        if self.rate == 1.0:
            return np.ones(rows, dtype=np.bool_)
        draws: npt.NDArray[np.bool_] = self._rng.random(rows) < self.rate
        return draws
