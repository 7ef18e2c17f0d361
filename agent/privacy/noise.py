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
import threading

import numpy as np
import numpy.typing as npt

SEED_BITS = 256
# Noise for larger arrays is drawn and added in slices of this many values (32 MB).
IN_PLACE_SLICE = 4 * 1024 * 1024
# Reserved blocks (drawn ahead) only for models up to this many values: 8 bytes each.
MAX_RESERVED_SIZE = 32 * 1024 * 1024


def secure_generator() -> np.random.Generator:
    """A NumPy generator seeded from the OS's cryptographically secure randomness."""
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(SEED_BITS)))


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0.0):
        raise ValueError("the noise standard deviation must be finite and >= 0")


class NoiseReserve:
    """Standard normal draws made ahead of time, each block handed out once.

    Drawing the noise for a large model takes as long as the rest of a small
    task (about 20 ns per value here: 0.5 s for 25M parameters). The draws do not
    depend on the data or the parameters, so a warm worker draws the next task's
    block while it waits for that task. Every block comes from its own freshly
    seeded generator and is given out at most once; a task that finds no block of
    its size draws on the spot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block: npt.NDArray[np.float64] | None = None
        self._filling: threading.Thread | None = None
        # A used block given back: the next draw of its size overwrites it instead of
        # faulting in fresh pages (for a large model, as costly as the draw itself).
        self._spare: npt.NDArray[np.float64] | None = None
        # The block take() last handed out: the only one give_back() accepts.
        self._lent: npt.NDArray[np.float64] | None = None

    def take(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` standard normal values, never handed out before."""
        with self._lock:
            filling, self._filling = self._filling, None
        if filling is not None:
            filling.join()
        with self._lock:
            block, self._block = self._block, None
        if block is None or block.size != size:
            block = secure_generator().standard_normal(size)
        with self._lock:
            self._lent = block
        return block

    def give_back(self, block: npt.NDArray[np.float64]) -> None:
        """The block take() last returned, used up: its memory may hold the next draw (every value
        drawn afresh). Anything else, or the same block twice, is ignored: a block still in use
        must never be drawn into."""
        with self._lock:
            if block is self._lent:
                self._lent = None
                self._spare = block

    def refill(self, size: int) -> None:
        """Starts drawing a block of ``size`` values in the background (replacing an unused one)."""
        with self._lock:
            if self._filling is not None:
                return

            spare, self._spare = self._spare, None
            target = spare if spare is not None and spare.size == size else np.empty(size, np.float64)

            def fill() -> None:
                block = secure_generator().standard_normal(out=target)
                with self._lock:
                    self._block = block

            self._block = None
            self._filling = threading.Thread(target=fill, name="noise-reserve", daemon=True)
            self._filling.start()


class GaussianNoise:
    """Adds centred Gaussian noise. Pass ``rng`` only in tests; production uses the
    secure default (from ``reserve`` when given, see NoiseReserve)."""

    def __init__(self, rng: np.random.Generator | None = None, reserve: NoiseReserve | None = None) -> None:
        self._rng = rng
        self._reserve = reserve if rng is None else None

    def perturb(self, values: npt.NDArray[np.float64], std: float) -> npt.NDArray[np.float64]:
        """``values + N(0, std^2)`` element-wise, as a new float64 array (``std`` = 0: a copy)."""
        _check_std(std)
        if std == 0.0:
            return np.array(values, dtype=np.float64, copy=True)
        if self._rng is not None:
            return np.asarray(values, dtype=np.float64) + self._rng.normal(0.0, std, np.shape(values))
        if self._reserve is not None:
            result = self._reserve.take(int(np.size(values))).reshape(np.shape(values))
        else:
            result = secure_generator().standard_normal(np.shape(values))
        # In place on the fresh draw: no second array of the model's size.
        result *= std
        result += values
        return result

    def perturb_in_place(self, values: npt.NDArray[np.float64], std: float) -> npt.NDArray[np.float64]:
        """``values += N(0, std^2)`` element-wise and returns ``values``.

        For the sums a task owns: a model too large for a reserved block gets its noise
        drawn and added a slice at a time, so no second array of its size exists.
        """
        if not (values.dtype == np.float64 and values.flags.c_contiguous and values.flags.writeable):
            raise ValueError("perturb_in_place needs a writable C-contiguous float64 array")
        _check_std(std)
        if std == 0.0:
            return values
        if self._rng is not None:
            values[...] = self.perturb(values, std)
            return values
        if self._reserve is not None and values.size <= MAX_RESERVED_SIZE:
            block = self._reserve.take(values.size)
            block *= std
            values += block.reshape(values.shape)
            self._reserve.give_back(block)
            return values
        flat = values.reshape(-1)
        generator = secure_generator()
        draw = np.empty(min(IN_PLACE_SLICE, flat.size), np.float64)
        for start in range(0, flat.size, IN_PLACE_SLICE):
            piece = draw[: min(IN_PLACE_SLICE, flat.size - start)]
            generator.standard_normal(out=piece)
            piece *= std
            flat[start : start + piece.size] += piece
        return values

    def scalar(self, value: float, std: float) -> float:
        """``value + N(0, std^2)``."""
        return float(self.perturb(np.array([value], np.float64), std)[0])
