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

A survival model's histogram adds the time: one metric per (event 0/1, time bin of the
patient's observed time on ``time_bins`` equal bins of ``[0, horizon)``, the last bin
also holding later times, score bin), ``score_e1_t03_07``, from which the coordinator
computes Harrell's C-index on that grid.

This module is the one place that names the cells: the zoo writes them, the coordinator
reads them back with :func:`histogram` and :func:`survival_histogram`.
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
"""Score bins at most."""

MAX_CELLS = 240
"""Cells at most: with the model's other metrics, within a manifest's 256 metrics."""


def cell_names(bins: int) -> tuple[str, ...]:
    """The cells' metric names, negatives first, each outcome's bins in order of score."""
    return tuple(f"score_{outcome}_{index:02d}" for outcome in OUTCOMES for index in range(bins))


def survival_cell_names(time_bins: int, bins: int) -> tuple[str, ...]:
    """A survival histogram's cells: censored (e0) then events (e1), by time bin, by score bin."""
    return tuple(
        f"score_e{event}_t{time:02d}_{index:02d}"
        for event in (0, 1)
        for time in range(time_bins)
        for index in range(bins)
    )


def checked_bins(bins: int, *, name: str = "score_bins", most: int = MAX_BINS) -> int:
    """``bins`` if it is a whole number in [2, most]; ValueError naming it otherwise."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= most:
        raise ValueError(f"{name} must be a whole number from 2 to {most}, got {bins!r}")
    return bins


def checked_survival_grid(time_bins: int, bins: int) -> tuple[int, int]:
    """``(time_bins, bins)`` if each is sensible and their ``2·T·K`` cells at most MAX_CELLS."""
    checked_bins(bins)
    checked_bins(time_bins, name="time_bins")
    if 2 * time_bins * bins > MAX_CELLS:
        raise ValueError(
            f"2 outcomes times time_bins times score_bins must be at most {MAX_CELLS} cells, got {2 * time_bins * bins}"
        )
    return time_bins, bins


def _score_bin(g: GraphBuilder, score: str, bins: int) -> str:
    """``min(floor(score·bins), bins - 1)`` for a score in [0, 1] (1 falls in the last bin)."""
    return g.op("Min", g.op("Floor", g.op("Mul", score, g.constant(float(bins)))), g.constant(bins - 1.0))


def _indicator(g: GraphBuilder, index: str, value: int) -> str:
    return g.op("Cast", g.op("Equal", index, g.constant(float(value))), to=FLOAT)


def add_cells(g: GraphBuilder, probability: str, positive: str, bins: int) -> dict[str, tuple[float, float]]:
    """Outputs the cells of one example with ``probability`` in [0, 1] and ``positive``
    (1.0 or 0.0) to ``g``; returns their ranges, in :func:`cell_names` order.

    The bin is ``min(floor(p·bins), bins - 1)`` (p = 1 falls in the last bin); a NaN
    ``p`` falls in no bin, and the example counts in no cell.
    """
    bins = checked_bins(bins)
    index = _score_bin(g, probability, bins)
    negative = g.op("Sub", g.constant(1.0), positive)
    ranges: dict[str, tuple[float, float]] = {}
    names = iter(cell_names(bins))
    for outcome in (negative, positive):
        for bin_index in range(bins):
            name = next(names)
            g.add_output(g.op("Mul", _indicator(g, index, bin_index), outcome, out=name), name, FLOAT, [])
            ranges[name] = (0.0, 1.0)
    return ranges


def add_survival_cells(
    g: GraphBuilder, risk: str, time: str, event: str, *, horizon: float, time_bins: int, bins: int
) -> dict[str, tuple[float, float]]:
    """Outputs the cells of one example with ``risk`` in [0, 1] (higher: the event sooner),
    observed ``time`` and ``event`` (1.0 or 0.0) to ``g``; returns their ranges, in
    :func:`survival_cell_names` order. The time bin is ``min(floor(time / horizon · T), T - 1)``
    (a negative time in the first bin); a NaN falls in no bin."""
    time_bins, bins = checked_survival_grid(time_bins, bins)
    if not (horizon > 0 and horizon < float("inf")):
        raise ValueError(f"horizon must be a positive, finite time, got {horizon!r}")
    score = _score_bin(g, risk, bins)
    period = g.op(
        "Max",
        g.op("Min", g.op("Floor", g.op("Mul", time, g.constant(time_bins / horizon))), g.constant(time_bins - 1.0)),
        g.constant(0.0),
    )
    censored = g.op("Sub", g.constant(1.0), event)
    ranges: dict[str, tuple[float, float]] = {}
    names = iter(survival_cell_names(time_bins, bins))
    for outcome in (censored, event):
        for time_index in range(time_bins):
            in_period = g.op("Mul", _indicator(g, period, time_index), outcome)
            for bin_index in range(bins):
                name = next(names)
                g.add_output(g.op("Mul", _indicator(g, score, bin_index), in_period, out=name), name, FLOAT, [])
                ranges[name] = (0.0, 1.0)
    return ranges


def bins_of(metrics: Sequence[str]) -> int:
    """How many score bins a package's metrics hold (0: no score histogram)."""
    present = {name for name in metrics if name.startswith("score_")}
    for bins in range(2, MAX_BINS + 1):
        if present == set(cell_names(bins)):
            return bins
    return 0


def survival_grid_of(metrics: Sequence[str]) -> tuple[int, int] | None:
    """``(time_bins, bins)`` of a package's survival score histogram; None if it has none."""
    present = {name for name in metrics if name.startswith("score_e")}
    if not present:
        return None
    last = max(present)  # score_e1_tTT_KK: the grid's last cell
    try:
        time_bins, bins = int(last[10:12]) + 1, int(last[13:15]) + 1
    except ValueError:
        return None
    return (time_bins, bins) if present == set(survival_cell_names(time_bins, bins)) else None


def histogram(sums: Mapping[str, float], bins: int) -> npt.NDArray[np.float64]:
    """The ``[2, bins]`` histogram (negatives, positives) of the cells' (noisy) sums."""
    values = [sums[name] for name in cell_names(bins)]
    return np.asarray(values, np.float64).reshape(len(OUTCOMES), bins)


def survival_histogram(sums: Mapping[str, float], time_bins: int, bins: int) -> npt.NDArray[np.float64]:
    """The ``[2, time_bins, bins]`` histogram (censored, events) of the cells' (noisy) sums."""
    values = [sums[name] for name in survival_cell_names(time_bins, bins)]
    return np.asarray(values, np.float64).reshape(2, time_bins, bins)
