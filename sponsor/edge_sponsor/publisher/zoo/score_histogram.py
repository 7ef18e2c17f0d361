"""A histogram of a classifier's scores per outcome class, as eval metrics the agent bounds together.

AUC, the ROC curve and calibration are not sums of per-example terms, so ``dp_evaluate``
cannot release them directly. A histogram of scores is: the eval graph cuts the predicted
probability ``p`` of the positive class into ``bins`` equal-width bins of [0, 1] and
outputs one metric per (outcome, bin), ``score_neg_07`` or ``score_pos_07``, 1 in the
example's own cell and 0 elsewhere. The metrics are declared one group
(:data:`GROUP`): the agent scales each example's cells to L2 norm at most 1, whatever
the graph outputs, so the whole histogram costs the noise of one metric
(docs/package-format.md, "Metric groups"). From the noisy sums the coordinator computes
AUC and calibration with their DP error (:mod:`edge_sponsor.statistics.evaluation`).

This module is the one place that names the cells: the zoo writes them, the coordinator
reads them back with :func:`histogram`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from edge_sponsor.publisher.zoo.graph import FLOAT, GraphBuilder

GROUP = "score_histogram"
"""The metric group of the cells (``MetricDecl.group``)."""

OUTCOMES = ("neg", "pos")
"""Row 0 of the histogram: the negative class (label <= 0.5); row 1: the positive one."""

MAX_BINS = 30
"""At most 60 cells: with the model's other metrics, within a manifest's 64 metrics."""


def cell_names(bins: int) -> tuple[str, ...]:
    """The cells' metric names, negatives first, each outcome's bins in order of score."""
    return tuple(f"score_{outcome}_{index:02d}" for outcome in OUTCOMES for index in range(bins))


def checked_bins(bins: int) -> int:
    """``bins`` if it is a whole number in [2, MAX_BINS]; ValueError naming it otherwise."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise ValueError(f"score_bins must be a whole number from 2 to {MAX_BINS}, got {bins!r}")
    return bins


def add_cells(g: GraphBuilder, probability: str, positive: str, bins: int) -> dict[str, tuple[float, float]]:
    """Outputs the cells of one example with ``probability`` in [0, 1] and ``positive``
    (1.0 or 0.0) to ``g``; returns their ranges, in :func:`cell_names` order.

    The bin is ``min(floor(p·bins), bins - 1)`` (p = 1 falls in the last bin); a NaN
    ``p`` falls in no bin, and the example counts in no cell.
    """
    bins = checked_bins(bins)
    index = g.op("Min", g.op("Floor", g.op("Mul", probability, g.constant(float(bins)))), g.constant(bins - 1.0))
    negative = g.op("Sub", g.constant(1.0), positive)
    ranges: dict[str, tuple[float, float]] = {}
    names = iter(cell_names(bins))
    for outcome in (negative, positive):
        for bin_index in range(bins):
            name = next(names)
            inside = g.op("Cast", g.op("Equal", index, g.constant(float(bin_index))), to=FLOAT)
            g.add_output(g.op("Mul", inside, outcome, out=name), name, FLOAT, [])
            ranges[name] = (0.0, 1.0)
    return ranges


def bins_of(metrics: Sequence[str]) -> int:
    """How many score bins a package's metrics hold (0: no score histogram)."""
    present = {name for name in metrics if name.startswith("score_")}
    for bins in range(2, MAX_BINS + 1):
        if present == set(cell_names(bins)):
            return bins
    return 0


def histogram(sums: Mapping[str, float], bins: int) -> npt.NDArray[np.float64]:
    """The ``[2, bins]`` histogram (negatives, positives) of the cells' (noisy) sums."""
    values = [sums[name] for name in cell_names(bins)]
    return np.asarray(values, np.float64).reshape(len(OUTCOMES), bins)
