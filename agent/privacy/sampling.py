"""Poisson subsampling: each row (each privacy unit, with all its rows, when the dataset
declares one) joins the sample independently with probability ``q``.

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

# How likely a step's sample may be larger than the size its computation is padded to
# (agent.runtime.tasks): the duration then shows an unusually large sample.
PADDING_TAIL = 1e-9


def padded_sample_size(population: int, rate: float, tail: float = PADDING_TAIL) -> int:
    """A size that a Poisson sample of ``population`` rows at ``rate`` exceeds with probability ≤ ``tail``.

    The sample size is Binomial(N, q). Bernstein's inequality for a sum of independent
    Bernoulli variables, P(X - qN ≥ t) ≤ exp(-t² / (2(Nq(1-q) + t/3))), solved for the
    tail gives t = L/3 + sqrt(L²/9 + 2 Nq(1-q) L) with L = ln(1/tail): about 6.4 standard
    deviations plus 7 rows at the default tail. Never more than the population.
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 0:
        raise ValueError(f"the population must be an integer ≥ 0, got {population!r}")
    return padded_row_count(population, population, 1, rate, tail)


def padded_row_count(rows: int, squared_sizes: int, largest: int, rate: float, tail: float = PADDING_TAIL) -> int:
    """A row count that a Poisson sample of whole units exceeds with probability ≤ ``tail``.

    Units of ``n_g`` rows join independently with probability ``q``: the sample's row count
    ``Σ n_g B_g`` has mean ``q Σ n_g``, variance ``q(1-q) Σ n_g²`` (``squared_sizes``) and
    terms of at most ``largest`` rows. Bernstein's inequality gives
    ``t = L·m/3 + sqrt((L·m/3)² + 2·v·L)`` with ``L = ln(1/tail)`` and ``m = largest``;
    with one row per unit this is :func:`padded_sample_size`. Never more than ``rows``.
    """
    for name, value in (("rows", rows), ("squared_sizes", squared_sizes), ("largest", largest)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer ≥ 0, got {value!r}")
    if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ValueError("the sampling rate must lie in (0, 1]")
    if not 0.0 < tail < 1.0:
        raise ValueError("the tail probability must lie in (0, 1)")
    variance = squared_sizes * rate * (1.0 - rate)
    log_tail = math.log(1.0 / tail)
    third = log_tail * largest / 3.0
    margin = third + math.sqrt(third * third + 2.0 * variance * log_tail)
    return min(rows, math.ceil(rows * rate + margin))


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
