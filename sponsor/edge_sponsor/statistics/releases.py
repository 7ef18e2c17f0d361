"""One hospital's release as the sponsor receives it, read back as blocks.

A release is a flat mapping of scalar names (``<block>[<stratum>][<cell>]``, see
:mod:`agent.packages.release_layout`) to noisy numbers; NaN marks a number the hospital withheld
under its minimum cell size. The layout says how noisy each number is: the noise is
Gaussian, independent between numbers, with standard deviation
``layout.noise_std(block, noise_multiplier)`` for the site's own noise multiplier.

Estimators pool numbers over **contributors**: (site, stratum) pairs. A table column, a
survival curve or a test is a set of contributors; a contributor that withheld what an
estimate needs is left out of it and named in the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.packages.release_layout import Block, ReleaseLayout

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SiteRelease:
    """What one hospital returned for one task: its noisy scalars and the noise multiplier it used."""

    site: str
    scalars: Mapping[str, float]
    noise_multiplier: float

    def __post_init__(self) -> None:
        # σ = 0 (exact numbers) is allowed: tests and simulations use it; a negative or
        # non-finite σ cannot describe any release.
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"{self.site}: noise multiplier must be a finite number ≥ 0, got {self.noise_multiplier}")


@dataclass(frozen=True)
class BlockValues:
    """One block of one site: ``values[stratum, cell]`` (NaN = withheld) and the noise variance of each number."""

    block: Block
    values: FloatArray
    noise_variance: float

    def released(self, stratum: int) -> bool:
        """Whether every cell of ``stratum`` was released (STRATUM-suppressed blocks withhold all or none)."""
        return bool(np.all(np.isfinite(self.values[stratum])))


def read_block(release: SiteRelease, layout: ReleaseLayout, name: str) -> BlockValues:
    """The block ``name`` of ``release``, shaped [strata, cells].

    Args:
        release: one site's scalars; a scalar may be NaN (withheld).
        layout: the release layout of the task the site ran (the same plan at every site).
        name: a block of ``layout``.

    Returns:
        The values (float64, NaN where withheld) and the per-number noise variance
        ``layout.noise_std(block, σ)²``.

    Raises:
        KeyError: ``layout`` has no block ``name``, or the release lacks one of its scalars
            (a release of another plan or a truncated one: never guessed as zero).
    """
    block = layout.block(name)
    values = np.empty((layout.strata, len(block.cells)), dtype=np.float64)
    for stratum in range(layout.strata):
        for cell in range(len(block.cells)):
            key = block.scalar_name(stratum, cell)
            if key not in release.scalars:
                raise KeyError(f"{release.site}: release lacks {key}")
            values[stratum, cell] = float(release.scalars[key])
    std = layout.noise_std(block, release.noise_multiplier)
    return BlockValues(block, values, std * std)


@dataclass(frozen=True)
class Pooled:
    """Cells summed over contributors, with the noise variance of each sum and who was left out."""

    values: FloatArray
    noise_variance: FloatArray
    contributors: tuple[tuple[str, int], ...]
    left_out: tuple[tuple[str, int], ...]


def pool(parts: Iterable[tuple[tuple[str, int], BlockValues]], *, whole: bool) -> Pooled:
    """The sum over contributors of one block's cells for their stratum.

    Args:
        parts: ((site, stratum), that site's block) pairs; the block's row ``stratum`` is summed.
        whole: True to take a contributor only when all of its cells are released (sums,
            histograms, survival exits: a partial row would bias every derived estimate);
            False to pool each cell over the contributors that released it (count tables,
            where one small withheld cell should not drop a site's other cells).

    Returns:
        The pooled cells (NaN where no contributor released the cell), the noise variance
        of each pooled cell (the sum of the contributors' variances), the contributors
        used for at least one cell and those left out of at least one cell.
    """
    total: FloatArray | None = None
    variance: FloatArray | None = None
    seen: FloatArray | None = None
    used: list[tuple[str, int]] = []
    left_out: list[tuple[str, int]] = []
    for key, part in parts:
        row = part.values[key[1]]
        if total is None or variance is None or seen is None:
            total, variance, seen = (np.zeros(row.shape[0], dtype=np.float64) for _ in range(3))
        finite = np.isfinite(row)
        if whole and not finite.all():
            left_out.append(key)
            continue
        if finite.any():
            used.append(key)
        if not finite.all():
            left_out.append(key)
        total = total + np.where(finite, row, 0.0)
        variance = variance + np.where(finite, part.noise_variance, 0.0)
        seen = seen + finite
    if total is None or variance is None or seen is None:
        raise ValueError("nothing to pool: no contributors")
    return Pooled(np.where(seen > 0, total, np.nan), variance, tuple(used), tuple(left_out))
