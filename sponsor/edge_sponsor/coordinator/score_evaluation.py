"""How the coordinator reads a package's score histogram: as model-evaluation figures with their DP error.

A package's eval graph may output a histogram of its scores as one metric group
(:mod:`edge_sponsor.publisher.zoo.score_histogram`): per outcome for a classifier, per
event indicator and time bin for a survival model. The coordinator adds the sites'
noisy cells and reports, instead of the cells, what they are read as
(:data:`CLASSIFIER_METRICS`, :data:`SURVIVAL_METRICS`), each with its DP standard
deviation by parametric bootstrap of the release noise
(:func:`edge_sponsor.statistics.evaluation.with_dp_error`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from edge_sponsor.publisher.zoo import score_histogram
from edge_sponsor.statistics.evaluation import NoisyEstimate, auc, c_index, calibration_in_the_large, with_dp_error

Statistic = Callable[[npt.NDArray[np.float64]], float]


def _auc(histogram: npt.NDArray[np.float64]) -> float:
    return auc(histogram, clip=False)


def _c_index(histogram: npt.NDArray[np.float64]) -> float:
    return c_index(histogram, clip=False)


@dataclass(frozen=True)
class Figure:
    """What a histogram is read as: ``statistic`` of its cells; ``proportion``: a figure in
    [0, 1], whose estimate is shown clamped into it (post-processing) while its DP SD is the
    unclamped statistic's."""

    statistic: Statistic
    proportion: bool = False

    def shown(self, value: float) -> float:
        return min(1.0, max(0.0, value)) if self.proportion else value


# AUC and C-index are read from the noisy cells as released, negative ones included: taking
# negative cells as 0 turns the noise of the many empty cells of a model that separates
# well into mass that pulls the figure towards 0.5, and the bootstrap, started from that
# histogram, does not see it (bench/evaluation_accuracy.py: breast cancer's 95 % intervals
# held the noiseless AUC in 0 to 88 % of releases; read as released, 94 to 99 %).
CLASSIFIER_METRICS: Mapping[str, Figure] = {
    "auc": Figure(_auc, proportion=True),
    "calibration_points": Figure(calibration_in_the_large),
}
"""A classifier's histogram: the AUC, and calibration-in-the-large (the observed rate minus
the mean predicted risk, in percentage points)."""

SURVIVAL_METRICS: Mapping[str, Figure] = {"c_index": Figure(_c_index, proportion=True)}
"""A survival model's histogram: Harrell's C-index on the histogram's time grid."""

# Bootstrap draws behind a figure's DP error: its SD to a few per cent.
_DRAWS = 1000


@dataclass(frozen=True)
class ScoreHistogram:
    """The cells of a package's score histogram and how they are read."""

    cells: tuple[str, ...]
    shape: tuple[int, ...]
    statistics: Mapping[str, Figure]

    @classmethod
    def of(cls, metrics: Sequence[str]) -> ScoreHistogram | None:
        """The histogram among a package's metric names; None if it has none."""
        bins = score_histogram.bins_of(metrics)
        if bins:
            return cls(score_histogram.cell_names(bins), (2, bins), CLASSIFIER_METRICS)
        grid = score_histogram.survival_grid_of(metrics)
        if grid is not None:
            return cls(score_histogram.survival_cell_names(*grid), (2, *grid), SURVIVAL_METRICS)
        return None

    @property
    def classifier(self) -> bool:
        """Whether the histogram is a classifier's ``[2, K]`` (else a survival model's ``[2, T, K]``)."""
        return len(self.shape) == 2

    def array(self, sums: Mapping[str, float]) -> npt.NDArray[np.float64]:
        """The cells of ``sums`` as the histogram's array, of :attr:`shape`."""
        return np.asarray([sums[name] for name in self.cells], np.float64).reshape(self.shape)

    def estimates(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The figures of the noisy cells in ``sums``, without their error (a site's own, beside
        the pooled ones); those the histogram leaves undefined are left out."""
        histogram = self.array(sums)
        values = {name: figure.statistic(histogram) for name, figure in self.statistics.items()}
        return {name: self.statistics[name].shown(v) for name, v in values.items() if math.isfinite(v)}

    def figures(self, sums: Mapping[str, float], cell_sd: float, *, draws: int = _DRAWS) -> dict[str, NoisyEstimate]:
        """The figures of the noisy cells in ``sums`` (each with noise of SD ``cell_sd``), with
        their DP error (``draws`` bootstrap draws); a figure the noisy histogram leaves
        undefined (a class without mass, no comparable pair) is left out."""
        histogram = self.array(sums)
        estimates = {
            name: with_dp_error(figure.statistic, histogram, cell_sd, draws=draws, rng=np.random.default_rng(index))
            for index, (name, figure) in enumerate(self.statistics.items())
        }
        return {
            name: replace(e, estimate=self.statistics[name].shown(e.estimate))
            for name, e in estimates.items()
            if math.isfinite(e.estimate) and math.isfinite(e.dp_sd)
        }
