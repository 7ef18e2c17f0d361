"""The numbers of a release: exact blocks from the patients, then noise and suppression.

:func:`exact_release` computes every block of a :class:`~agent.packages.release_layout.ReleaseLayout`
from a :class:`~agent.statistics.patients.PatientTable` (one row per patient, so each
patient lands in one stratum and moves each block by at most its sensitivity);
:func:`noisy_release` adds the Gaussian noise the layout prescribes and withholds small
strata and cells. Only the noisy numbers ever leave the agent.

Block contents (cell order as in :mod:`agent.packages.release_layout`):

* ``count``: patients per stratum.
* ``<col>.n``: present and missing values; ``<col>.sum`` and ``<col>.sumsq``: the sum
  and the sum of squares of ``clamp(v, low, high) - centre`` over present values;
  ``<col>.histogram``: clamped values per bin (``edges[k] <= v < edges[k+1]``, the last
  bin also ``v == high``). Infinite values are present and clamped like any other.
* ``<col>.counts``: each declared category, "other" (present, not declared), "missing".
* ``survival.exits``: per interval of the grid (``[0, t_1]``, ``(t_{j-1}, t_j]``,
  ``(t_J, inf)``) the exits by event and by censoring, then "missing" (time or event
  missing, or a negative time).
* A weighted plan's (per arm; agent.statistics.weighting): ``weights.count`` (patients
  with a weight, without one), ``weights.sum`` and ``weights.sumsq`` (Σ w, Σ w²), and the weighted twins of ``<col>.n``,
  ``<col>.sum``, ``<col>.counts`` and ``survival.exits``
  (``<col>.weighted.n`` …, ``survival.weighted.exits``): the same cells, each patient
  counted with their weight (0 without one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable, SurvivalSpec
from agent.packages.release_layout import (
    COUNT,
    SURVIVAL_EXITS,
    WEIGHT_COUNT,
    WEIGHT_SUM,
    WEIGHT_SUMSQ,
    WEIGHTED_EXITS,
    ReleaseLayout,
    Statistic,
    Suppression,
    analysed,
    block_name,
    numeric_blocks,
)
from agent.packages.release_layout import layout as plan_layout
from agent.statistics.patients import PatientTable
from agent.statistics.weighting import checked_weights

Floats = npt.NDArray[np.float64]


def exact_release(
    plan: AnalysisPlan, layout: ReleaseLayout, patients: PatientTable, weights: Floats | None = None
) -> dict[str, Floats]:
    """Every block of ``layout`` before noise: block name -> ``[strata, len(block.cells)]`` float64.

    ``layout`` must be ``agent.packages.release_layout.layout(plan, kind)`` and ``patients`` the
    table of ``analysed(plan, kind)``; ValueError otherwise. Only the layout's blocks are
    computed (a survival task computes no descriptive block). On a weighted plan ``weights``
    holds each patient's weight (:func:`agent.statistics.weighting.plan_weights`; NaN where
    none), which the weighted blocks sum; ValueError when they are missing there or given to an
    unweighted plan.
    """
    if layout != plan_layout(plan, layout.kind):
        raise ValueError("the release layout is not the plan's")
    if patients.strata != layout.strata:
        raise ValueError("the patient table was not built for this plan")
    weights = checked_weights(plan, weights, patients.size)
    wanted = {block.name for block in layout.blocks}
    strata, stratum = layout.strata, patients.stratum
    # A patient without a weight weighs 0 in the weighted blocks.
    weight = np.zeros(patients.size) if weights is None else np.nan_to_num(weights, nan=0.0)
    computed: dict[str, Floats] = {}
    if COUNT in wanted:
        computed[COUNT] = _counts(stratum, np.zeros(patients.size, dtype=np.int64), strata, 1)
    if weights is not None and WEIGHT_COUNT in wanted:
        computed[WEIGHT_COUNT] = _counts(stratum, np.isnan(weights).astype(np.int64), strata, 2)
        computed[WEIGHT_SUM] = _sums(stratum, weight, strata)
    if weights is not None and WEIGHT_SUMSQ in wanted:
        computed[WEIGHT_SUMSQ] = _sums(stratum, weight * weight, strata)
    for variable in analysed(plan, layout.kind).variables:
        if isinstance(variable, CategoricalVariable):
            cells = len(variable.categories) + 2
            codes = patients.codes[variable.column]
            for statistic, by in ((Statistic.COUNTS, None), (Statistic.WEIGHTED_COUNTS, weight)):
                name = block_name(statistic, variable.column)
                if name in wanted:
                    computed[name] = _counts(stratum, codes, strata, cells, by)
        elif not wanted.isdisjoint(block.name for block in numeric_blocks(variable)):
            computed.update(_numeric(variable, patients, weight if weights is not None else None))
    if plan.survival is not None and SURVIVAL_EXITS in wanted:
        computed[SURVIVAL_EXITS] = _exits(plan.survival, patients)
        if WEIGHTED_EXITS in wanted:
            computed[WEIGHTED_EXITS] = _exits(plan.survival, patients, weight)
    result: dict[str, Floats] = {}
    for block in layout.blocks:
        values = computed[block.name]
        # A mismatch here is a bug in this module, never a property of the data.
        if values.shape != (strata, len(block.cells)):
            raise ValueError(f"block {block.name!r} computed with shape {values.shape}")
        result[block.name] = values
    return result


def _counts(
    stratum: npt.NDArray[np.int64],
    cell: npt.NDArray[np.int64],
    strata: int,
    cells: int,
    weights: Floats | None = None,
) -> Floats:
    """Patients per (stratum, cell), or the sum of their ``weights``: ``cell`` in ``0..cells-1``
    for each patient."""
    flat = np.bincount(stratum * cells + cell, weights=weights, minlength=strata * cells)
    return flat.reshape(strata, cells).astype(np.float64)


def _sums(stratum: npt.NDArray[np.int64], weights: Floats, strata: int) -> Floats:
    return np.bincount(stratum, weights=weights, minlength=strata).reshape(strata, 1).astype(np.float64)


def _numeric(variable: NumericVariable, patients: PatientTable, weight: Floats | None) -> dict[str, Floats]:
    """The blocks of :func:`agent.packages.release_layout.numeric_blocks`, in its order, and with
    ``weight`` (each patient's, 0 for none) those of ``weighted_numeric_blocks``."""
    strata = patients.strata
    x = patients.numbers[variable.column]
    present = ~np.isnan(x)
    stratum = patients.stratum[present]
    clamped = np.clip(x[present], variable.low, variable.high)
    h = variable.half_width
    # Clamped again around the centre: the subtraction rounds, and one ulp beyond h would
    # exceed the sensitivities h and h² the release declares.
    centred = np.clip(clamped - variable.centre, -h, h)
    column = variable.column
    missing = np.where(present, 0, 1).astype(np.int64)
    blocks = {
        block_name(Statistic.PRESENCE, column): _counts(patients.stratum, missing, strata, 2),
        block_name(Statistic.SUM, column): _sums(stratum, centred, strata),
        block_name(Statistic.SUMSQ, column): _sums(stratum, centred * centred, strata),
    }
    if variable.bins:
        edges = np.asarray(variable.bins, dtype=np.float64)
        bins = len(edges) - 1
        # side="right" puts v == edges[k] in bin k; v == high (index ``bins``) joins the last bin.
        index = np.minimum(np.searchsorted(edges, clamped, side="right") - 1, bins - 1)
        blocks[block_name(Statistic.HISTOGRAM, column)] = _counts(stratum, index.astype(np.int64), strata, bins)
    if weight is not None:
        w = weight[present]
        blocks[block_name(Statistic.WEIGHTED_PRESENCE, column)] = _counts(patients.stratum, missing, strata, 2, weight)
        blocks[block_name(Statistic.WEIGHTED_SUM, column)] = _sums(stratum, w * centred, strata)
    return blocks


def _exits(survival: SurvivalSpec, patients: PatientTable, weights: Floats | None = None) -> Floats:
    """Each patient's one exit cell: ``2 i`` event or ``2 i + 1`` censored in interval ``i``, else
    missing; counted, or with ``weights`` their weights summed."""
    if patients.time is None or patients.event is None:
        raise ValueError("the patient table was built without the survival columns")
    grid = np.asarray(survival.grid, dtype=np.float64)
    intervals = len(grid) + 1
    time, event = patients.time, patients.event
    with np.errstate(invalid="ignore"):
        usable = (time >= 0) & ~np.isnan(event)  # NaN >= 0 is false: a missing time is not usable
    # side="left": t == t_j falls in the interval (t_{j-1}, t_j] (index j-1 in 0-based terms).
    interval = np.searchsorted(grid, time[usable], side="left")
    cell = np.full(patients.size, 2 * intervals, dtype=np.int64)
    cell[usable] = 2 * interval + (event[usable] == 0)
    return _counts(patients.stratum, cell, patients.strata, 2 * intervals + 1, weights)


# -- noise and suppression ------------------------------------------------------------------


def noisy_release(
    exact: Mapping[str, Floats],
    layout: ReleaseLayout,
    *,
    noise_multiplier: float,
    min_cell_size: int,
    rng: np.random.Generator,
    min_cohort_size: int = 0,
) -> dict[str, float]:
    """The released numbers: scalar name (:meth:`Block.scalar_name`) -> value, NaN where withheld.

    Adds independent Gaussian noise of standard deviation ``layout.noise_std(block,
    noise_multiplier)`` to every number of ``exact`` (as :func:`exact_release` returns
    it), then withholds with ``min_cell_size`` ``m`` (0: nothing withheld):

    * a stratum whose noisy size is below ``m`` (a describe task: its noisy ``count``; a
      survival task: the sum of its noisy ``survival.exits``; a glm task: its noisy
      included count, :attr:`ReleaseLayout.size_cells`): every number of that stratum, in
      every block;
    * in a block of :attr:`Suppression.CELL`: each noisy number below ``m``;
    * a numeric variable's ``.sum``, ``.sumsq`` and ``.histogram`` of a stratum whose
      ``.n`` "present" count is withheld;

    and everything when the noisy size of the whole cohort (all strata) is below
    ``min_cohort_size``. The cohort minimum is applied here, to a noisy number, and not by
    refusing the task on the exact cohort: a plan's filters are the author's to choose, and
    a free exact answer to "do at least m patients meet this filter?" would be an oracle
    that binary search turns into any order statistic of any column.

    The keys are exactly ``set(layout.scalar_names())``. ``noise_multiplier`` 0 releases
    exact numbers: what it costs is the accountant's to say, not this function's. Raises
    ValueError for a negative or non-finite multiplier, a negative minimum, or ``exact``
    without the layout's blocks and shapes or with a value that is not finite.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError("noise_multiplier must be finite and >= 0")
    if isinstance(min_cell_size, bool) or min_cell_size < 0:
        raise ValueError("min_cell_size must be an integer >= 0")
    if isinstance(min_cohort_size, bool) or min_cohort_size < 0:
        raise ValueError("min_cohort_size must be an integer >= 0")
    names = {block.name for block in layout.blocks}
    if set(exact) != names:
        raise ValueError("the exact values are not the layout's blocks")
    noisy: dict[str, Floats] = {}
    for block in layout.blocks:
        values = np.asarray(exact[block.name], dtype=np.float64)
        if values.shape != (layout.strata, len(block.cells)):
            raise ValueError(f"block {block.name!r} has shape {values.shape}")
        # exact_release never makes one; a NaN would pass for a withheld number, an infinity
        # would survive any noise.
        if not np.isfinite(values).all():
            raise ValueError(f"block {block.name!r} holds a value that is not finite")
        std = layout.noise_std(block, noise_multiplier)
        noisy[block.name] = values + rng.normal(0.0, std, size=values.shape)
    # The whole cohort's noisy size, taken before any stratum is withheld.
    cohort = float(_sizes(noisy, layout).sum())
    if min_cell_size > 0:
        _suppress(noisy, layout, min_cell_size)
    if min_cohort_size > 0 and cohort < min_cohort_size:
        for values in noisy.values():
            values[...] = np.nan
    released: dict[str, float] = {}
    for block in layout.blocks:
        cells = len(block.cells)
        flat = noisy[block.name].ravel().tolist()
        # ravel() is stratum-major, cells within: the order of ReleaseLayout.scalar_names().
        released.update((block.scalar_name(i // cells, i % cells), value) for i, value in enumerate(flat))
    return released


def _suppress(noisy: dict[str, Floats], layout: ReleaseLayout, minimum: int) -> None:
    """Withholds (NaN) small strata and cells, in place.

    Every decision reads noisy numbers and the public minimum only: it is post-processing
    of the Gaussian mechanism and costs no privacy. Deciding on the exact counts would
    not be: a withheld cell would tell that a count was below the minimum, a fact about
    the data no noise covers.
    """
    small = _sizes(noisy, layout) < minimum
    for values in noisy.values():
        values[small, :] = np.nan
    for block in layout.blocks:
        if block.suppression is Suppression.CELL:
            values = noisy[block.name]
            values[values < minimum] = np.nan  # NaN < minimum is false: withheld stays withheld
    for block in layout.blocks:
        # A numeric variable's present values (its presence block's first cell) too few to
        # show: its sum, sum of squares and histogram would describe those few patients
        # (the histogram's cells even add up to the withheld count); a weighted count of a
        # withheld cell would tell about as much as the count.
        withheld = np.isnan(noisy[block.name])
        for dependent in layout.withheld_with(block):
            if dependent.cells == block.cells:
                noisy[dependent.name][withheld] = np.nan
            else:
                noisy[dependent.name][withheld[:, 0], :] = np.nan


def _sizes(noisy: Mapping[str, Floats], layout: ReleaseLayout) -> Floats:
    """Each stratum's noisy size: the sum of its size cells (ReleaseLayout.size_cells)."""
    values = noisy[layout.size_block.name]
    if layout.size_cells is not None:
        values = values[:, list(layout.size_cells)]
    sizes: Floats = values.sum(axis=1)
    return sizes
